"""A missing synthetic world is answered with the command that makes it; make-world may be run again."""

import pytest

from gemkr_lab.cli import main
from gemkr_lab.data.datasets import Dataset
from gemkr_lab.data.queries import DataError
from gemkr_lab.data.world import make_world


def test_missing_world_names_the_command_that_makes_it(tmp_path):
    with pytest.raises(DataError) as err:
        Dataset("synthetic", tmp_path / "world")
    assert "missing corpus.csv" in str(err.value)
    assert f"gemkr-lab make-world --out {tmp_path / 'world'}" in str(err.value)


def test_prepare_without_a_world_says_make_world(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # no runs/world here: the tiny-cpu presets read it
    code = main(["prepare", "--experiment", "tiny-cpu/full"])
    err = capfd.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0, err
    assert "runs/world: missing corpus.csv" in err and "gemkr-lab make-world --out runs/world" in err
    assert not (tmp_path / "runs" / "world-prepared").exists()


def test_make_world_again_keeps_the_same_world_and_refuses_another(tmp_path):
    out = tmp_path / "world"
    first = make_world(out, seed=0, size="small")
    stamp = (out / "corpus.csv").stat().st_mtime_ns
    assert make_world(out, seed=0, size="small") == first  # the same world: kept, nothing rewritten
    assert (out / "corpus.csv").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError):
        make_world(out, seed=1, size="small")  # another world: refused without --overwrite
