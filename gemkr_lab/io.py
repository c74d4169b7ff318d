"""Files and directories written as units, with modes that respect the umask (a leaf: imports nothing of ours).

- `atomic_write` / `write_text` / `write_bytes` / `write_json` / `write_jsonl`: the data goes to a temporary
  file in the target's directory, is flushed and fsynced, given the mode a plain `open()` would give it
  (`0o666 & ~umask`: `tempfile.mkstemp` creates 0600, and that mode would survive the rename), and renamed
  over the target. Readers see the old file or the new one, never half of one; a failure leaves the old
  file as it was and no temporary file behind.
- `atomic_directory`: a staging directory `.<name>.partial-<host>-<pid>-<random>` beside the target,
  renamed into place only when the block finishes. A process killed meanwhile (SIGTERM, SIGKILL, power)
  leaves its staging directory behind; the next `atomic_directory` for the same target removes the ones
  whose process (on this host) is gone (`clean_stale`).
- `lock` / `lock_holder`: an exclusive OS file lock (`flock`) held for a block, released by the kernel when
  the holding process dies (also by SIGKILL), so a lock is never left behind by a dead process.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "LockHeld",
    "atomic_directory",
    "atomic_write",
    "clean_stale",
    "current_umask",
    "default_file_mode",
    "describe_os_error",
    "lock",
    "lock_holder",
    "pid_alive",
    "write_bytes",
    "write_json",
    "write_jsonl",
    "write_text",
]

_UMASK_LOCK = threading.Lock()
# Staging and temporary names carry the writer's host and pid, so that leftovers of dead writers can be told
# apart from those of live ones: .<name>.<kind>-<host>-<pid>-<random>
_KINDS = ("partial", "old", "tmp")


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (not atomic with respect to other threads creating files)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 without the umask's bits (umask 022 -> 0644)."""
    return 0o666 & ~current_umask()


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _tag() -> str:
    return f"{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _name_the_target(exc: OSError, path: Path) -> None:
    """Name the path asked for in a write's error (ENOSPC, EACCES, EROFS …), not our temporary file or dir."""
    ours = tuple(f".{path.name}.{kind}-" for kind in _KINDS)
    if exc.filename is None or Path(str(exc.filename)).name.startswith(ours):
        exc.filename = str(path)
        exc.filename2 = None


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Yield a file object whose contents replace `path` only when the block finishes without error.

    Args:
        path: the file to (re)place; its directory must exist.
        mode: "w" (text) or "wb" (bytes).
        encoding: of text mode.

    Raises:
        OSError: naming `path` (not the temporary file), e.g. ENOSPC, EACCES, EROFS, EISDIR; `path` is
            then unchanged and no temporary file remains.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{_host_tag()}-{os.getpid()}-")
        with os.fdopen(fd, mode, **({"encoding": encoding} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            with contextlib.suppress(OSError):  # e.g. filesystems without modes
                os.fchmod(fh.fileno(), default_file_mode())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        _name_the_target(exc, path)
        raise
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically (UTF-8): readers see the old file or the new one, never half of one."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def write_json(path: str | Path, payload: Any, *, indent: int | None = 2, sort_keys: bool = True) -> None:
    """Write JSON atomically (2-space indent and sorted keys by default, a final newline)."""
    write_text(path, json.dumps(payload, indent=indent, sort_keys=sort_keys) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Write one JSON value per line atomically; `rows` is streamed (never held whole)."""
    with atomic_write(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


class DamagedFileError(ValueError):
    """A file that must hold JSON does not (cut short, edited, another format): named with its line and the fix."""


def read_json(path: str | Path, fix: str = "write it again") -> Any:
    """The JSON value of a file; a damaged one is a `DamagedFileError` naming the file, line and `fix`.

    json's own message ("Unterminated string starting at: line 1 column 20") says nothing of which file.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DamagedFileError(f"{path}: not UTF-8 text (byte {exc.start}), so not JSON; {fix}") from None
    except json.JSONDecodeError as exc:
        raise DamagedFileError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); {fix}") from None


def read_jsonl(path: str | Path, fix: str = "write it again") -> list[Any]:
    """The values of a JSON-lines file (blank lines skipped); a damaged line is named with `fix`."""
    path = Path(path)
    rows = []
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                rows.append(json.loads(raw.decode("utf-8")))
            except UnicodeDecodeError as exc:
                raise DamagedFileError(f"{path}:{line_no}: not UTF-8 text (byte {exc.start}); {fix}") from None
            except json.JSONDecodeError as exc:
                raise DamagedFileError(
                    f"{path}:{line_no}: not valid JSON ({exc.msg}, column {exc.colno}); {fix}"
                ) from None
    return rows


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (one owned by another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # cannot tell: keep its files
    return True


def clean_stale(directory: str | Path, name: str | None = None) -> list[Path]:
    """Remove leftovers of writers that died: staging dirs, old copies and temporary files of `name`.

    Only entries `.<name>.{partial,old,tmp}-<host>-<pid>-…` written on this host by a process that no longer
    exists are removed; those of live processes and of other hosts (shared filesystems) are kept.
    With `name=None`, every target in `directory` is considered. Returns the removed paths.
    """
    directory = Path(directory)
    target = re.escape(name) if name is not None else r".+"
    pattern = re.compile(rf"^\.{target}\.(?:{'|'.join(_KINDS)})-(?P<host>[0-9a-f]{{6}})-(?P<pid>\d+)-")
    host = _host_tag()
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or m["host"] != host or pid_alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        if not entry.exists():
            removed.append(entry)
    return removed


class LockHeld(OSError):
    """Another process holds the lock; the message names it (pid, host, since when)."""


LOCK_GRACE_SECONDS = 1.0
"""A lock found held is tried again for this long before giving up: `lock_holder` probes take it for an instant."""


def _open_lock(path: Path, create: bool) -> int:
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, default_file_mode())
    except PermissionError:  # a lock file we may only read: enough to probe it
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _describe_holder(info: dict) -> str:
    if not info:
        return "another process"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('since', '?')}"


_HELD_UNTIL_EXIT: list[int] = []
"""Descriptors of locks `lock(until_exit=True)` keeps: closed (and so released) only by the process's end."""


@contextmanager
def lock(
    path: str | Path, *, wait: float | None = 0.0, what: str | None = None, until_exit: bool = False
) -> Iterator[Path]:
    """Hold an exclusive OS lock on the file `path` (created) for the block.

    The lock is `flock` on an open file: the kernel releases it when the block ends or the process dies in any
    way (SIGKILL included), so a dead holder never blocks anyone. While held, the file names the holder (host,
    pid, since) for messages. Processes forked by the holder share its lock; threads and processes that open
    the file themselves contend for it.

    Args:
        path: the lock file (its directory must exist); it is kept afterwards (removing it would race).
        wait: seconds to wait for a holder to let go (None: as long as it takes). With 0 a held lock is tried
            again only for `LOCK_GRACE_SECONDS` (another process's `lock_holder` may be probing it).
        what: what the lock protects, for the message (default: the path).
        until_exit: keep holding it after the block, until this process ends: then "the lock is free" means
            "its holder is gone", not merely "past the block" (a trainer a sweep launched spends a while
            tearing down after its run; a launch in that window would be a second trainer process of the run).

    Raises:
        LockHeld: still held by another holder after waiting; the message names the holder.
    """
    import fcntl

    path = Path(path)
    fd, held = _open_lock(path, create=True), False
    try:
        deadline = None if wait is None else time.monotonic() + max(wait, LOCK_GRACE_SECONDS)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockHeld(
                        f"{what or path} is locked by {_describe_holder(_holder(path))} ({path}); "
                        "the lock goes when that process ends"
                    ) from None
                time.sleep(0.05)
        held = True
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield path
        finally:
            if not until_exit:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
    finally:
        if held and until_exit:  # also when the block failed: the process is still tearing down
            _HELD_UNTIL_EXIT.append(fd)  # the kernel releases it with the process
        else:
            os.close(fd)  # releases the lock


def lock_holder(path: str | Path) -> dict | None:
    """Who holds the lock on `path` ({host, pid, since}; {} when unknown), or None when nobody does.

    A probe: it takes the lock shared for an instant (never waiting), which a holder's `lock` rides out.
    """
    import fcntl

    path = Path(path)
    try:
        fd = _open_lock(path, create=False)
    except OSError:  # no lock file (or no directory): nobody ever locked it
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                continue
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)  # a full disk shows here for files written without a sync of their own
            except OSError as exc:
                exc.filename = exc.filename or p  # named; `atomic_directory` turns the staging path into the target's
                raise
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


