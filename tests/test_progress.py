"""Progress off a terminal (#25): prepare, sweep and index build print lines where a bar would not show."""

import io

from gemkr_lab import progress
from gemkr_lab.progress import LineProgress, duration, tqdm


def test_off_a_terminal_a_bar_becomes_lines(monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    bar = tqdm(range(5), desc="regions", unit="images")
    assert isinstance(bar, LineProgress)
    assert list(bar) == [0, 1, 2, 3, 4]
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("regions: 5/5 images (100%) done in ") and lines[-1].endswith(" images/s")


def test_lines_every_interval_with_eta(monkeypatch, capsys):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")  # a line at every update
    with LineProgress(desc="sweep demo", total=4, unit="runs") as bar:
        bar.update(1)
        bar.set_postfix_str("1 running")
        bar.update(1)
        bar.write("a message")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sweep demo: 1/4 runs (25%), ") and ", ETA " in lines[0]
    assert lines[1].startswith("sweep demo: 2/4 runs (50%), ") and lines[1].endswith(", 1 running")
    assert lines[2] == "a message"
    assert lines[3].startswith("sweep demo: 2/4 runs (50%) done in ")
    assert len(lines) == 4


def test_unknown_total_and_quiet(monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with tqdm(desc="stream documents", unit="doc") as bar:
        bar.update(192)
    assert capsys.readouterr().out.startswith("stream documents: 192 doc done in ")
    with tqdm(range(3), desc="x", disable=True) as bar:  # progress=False: nothing at all
        list(bar)
    assert capsys.readouterr().out == ""


def test_durations():
    assert duration(8.24) == "8.2 s"
    assert duration(245) == "4 min 05 s"
    assert duration(7380) == "2 h 03 min"


def test_prepare_and_index_build_print_lines_off_a_terminal(tmp_path, monkeypatch, capsys):
    from gemkr_lab.kb import build_index

    monkeypatch.setattr("sys.stderr", io.StringIO())
    build_index([[5, 6, 7], [6, 7, 8, 9]], tmp_path / "kb", eos_id=2, backend="sa", shards=1)
    out = capsys.readouterr().out
    assert "stream documents: 2 doc done in " in out
