"""Sweep coordination through an Optuna storage: every (cell, seed) is a trial, claimed atomically.

Storage: Optuna's journal file under the sweep root by default (embedded, one machine), or any RDB URL
(PostgreSQL for several machines). The study is created once with one WAITING trial per (cell, seed);
workers claim a trial by moving it WAITING -> RUNNING, which the storage does atomically (a second claimer
gets False), so a cell never runs twice, also with several sweep commands or machines at once. A claimed
trial carries a heartbeat; RUNNING trials whose heartbeat stopped (a killed worker) are failed and queued
again. Failed trials are retried up to a limit, with the error recorded.
"""

import hashlib
import json
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

HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 60.0


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
        from optuna.storages.journal import JournalFileBackend

        root.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(root / "optuna-journal.log")))
    shown = redact_url(url)
    real = storage_url(url)
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(real, connect_args=_connect_timeout(real))
        with engine.connect():
            pass
        engine.dispose()
    except ImportError as exc:  # the dialect's driver module is not installed
        raise ConfigError(_missing_driver(shown, real, exc)) from None
    except Exception as exc:  # sqlalchemy raises driver-specific errors for a bad URL or an unreachable server
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        if isinstance(exc, NoSuchModuleError):
            what = "names a database type SQLAlchemy does not know; use e.g. postgresql+psycopg2://USER@HOST/DB"
            raise ConfigError(f"storage {shown}: {what}; nothing was started") from None
        if isinstance(exc, ArgumentError):
            what = "is not a database URL (not shown: it may hold a password)"
            raise ConfigError(
                f"the storage {what}; use e.g. postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB; nothing was started"
            ) from None
        reason = (getattr(exc, "orig", None) or exc).__str__().strip().splitlines() or [type(exc).__name__]
        why = _scrub(_scrub(reason[0], real), url)
        raise ConfigError(f"storage {shown} cannot be reached ({why}); nothing was started") from None
    return optuna.storages.RDBStorage(real)


def _missing_driver(shown: str, real: str, exc: ImportError) -> str:
    from sqlalchemy.engine import make_url

    module = exc.name or "its driver"
    backend = make_url(real).get_backend_name()
    works = {"postgresql": "postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB (psycopg2 is installed)"}
    hint = f"use {works[backend]}, or install {module}" if backend in works else f"install {module}"
    return f"storage {shown} needs the Python driver {module!r}, which is not installed: {hint}; nothing was started"


def _connect_timeout(url: str) -> dict:
    return {"connect_timeout": 5} if url.startswith("postgresql") else {}


def fingerprint(cells, seeds, overrides) -> str:
    """What defines a grid: a study made for another definition must not be reused silently."""
    payload = json.dumps({"cells": list(cells), "seeds": list(seeds), "overrides": list(overrides)})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def grid_study(name: str, storage, cells, seeds, overrides, new_study: bool = False) -> optuna.Study:
    """Load the sweep's study, or create it with one queued trial per (cell, seed)."""
    fp = fingerprint(cells, seeds, overrides)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        study = None
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
        except optuna.exceptions.DuplicatedStudyError:  # another command created it a moment ago
            return optuna.load_study(study_name=name, storage=storage)
        study.set_user_attr("fingerprint", fp)
        for cell in cells:
            for seed in seeds:
                study.enqueue_trial({}, user_attrs={"cell": cell, "seed": int(seed), "attempt": 1})
    return study


def requeue_stale(study: optuna.Study, storage, retries: int, stale_after: float = STALE_AFTER_SECONDS) -> int:
    """Fail RUNNING trials whose worker is gone and queue them again; returns how many.

    Gone: its process no longer exists on this host, or (any host) its heartbeat is older than `stale_after`.
    """
    now, n = time.time(), 0
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat", 0.0)
        dead_here = t.user_attrs.get("host") == host and not _alive(int(t.user_attrs.get("pid", -1)))
        if dead_here or now - beat > stale_after:
            storage.set_trial_user_attr(t._trial_id, "error", "worker stopped (no heartbeat)")
            try:
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # finished meanwhile
            _retry(study, t.user_attrs, retries)
            n += 1
    return n


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retry(study: optuna.Study, attrs: dict, retries: int) -> None:
    if attrs.get("attempt", 1) <= retries:
        carried = {k: attrs[k] for k in ("cell", "seed", "run") if k in attrs}
        study.enqueue_trial({}, user_attrs=carried | {"attempt": attrs.get("attempt", 1) + 1})


def claim(study: optuna.Study, storage):
    """Atomically take one WAITING trial (WAITING -> RUNNING); None when none is left."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
            for key, value in {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "heartbeat": time.time(),
                "node": platform.node(),
            }.items():
                storage.set_trial_user_attr(t._trial_id, key, value)
            return t
    return None


class Heartbeat:
    """Refreshes a claimed trial's heartbeat until stopped."""

    def __init__(self, storage, trial_id: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(storage, trial_id), daemon=True)

    def _run(self, storage, trial_id: int) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            storage.set_trial_user_attr(trial_id, "heartbeat", time.time())

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def finish(study: optuna.Study, storage, trial, ok: bool, value: float | None, error: str | None, retries: int) -> None:
    """Record a trial's outcome; a failure is queued again while retries remain."""
    if ok:
        storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [value if value is not None else 0.0])
        return
    storage.set_trial_user_attr(trial._trial_id, "error", error or "failed")
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    _retry(study, trial.user_attrs, retries)
