"""Sweep coordination through an Optuna storage: every (cell, seed) is a trial, claimed atomically.

Storage: Optuna's journal file under the sweep root by default (embedded, one machine), or any RDB URL
(PostgreSQL for several machines). The study is created once with one WAITING trial per (cell, seed);
workers claim a trial by moving it WAITING -> RUNNING, which the storage does atomically (a second claimer
gets False), so a cell never runs twice, also with several sweep commands or machines at once. A claimed
trial carries a heartbeat; RUNNING trials whose worker is gone (a killed worker) are failed and queued
again. Failed trials are retried up to a limit, with the error recorded.

Under faults and races:
- A study is created with its queued trials first and its fingerprint last: a study without a fingerprint is
  still being made, and a command that finds one waits for it (`CREATING_SECONDS`), never calls it changed.
- A trial is alive while a trainer holds its run's lock (`busy`), or while its launcher lives (this host) and
  its heartbeat is fresh; until the claimer's first heartbeat the claim's own time stands in for it, so a claim
  being completed is never judged dead.
- Heartbeats and outcomes are written through storage outages (`retrying`); a worker whose trial was finished by
  someone else has lost its claim (`Heartbeat.lost`), and `finish` then records nothing.
- `queue_missing` queues every (cell, seed) with no complete run and no WAITING/RUNNING trial, except those whose
  retries are exhausted: those are returned, to be reported, and queued again only when asked.
- Commands on the same root serialise their queue changes (re-queue, retry, queue missing) with `queue_lock`.
"""

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import socket
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from gemkr_lab.config.experiment import ConfigError
from gemkr_lab.io import lock, pid_alive

HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 60.0
OUTAGE_SECONDS = 300.0
"""How long a storage write (heartbeat, claim, outcome) is tried again through a storage outage."""
CREATING_SECONDS = 60.0
"""How long a study without its fingerprint is taken to be still being created by another command."""
QUEUE_LOCK = ".sweep-queue.lock"
JOURNAL = "optuna-journal.log"
"""The default storage: this journal file under the sweep's root."""

_log = logging.getLogger(__name__)


def redact_url(url: str) -> str:
    """`url` as it may be shown or written: the password masked by SQLAlchemy's own rendering (`***`).

    A URL SQLAlchemy cannot parse is masked by pattern (`user:***@`), and `password=` query parameters too.
    """
    try:
        from sqlalchemy.engine import make_url

        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: mask what looks like credentials
        shown = re.sub(r"([^\s/:@]*):[^\s@/]*@", r"\1:***@", url)
    return re.sub(r"(?i)\b(password|passwd|pwd)=[^&;\s]*", r"\1=***", shown)


def _scrub(text: str, url: str) -> str:
    """`text` with every appearance of `url` and of its password replaced by their masked forms."""
    text = text.replace(url, redact_url(url))
    secrets = set(re.findall(r"(?i)\b(?:password|passwd|pwd)=([^&;\s]+)", url))
    try:
        from sqlalchemy.engine import make_url

        if make_url(url).password:
            secrets.add(str(make_url(url).password))
    except Exception:
        secrets.update(m for m in re.findall(r"[^\s/:@]*:([^\s@/]+)@", url) if m)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def storage_url(url: str) -> str:
    """The URL given to SQLAlchemy: a plain `postgresql://` uses psycopg2 where psycopg 3 is not installed.

    SQLAlchemy 2.1 reads a plain `postgresql://` as `postgresql+psycopg://` (psycopg 3); this project installs
    psycopg2 (`psycopg2-binary`), so without the mapping a correct URL would fail for a missing module.
    """
    import importlib.util

    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url  # refused with a clear message when connecting
    if (
        parsed.drivername in ("postgresql", "postgres")
        and importlib.util.find_spec("psycopg") is None
        and importlib.util.find_spec("psycopg2") is not None
    ):
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def open_storage(url: str | None, root: Path):
    """The journal file under `root` (default), or an RDB storage reached at `url` (checked first).

    Raises:
        ConfigError: the URL cannot be parsed, names an unknown database or a driver that is not installed
            (with the URL form that works), or the server cannot be reached; the password is never shown.
    """
    if url is None:
        from optuna.storages import JournalStorage

        root.mkdir(parents=True, exist_ok=True)
        return JournalStorage(journal_file(root / JOURNAL))
    real = storage_url(url)
    _check_reachable(url, real)
    return _rdb_storage(real)


