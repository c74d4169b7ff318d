"""gemkr_lab.io: atomic files and directories, umask-respecting modes, stale staging of dead writers cleaned."""

import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gemkr_lab import io as gio


@pytest.fixture
def umask():
    """Set the process umask for one test; restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _debris(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o027, 0o640)])
@pytest.mark.parametrize("writer", ["text", "bytes", "json", "jsonl"])
def test_file_mode_follows_the_umask(tmp_path, umask, mask, expected, writer):
    umask(mask)
    path = tmp_path / "out"
    {
        "text": lambda: gio.write_text(path, "x\n"),
        "bytes": lambda: gio.write_bytes(path, b"x"),
        "json": lambda: gio.write_json(path, {"a": 1}),
        "jsonl": lambda: gio.write_jsonl(path, [{"a": 1}]),
    }[writer]()
    assert _mode(path) == expected
    assert gio.default_file_mode() == expected
    assert gio.current_umask() == mask


def test_replacing_a_0600_file_gives_the_umask_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "report.md"
    path.write_text("old")
    path.chmod(0o600)  # as the old helpers left every file
    gio.write_text(path, "new")
    assert path.read_text() == "new"
    assert _mode(path) == 0o644


def test_directory_mode_follows_the_umask(tmp_path, umask):
    umask(0o027)
    with gio.atomic_directory(tmp_path / "idx", overwrite=False) as staging:
        gio.write_text(staging / "meta.json", "{}")
    assert _mode(tmp_path / "idx") == 0o750
    assert _mode(tmp_path / "idx" / "meta.json") == 0o640


def test_contents_and_formats(tmp_path):
    gio.write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.json").read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
    gio.write_jsonl(tmp_path / "a.jsonl", ({"i": i} for i in range(3)))
    assert (tmp_path / "a.jsonl").read_text() == '{"i": 0}\n{"i": 1}\n{"i": 2}\n'
    gio.write_text(tmp_path / "u.txt", "Ünïcode")
    assert (tmp_path / "u.txt").read_bytes() == "Ünïcode".encode()


def test_failure_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "runs.jsonl"
    gio.write_text(path, "old contents\n")
    before = _md5(path)

    def rows():
        yield {"ok": 1}
        raise RuntimeError("generator failed half way")

    with pytest.raises(RuntimeError, match="half way"):
        gio.write_jsonl(path, rows())
    assert _md5(path) == before
    assert _debris(tmp_path) == []


def test_unserialisable_json_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.json"
    gio.write_json(path, {"v": 1})
    before = _md5(path)
    with pytest.raises(TypeError):
        gio.write_json(path, {"v": object()})
    assert _md5(path) == before
    assert _debris(tmp_path) == []


def test_disk_full_names_the_target_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    gio.write_json(path, {"v": 1})
    before = _md5(path)
    real_fsync = os.fsync

    def full(fd):
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(gio.os, "fsync", full)
    with pytest.raises(OSError) as info:
        gio.write_json(path, {"v": 2})
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(path)
    assert _md5(path) == before
    assert _debris(tmp_path) == []


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    gio.write_text(path, "old")

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), src, dst)

    monkeypatch.setattr(gio.os, "replace", refuse)
    with pytest.raises(PermissionError) as info:
        gio.write_text(path, "new")
    assert info.value.filename == str(path)
    assert path.read_text() == "old"
    assert _debris(tmp_path) == []


def test_a_directory_where_a_file_belongs(tmp_path):
    (tmp_path / "out.json").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        gio.write_json(tmp_path / "out.json", {})
    assert info.value.filename == str(tmp_path / "out.json")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_fails_with_the_target_named(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError) as info:
            gio.write_text(ro / "x.txt", "x")
        assert info.value.filename == str(ro / "x.txt")
    finally:
        ro.chmod(0o755)


def test_atomic_directory_replaces_as_a_unit(tmp_path):
    final = tmp_path / "idx"
    with gio.atomic_directory(final, overwrite=False) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(FileExistsError, match="--overwrite"), gio.atomic_directory(final, overwrite=False):
        pass
    with pytest.raises(RuntimeError), gio.atomic_directory(final, overwrite=True) as staging:
        (staging / "a").write_text("2")
        raise RuntimeError("build failed")
    assert (final / "a").read_text() == "1"
    assert _debris(tmp_path) == []
    with gio.atomic_directory(final, overwrite=True) as staging:
        (staging / "b").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert _debris(tmp_path) == []


def test_atomic_directory_carries_over_kept_entries(tmp_path):
    final = tmp_path / "report"
    with gio.atomic_directory(final, overwrite=False) as staging:
        (staging / "old-plot.png").write_text("old")
    (final / "explore").mkdir()  # written into the folder by another command
    (final / "explore" / "index.html").write_text("explorer")
    with pytest.raises(RuntimeError), gio.atomic_directory(final, overwrite=True, keep=["explore"]) as staging:
        (staging / "table.md").write_text("new")
        raise RuntimeError("report failed")
    assert sorted(p.name for p in final.iterdir()) == ["explore", "old-plot.png"]
    with gio.atomic_directory(final, overwrite=True, keep=["explore", "absent"]) as staging:
        (staging / "table.md").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["explore", "table.md"]
    assert (final / "explore" / "index.html").read_text() == "explorer"
    with gio.atomic_directory(final, overwrite=True, keep=["explore"]) as staging:  # the block's own wins
        (staging / "explore").mkdir()
    assert list((final / "explore").iterdir()) == []
    assert _debris(tmp_path) == []


def test_a_failed_swap_puts_kept_entries_back(tmp_path, monkeypatch):
    final = tmp_path / "report"
    final.mkdir()
    (final / "explore").mkdir()
    (final / "table.md").write_text("old")
    real = os.replace

    def replace(src, dst):
        if Path(dst) == final and ".partial-" in Path(src).name:  # the swap itself fails
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with (
        pytest.raises(OSError, match="Input/output"),
        gio.atomic_directory(final, overwrite=True, keep=["explore"]) as s,
    ):
        (s / "table.md").write_text("new")
    monkeypatch.undo()
    assert sorted(p.name for p in final.iterdir()) == ["explore", "table.md"]
    assert (final / "table.md").read_text() == "old"
    assert _debris(tmp_path) == []


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_staging_of_a_dead_pid_is_cleaned_on_the_next_run(tmp_path):
    host = gio._host_tag()
    dead = _dead_pid()
    stale = tmp_path / f".idx.partial-{host}-{dead}-deadbeef"
    stale.mkdir()
    (stale / "C.npy").write_bytes(b"half")
    stale_tmp = tmp_path / f".idx.tmp-{host}-{dead}-abc123"
    stale_tmp.write_text("x")
    live = tmp_path / f".idx.partial-{host}-{os.getpid()}-cafef00d"  # ours: still being written
    live.mkdir()
    other_host = tmp_path / f".idx.partial-000000-{dead}-01234567"  # a shared filesystem: not ours to judge
    other_host.mkdir()
    other_name = tmp_path / f".other.partial-{host}-{dead}-01234567"
    other_name.mkdir()
    with gio.atomic_directory(tmp_path / "idx", overwrite=False) as staging:
        (staging / "meta.json").write_text("{}")
    assert not stale.exists() and not stale_tmp.exists()
    assert live.exists() and other_host.exists() and other_name.exists()
    assert gio.clean_stale(tmp_path) == [other_name]


def test_sigkilled_build_leaves_staging_that_the_next_run_removes(tmp_path):
    code = (
        "import os, signal, sys\n"
        "from gemkr_lab.io import atomic_directory\n"
        "with atomic_directory(sys.argv[1], overwrite=False) as s:\n"
        "    (s / 'part').write_text('x')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "idx")], check=False)
    assert proc.returncode != 0
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == [".idx.partial"]
    with gio.atomic_directory(tmp_path / "idx", overwrite=False) as staging:
        (staging / "done").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_pid_alive():
    assert gio.pid_alive(os.getpid())
    assert not gio.pid_alive(_dead_pid())
    assert not gio.pid_alive(0)


def test_io_is_a_leaf():
    source = Path(gio.__file__).read_text(encoding="utf-8")
    assert "gemkr_lab" not in "".join(line for line in source.splitlines() if line.startswith(("import", "from")))