@contextmanager
def atomic_directory(final: str | Path, *, overwrite: bool, keep: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a fresh staging directory that replaces `final` only when the block finishes without error.

    Refuses an existing `final` unless `overwrite`; on any error the staging directory is removed and an
    existing `final` is left untouched. Staging directories of dead processes from earlier runs are
    removed first (also when the call is refused). Directories get the umask's mode, as `mkdir` gives them.

    `keep`: names of entries of the old `final` carried over into the new one (renamed, not copied) unless the
    block wrote an entry of that name itself, e.g. a report's `explore/` folder that another command writes;
    every other entry of the old `final` goes.
    """
    final = Path(final)
    with contextlib.suppress(OSError):
        clean_stale(final.parent, final.name)  # nothing is created: only a dead writer's leftovers go
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of this directory", str(final))
    staging = final.parent / f".{final.name}.partial-{_tag()}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(final.parent, final.name)
        staging.mkdir()
    except OSError as exc:
        _name_the_target(exc, final)
        raise
    try:
        yield staging
        _fsync_tree(staging)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and str(exc.filename or "").startswith(str(staging)):
            exc.filename = str(final) + str(exc.filename)[len(str(staging)) :]  # kb/shard-000/C.npy, not .kb.partial…
        raise
    try:
        if final.exists():
            carried = []
            try:
                for name in keep:
                    if os.path.lexists(final / name) and not os.path.lexists(staging / name):
                        os.replace(final / name, staging / name)
                        carried.append(name)
                trash = final.parent / f".{final.name}.old-{_tag()}"
                os.replace(final, trash)
                try:
                    os.replace(staging, final)
                except BaseException:
                    os.replace(trash, final)
                    raise
            except BaseException:
                for name in carried:  # back into the old `final`, which stays as it was
                    with contextlib.suppress(OSError):
                        os.replace(staging / name, final / name)
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, final)
        _fsync_dir(final.parent)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            _name_the_target(exc, final)
        raise


_FIXES = {
    errno.EACCES: "permission denied; check the permissions of the file and its folder, or choose another path",
    errno.EPERM: "operation not permitted; check the permissions of the file and its folder, or choose another path",
    errno.ENOSPC: "no space left on the device; free some space or write somewhere else",
    errno.EDQUOT: "disk quota exceeded; free some space or write somewhere else",
    errno.EROFS: "read-only file system; write somewhere else",
    errno.EISDIR: "is a directory where a file belongs; give the path of a file",
    errno.ENOTDIR: "a file is in the way where a directory belongs; fix the path or remove the file",
    errno.EEXIST: "already exists; remove it or choose another path",
    errno.ENOTEMPTY: "directory not empty; remove it or choose another path",
    errno.ENAMETOOLONG: "file name too long; choose a shorter path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or use fewer workers",
    errno.EIO: "input/output error (a failing disk or network file system); check the device",
    errno.ETXTBSY: "the file is busy (in use by a running program); try again when it is free",
}


def describe_os_error(exc: OSError) -> str:
    """One line naming the file and the fix, e.g. `out/report.md: no space left on the device; free some …`.

    An OSError raised with a message of its own (no errno) is returned as it is.
    """
    if exc.errno is None:
        return str(exc)
    where = "" if exc.filename is None else f"{exc.filename}"
    if exc.filename2 is not None:
        where += f" -> {exc.filename2}"
    if exc.errno == errno.ENOENT:
        missing = Path(str(exc.filename)) if exc.filename is not None else None
        if missing is not None and not missing.parent.exists():
            what = f"its folder {missing.parent} does not exist; create it or fix the path"
        else:
            what = "no such file or directory; check the path"
    else:
        what = _FIXES.get(exc.errno, f"{exc.strerror or os.strerror(exc.errno)}")
    return f"{where}: {what}" if where else what