def journal_file(path: str | Path):
    """Optuna's journal file backend at `path`, whose failed writes (disk full, quota, I/O) are rolled back.

    Optuna appends a batch of log lines and fsyncs; on a full disk part of the batch may stay in the file, and a
    later append after that partial line makes the whole journal unreadable ("Invalid log format"). Here the
    file is cut back to its length before the batch (under Optuna's own journal lock), and the error names it.
    """
    from optuna.storages.journal import JournalFileBackend

    class _RolledBackJournal(JournalFileBackend):
        def append_logs(self, logs: list[dict]) -> None:
            try:  # Optuna's lock context (optuna 5); without it, Optuna's own append (not rolled back)
                from optuna.storages.journal._file import get_lock_file
            except ImportError:
                try:
                    return super().append_logs(logs)
                except OSError as exc:
                    exc.filename = exc.filename or self._file_path
                    raise
            data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
            with get_lock_file(self._lock):
                size = os.path.getsize(self._file_path)
                try:
                    with open(self._file_path, "ab") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        os.truncate(self._file_path, size)
                    exc.filename = exc.filename or self._file_path
                    raise
            return None

    return _RolledBackJournal(str(path))


def _check_reachable(url: str, real: str, outcome: str = "nothing was started") -> None:
    """Connect once to `real` (SQLAlchemy's URL for `url`); a failure is a ConfigError ending in `outcome`."""
    shown = redact_url(url)
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(real, connect_args=_connect_timeout(real))
        with engine.connect():
            pass
        engine.dispose()
    except ImportError as exc:  # the dialect's driver module is not installed
        raise ConfigError(_missing_driver(shown, real, exc, outcome)) from None
    except Exception as exc:  # sqlalchemy raises driver-specific errors for a bad URL or an unreachable server
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        if isinstance(exc, NoSuchModuleError):
            what = "names a database type SQLAlchemy does not know; use e.g. postgresql+psycopg2://USER@HOST/DB"
            raise ConfigError(f"storage {shown}: {what}; {outcome}") from None
        if isinstance(exc, ArgumentError):
            what = "is not a database URL (not shown: it may hold a password)"
            raise ConfigError(
                f"the storage {what}; use e.g. postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB; {outcome}"
            ) from None
        reason = (getattr(exc, "orig", None) or exc).__str__().strip().splitlines() or [type(exc).__name__]
        why = _scrub(_scrub(reason[0], real), url)
        raise ConfigError(f"storage {shown} cannot be reached ({why}); {outcome}") from None


def existing_study(name: str, url: str | None, root: Path) -> optuna.Study:
    """The study `name` of a sweep that ran, opened to read; nothing is created when it is not there.

    `url`: the storage the sweep ran with (None: the journal file under `root`). A missing journal, SQLite file,
    Optuna tables or study is refused naming it (the password of `url` never shown); no journal, database file
    or table is created, as opening a storage to write would.

    Raises:
        ConfigError: no such storage or study, or the storage cannot be reached (see `open_storage`).
    """
    if url is None:
        journal = root / JOURNAL
        if not journal.is_file():
            raise ConfigError(
                f"no study {name!r}: {journal} does not exist; run `gemkr-lab sweep` with this file first, or pass "
                "--storage URL if the sweep ran with one"
            )
        from optuna.storages import JournalStorage

        storage = JournalStorage(journal_file(journal))
        shown = str(journal)
    else:
        import sqlalchemy
        from sqlalchemy.engine import make_url

        shown = redact_url(url)
        try:
            parsed = make_url(url)
        except Exception:  # not a URL: refused by _check_reachable, the password not shown
            parsed = None
        database = (parsed.database or "") if parsed is not None else ""
        sqlite = parsed is not None and parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:")
        if sqlite and not Path(database).is_file():  # connecting would create an empty database file
            raise ConfigError(f"storage {shown}: the SQLite file {database} does not exist; check the URL")
        real = storage_url(url)
        _check_reachable(url, real, outcome="nothing was written")
        engine = sqlalchemy.create_engine(real, connect_args=_connect_timeout(real))
        try:
            has_tables = sqlalchemy.inspect(engine).has_table("studies")
        finally:
            engine.dispose()
        if not has_tables:
            raise ConfigError(f"storage {shown} holds no Optuna studies; pass the --storage the sweep ran with")
        storage = optuna.storages.RDBStorage(real, skip_table_creation=True)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(optuna.get_all_study_names(storage))
        there = f"studies there: {', '.join(names)}" if names else "it holds no study"
        raise ConfigError(
            f"storage {shown} has no study {name!r} ({there}); run `gemkr-lab sweep` with this file first, or pass "
            "the --storage the sweep ran with"
        ) from None


