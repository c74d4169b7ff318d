"""#24: one function builds a cell's model and data module; training and re-evaluation both call it."""

import ast
from pathlib import Path

import gemkr_lab

PACKAGE = Path(gemkr_lab.__file__).parent
BUILT_ONLY_IN = PACKAGE / "model" / "build.py"


def _calls(path: Path, names: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.func.id}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names
    ]


def test_the_model_and_its_data_module_are_built_in_one_place():
    elsewhere = [
        call
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != BUILT_ONLY_IN
        for call in _calls(path, {"GeMKRModule", "GeMKRDataModule"})
    ]
    assert not elsewhere, f"build them with model.build.build_model_and_data: {elsewhere}"
    assert len(_calls(BUILT_ONLY_IN, {"GeMKRModule", "GeMKRDataModule"})) == 2


def test_training_and_re_evaluation_both_call_the_builder():
    for path in (PACKAGE / "model" / "train.py", PACKAGE / "run" / "evaluate.py"):
        assert _calls(path, {"build_model_and_data"}), path
