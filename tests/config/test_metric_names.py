"""#24: metric names live in one place (config.metric_names), and they are exactly what the metrics compute."""

import ast
from pathlib import Path

import gemkr_lab
from gemkr_lab.config.metric_names import CUTOFFS, REPORTED, SCORED
from gemkr_lab.metrics.measures import metric_names

PACKAGE = Path(gemkr_lab.__file__).parent


def test_the_names_are_what_every_run_scores():
    assert set(metric_names(list(CUTOFFS))) == set(SCORED)
    assert set(REPORTED) <= set(SCORED)


def test_no_module_lists_metric_names_of_its_own():
    """A tuple literal of two or more metric names anywhere but config/metric_names.py is a second list to drift."""
    lists = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "metric_names.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                names = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in SCORED]
                if len(names) >= 3:
                    lists.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {names}")
    assert not lists, f"import them from gemkr_lab.config.metric_names: {lists}"