def _rdb_storage(url: str, tries: int = 10):
    """Optuna's RDB storage; on a new database, commands starting together all create its tables at once.

    The losers of that race fail on the database's catalogue (duplicate type or table); they try again and find
    the tables made.
    """
    from sqlalchemy.exc import DBAPIError

    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(url)
        except DBAPIError:
            if attempt == tries - 1:
                raise
            time.sleep(0.2 + 0.3 * attempt)
    raise AssertionError("unreachable")


def _missing_driver(shown: str, real: str, exc: ImportError, outcome: str = "nothing was started") -> str:
    from sqlalchemy.engine import make_url

    module = exc.name or "its driver"
    backend = make_url(real).get_backend_name()
    works = {"postgresql": "postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB (psycopg2 is installed)"}
    hint = f"use {works[backend]}, or install {module}" if backend in works else f"install {module}"
    return f"storage {shown} needs the Python driver {module!r}, which is not installed: {hint}; {outcome}"


def _connect_timeout(url: str) -> dict:
    return {"connect_timeout": 5} if url.startswith("postgresql") else {}


def fingerprint(cells, seeds, overrides) -> str:
    """What defines a grid: a study made for another definition must not be reused silently."""
    payload = json.dumps({"cells": list(cells), "seeds": list(seeds), "overrides": list(overrides)})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def settled_study(name: str, storage, fp: str, **kwargs) -> optuna.Study | None:
    """The study `name` once its creator has finished making it (its fingerprint set), or None if none exists.

    A study without a fingerprint is being created by another command (create, queue, fingerprint last); it is
    waited for up to `CREATING_SECONDS`, then adopted with `fp` (its creator died before finishing: the pairs it
    did not queue are queued by `queue_missing`).
    """
    deadline = time.monotonic() + CREATING_SECONDS
    while True:
        try:
            study = optuna.load_study(study_name=name, storage=storage, **kwargs)
        except KeyError:
            return None
        if "fingerprint" in study.user_attrs:
            return study
        if time.monotonic() > deadline:
            retrying(study.set_user_attr, "fingerprint", fp)
            return study
        time.sleep(0.2)


def grid_study(name: str, storage, cells, seeds, overrides, new_study: bool = False) -> optuna.Study:
    """Load the sweep's study, or create it with one queued trial per (cell, seed).

    Race-free with other commands starting at the same moment: one creates it (the storage refuses a second
    study of the same name), queues its trials and sets the fingerprint last; the others wait for that.
    """
    fp = fingerprint(cells, seeds, overrides)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = settled_study(name, storage, fp)
    if study is not None and study.user_attrs.get("fingerprint") != fp:
        if not new_study:
            raise ConfigError(
                f"the sweep file changed since study {name!r} was made (cells, seeds or overrides differ); "
                "pass --new-study to start a fresh study (existing run directories are kept and reused)"
            )
        optuna.delete_study(study_name=name, storage=storage)
        study = None
    if study is None:
        try:
            study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        except optuna.exceptions.DuplicatedStudyError:  # another command created it a moment ago: wait for it
            return grid_study(name, storage, cells, seeds, overrides)
        for cell in cells:
            for seed in seeds:
                study.enqueue_trial({}, user_attrs={"cell": cell, "seed": int(seed), "attempt": 1})
        study.set_user_attr("fingerprint", fp)  # last: the study is complete for every reader from here on
    return study


