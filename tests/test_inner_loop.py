"""The inner-loop policy (#24) holds by itself: tests/conftest.py marks heavy tests and fails unmarked ones.

An inner pytest run with this suite's conftest, selected as `make test-fast` selects (-m "not slow"): a test that
starts a process or trains without a mark fails (also when the code under test swallows the error), the same
test marked slow is deselected, and tests the collection reads as heavy (a heavy fixture, a process started in
their own module) are marked slow without a hand mark.
"""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")

INNER = """
import subprocess
import sys
from subprocess import run as start  # a name the collection does not read as heavy: left to the guard

import pytest


def test_unmarked_process():
    start([sys.executable, "-c", "pass"], check=True)


def test_unmarked_process_whose_error_is_swallowed():
    try:
        start([sys.executable, "-c", "pass"], check=True)
    except Exception:
        pass


def test_unmarked_fit(tmp_path):
    import lightning as L
    import torch

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return self.w(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(Tiny(), torch.utils.data.DataLoader(torch.ones(2, 2)))


def test_a_quick_tool_is_allowed():
    start(["uname"], check=True, capture_output=True)


@pytest.mark.slow
def test_marked_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def _helper():
    return subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_read_as_heavy_through_a_helper():
    _helper()


def test_a_refusal_is_not_heavy():
    with pytest.raises(TypeError):
        subprocess.run()


@pytest.fixture
def trained():
    return "a heavy fixture by name"


def test_a_heavy_fixture(trained):
    pass
"""


@pytest.mark.slow  # inner pytest processes
def test_the_guard_fails_unmarked_heavy_tests_and_the_collection_marks_the_rest(pytester):
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makeini("[pytest]\nmarkers =\n    slow: s\n    integration: i\n    gpu: g\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-m", "not slow", "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=2, failed=3, deselected=3)  # the quick tool and the refusal pass
    failed = {line.split("::")[-1].split(" ")[0] for line in result.outlines if line.startswith("FAILED")}
    assert failed == {
        "test_unmarked_process",
        "test_unmarked_process_whose_error_is_swallowed",
        "test_unmarked_fit",
    }
    result.stdout.fnmatch_lines(["*is not marked slow but starts a process*", "*trains a model (Trainer.fit)*"])
    everything = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "slow", "--collect-only", "-q")
    everything.stdout.fnmatch_lines(
        ["*test_marked_process", "*test_read_as_heavy_through_a_helper", "*test_a_heavy_fixture"], consecutive=False
    )