@contextlib.contextmanager
def queue_lock(root: str | Path):
    """Serialise queue changes (re-queue, retry, queue missing pairs) of all commands sharing this sweep root.

    Each change reads the trials and then writes: two commands doing it at once would queue a pair twice.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with lock(root / QUEUE_LOCK, wait=None):
        yield


def _transient() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [OSError, optuna.exceptions.StorageInternalError]
    try:
        from sqlalchemy.exc import DBAPIError, DisconnectionError

        kinds += [DBAPIError, DisconnectionError]
    except ImportError:
        pass
    return tuple(kinds)


def retrying(call, *args, seconds: float | None = None, **kwargs):
    """`call(*args, **kwargs)`, tried again through a storage outage for up to `seconds` (`OUTAGE_SECONDS`)."""
    deadline = time.monotonic() + (OUTAGE_SECONDS if seconds is None else seconds)
    delay = 0.5
    while True:
        try:
            return call(*args, **kwargs)
        except _transient() as exc:
            if time.monotonic() + delay > deadline:
                raise
            _log.warning("storage unavailable (%s); trying again in %.1f s", type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


def requeue_stale(
    study: optuna.Study, storage, retries: int, stale_after: float | None = None, busy=None, requeue=None
) -> int:
    """Fail RUNNING trials whose worker is gone and queue them again; returns how many.

    `requeue(trial)`, when given, queues the failed trial's successor instead of the retry rule (a search gives
    a dead trial back with its parameters, so that its run resumes).

    Alive, whatever else: `busy(user_attrs)` is true (a trainer holds the trial's run lock: an orphaned trainer
    of a killed sweep is waited for, never doubled). Otherwise gone: its launcher no longer exists on this host,
    or (any host) its last heartbeat is older than `stale_after` (`STALE_AFTER_SECONDS`). Before the claimer's
    first heartbeat, the trial's start (the claim) stands in for it: a claim being completed is alive.
    """
    stale_after = STALE_AFTER_SECONDS if stale_after is None else stale_after
    now, n = time.time(), 0
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.user_attrs
        if busy is not None and busy(attrs):
            continue
        claimed = t.datetime_start.timestamp() if t.datetime_start is not None else now
        beat = float(attrs.get("heartbeat") or claimed)
        dead_here = attrs.get("host") == host and "pid" in attrs and not pid_alive(int(attrs["pid"]))
        if not (dead_here or now - beat > stale_after):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "error", "worker stopped (no heartbeat)")
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            continue  # finished meanwhile (by its worker or another command's re-queue)
        if requeue is not None:
            requeue(t)
        else:
            _retry(study, attrs, retries)
        n += 1
    return n


def _retry(study: optuna.Study, attrs: dict, retries: int) -> None:
    if attrs.get("attempt", 1) <= retries:
        carried = {k: attrs[k] for k in ("cell", "seed", "run") if k in attrs}
        retrying(study.enqueue_trial, {}, user_attrs=carried | {"attempt": attrs.get("attempt", 1) + 1})


def claim(study: optuna.Study, storage, attrs: dict | None = None):
    """Atomically take one WAITING trial (WAITING -> RUNNING); None when none is left.

    The claim is complete when its heartbeat, host and pid are written; until then `requeue_stale` takes the
    trial's start time (set by the storage with the state) as its heartbeat. `attrs` are written with them
    (e.g. the Slurm job of the worker).
    """
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if not retrying(storage.set_trial_state_values, t._trial_id, TrialState.RUNNING):
                continue
            for key, value in {
                **(attrs or {}),
                "heartbeat": time.time(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "node": platform.node(),
            }.items():
                retrying(storage.set_trial_user_attr, t._trial_id, key, value)
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            continue  # finished or deleted meanwhile
        return t
    return None


DETERMINISTIC = "deterministic"
"""Trial attribute: its run failed on bad input (exit 2, `gemkr_lab.cli.USER_ERROR`), which no retry fixes."""


def queue_missing(
    study: optuna.Study, runs: dict, done, retries: int, retry_failed: bool = False
) -> tuple[list[tuple[str, int]], dict]:
    """Queue every (cell, seed) with no complete run and no WAITING/RUNNING trial; nothing is forgotten.

    Args:
        study: the sweep's study.
        runs: (cell, seed) -> the run fingerprint of its current config (trials of other configs do not count).
        done: the (cell, seed) pairs whose current run is complete.
        retries: a pair whose last trial failed is queued again while its attempts are at most `retries`.
        retry_failed: also queue the pairs whose retries are exhausted, with a fresh count.

    Returns:
        The pairs queued, and {(cell, seed): last failed trial} of those whose retries are exhausted (not
        queued unless `retry_failed`).
    """
    trials = study.get_trials(deepcopy=False)
    queued, exhausted = [], {}
    for (cell, seed), run in runs.items():
        if (cell, seed) in done:
            continue
        mine = [
            t
            for t in trials
            if t.user_attrs.get("cell") == cell
            and int(t.user_attrs.get("seed", -1)) == seed
            and t.user_attrs.get("run", run) == run
        ]
        if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in mine):
            continue
        last = max(mine, key=lambda t: t.number, default=None)
        attempt = 1
        if last is not None and last.state == TrialState.FAIL:
            attempt = int(last.user_attrs.get("attempt", 1)) + 1
            if attempt > retries + 1 or last.user_attrs.get(DETERMINISTIC):
                if not retry_failed:
                    exhausted[cell, seed] = last
                    continue
                attempt = 1
        retrying(study.enqueue_trial, {}, user_attrs={"cell": cell, "seed": seed, "attempt": attempt, "run": run})
        queued.append((cell, seed))
    return queued, exhausted


class Heartbeat:
    """Refreshes a claimed trial's heartbeat until stopped, through storage outages.

    The thread never dies on a storage error: it tries again every second until the storage answers. When the
    trial turns out finished by someone else (judged dead and re-queued, or deleted), the claim is lost: `lost`
    is set and `on_lost` is called (the worker stops its run).
    """

    def __init__(self, storage, trial_id: int, on_lost=None) -> None:
        self.lost = threading.Event()
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(storage, trial_id), daemon=True)

    def _run(self, storage, trial_id: int) -> None:
        wait, failing = HEARTBEAT_SECONDS, False
        while not self._stop.wait(wait):
            try:
                storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
            except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
                _log.warning("trial %s was finished by another worker: this worker lost its claim", trial_id)
                self.lost.set()
                if self._on_lost is not None:
                    self._on_lost()
                return
            except Exception as exc:  # a storage outage (any driver's error): keep beating, sooner
                if not failing:
                    _log.warning("heartbeat of trial %s not written (%s); trying again", trial_id, exc)
                failing, wait = True, min(1.0, HEARTBEAT_SECONDS)
                continue
            failing, wait = False, HEARTBEAT_SECONDS

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def finish(
    study: optuna.Study,
    storage,
    trial,
    ok: bool,
    value: float | None,
    error: str | None,
    retries: int,
    deterministic: bool = False,
) -> bool:
    """Record a trial's outcome (through storage outages); a failure is queued again while retries remain.

    A `deterministic` failure (bad input: config, data, a damaged or mismatched file) is never queued again:
    the same input fails the same way, so a retry only spends the time to reach the error once more. It is
    failed for good at once (listed with its error; `retry_failed` queues it again once the input is fixed).

    Returns False, recording nothing, when the trial was already finished by someone else (its claim was lost;
    whoever finished it queued it again).
    """
    try:
        if ok:
            value = value if value is not None else 0.0
            retrying(storage.set_trial_state_values, trial._trial_id, TrialState.COMPLETE, [value])
            return True
        retrying(storage.set_trial_user_attr, trial._trial_id, "error", error or "failed")
        if deterministic:  # before the state: a reader seeing FAIL sees the mark too
            retrying(storage.set_trial_user_attr, trial._trial_id, DETERMINISTIC, True)
        retrying(storage.set_trial_state_values, trial._trial_id, TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
        return False
    if not deterministic:
        _retry(study, trial.user_attrs, retries)
    return True


def release(study: optuna.Study, storage, trial, reason: str) -> bool:
    """Give a claimed trial back to the queue without counting an attempt: its worker was stopped from outside.

    For a worker told to stop (a Slurm job cancelled, preempted or at its time limit) whose run has ended: the
    trial is failed with `reason` and queued again with the same attempt number, so that a stop never uses up
    a retry. Returns False, changing nothing, when the trial was already finished by someone else.
    """
    try:
        retrying(storage.set_trial_user_attr, trial._trial_id, "error", reason)
        retrying(storage.set_trial_state_values, trial._trial_id, TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
        return False
    attrs = trial.user_attrs
    carried = {k: attrs[k] for k in ("cell", "seed", "run") if k in attrs}
    retrying(study.enqueue_trial, {}, user_attrs=carried | {"attempt": attrs.get("attempt", 1)})
    return True
