"""The `launcher:` section of a sweep file and the Slurm options of the command line, checked.

Kept apart from `gemkr_lab.sweep.slurm` (which runs the worker jobs) so that reading a sweep file needs neither
submitit nor the grid's machinery: `grid` and `search` read their files through here, and `slurm` builds on
`grid` without a circle.
"""

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from gemkr_lab.config.experiment import ConfigError

LAUNCHERS = ("local", "slurm")
DEFAULT_TIME_MINUTES = 60
RESERVED_SBATCH = {
    "array": "the job array is sized by --max-jobs",
    "output": "logs go under <root>/slurm/",
    "error": "logs go under <root>/slurm/",
    "open-mode": "logs go under <root>/slurm/",
    "signal": "the requeue signal is submitit's (USR2)",
    "wrap": "the job runs a sweep worker",
    "partition": "use --partition",
    "time": "use --time",
    "mem": "use --mem",
    "cpus-per-task": "use --cpus-per-trial",
    "gpus-per-node": "use --gpus-per-trial",
}


@dataclass(frozen=True)
class SlurmOptions:
    """What each worker job asks Slurm for (one worker runs one trial at a time)."""

    partition: str | None = None
    """Slurm partition (default: the cluster's default partition)."""
    time: int = DEFAULT_TIME_MINUTES
    """Time limit of a worker job, in minutes; at the limit it checkpoints, gives its trial back and requeues."""
    gpus_per_trial: int = 0
    """GPUs per worker job (`--gpus-per-node`): Slurm sets CUDA_VISIBLE_DEVICES, the trainer inherits it."""
    cpus_per_trial: int | None = None
    """CPUs per worker job (`--cpus-per-task`; default: the cluster's)."""
    mem: str | None = None
    """Memory per worker job, as sbatch takes it (e.g. 32G; default: the cluster's)."""
    max_jobs: int = 1
    """Most worker jobs pending or running at once for this sweep (the job array's size)."""
    slurm_args: tuple[tuple[str, Any], ...] = ()
    """Any other sbatch options, (key, value) (value True: a flag), e.g. (("account", "lab"), ("qos", "high"))."""


# --- settings: the sweep file's `launcher:` section and the command line -------------------------------------


def parse_time(value: Any) -> int:
    """A Slurm time limit in whole minutes (rounded up): minutes, or MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.

    Raises:
        ValueError: anything else, or not a positive time.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time limit")
    if isinstance(value, int):
        minutes = value
    else:
        text = str(value).strip()
        match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
        if match is None:
            raise ValueError(f"{value!r} is not a Slurm time limit (minutes, HH:MM:SS or D-HH:MM:SS)")
        days, a, b, c = (int(x) if x is not None else None for x in match.groups())
        if days is None:  # minutes | minutes:seconds | hours:minutes:seconds
            seconds = a * 60 if b is None else (a * 60 + b if c is None else a * 3600 + b * 60 + c)
        else:  # days-hours | days-hours:minutes | days-hours:minutes:seconds
            seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
        minutes = -(-seconds // 60)
    if minutes < 1:
        raise ValueError(f"{value!r} is not a positive time limit")
    return minutes


def parse_mem(value: Any) -> str:
    """Memory as sbatch takes it: a whole number with an optional unit K, M, G or T (default M)."""
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"\d+[KMGT]?B?", text, flags=re.IGNORECASE):
        raise ValueError(f"{value!r} is not an amount of memory (e.g. 32G, 4000M)")
    return text.upper()


def parse_slurm_arg(text: str) -> tuple[str, Any]:
    """`key=value` (or a bare `key`, a flag) of the command line's --slurm-arg: one more sbatch option."""
    key, sep, value = text.partition("=")
    return _slurm_arg(key.strip(), value.strip() if sep else True)


def _slurm_arg(key: str, value: Any) -> tuple[str, Any]:
    key = key.strip().lstrip("-").replace("_", "-")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
        raise ValueError(f"{key!r} is not an sbatch option name (e.g. account, qos, constraint)")
    if key in RESERVED_SBATCH:
        raise ValueError(f"sbatch option {key!r} is set by the launcher ({RESERVED_SBATCH[key]})")
    if isinstance(value, bool):
        if not value:
            raise ValueError(f"sbatch option {key!r}: false means leaving it out")
        return key, True
    if not isinstance(value, str | int | float) or str(value) == "":
        raise ValueError(f"sbatch option {key!r}: {value!r} is not a value (give text or a number)")
    return key, str(value)


def _whole(value: Any, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(f"{value!r} is not a whole number >= {lowest}")
    return value


_CHECKS = {
    "partition": lambda v: v if isinstance(v, str) and v.strip() else _fail(f"{v!r} is not a partition name"),
    "time": parse_time,
    "gpus_per_trial": lambda v: _whole(v, 0),
    "cpus_per_trial": lambda v: _whole(v, 1),
    "mem": parse_mem,
    "max_jobs": lambda v: _whole(v, 1),
}


def _fail(message: str):
    raise ValueError(message)


def launcher_section(raw: Any, path: Path, node) -> tuple[str, dict]:
    """Validate a sweep file's `launcher:` section; returns (launcher name, SlurmOptions keyword arguments).

    Refused naming the line: a section that is not a mapping, unknown keys, a name other than local or slurm,
    values of the wrong type or range, and Slurm settings under the local launcher.
    """
    lines = _section_lines(node, "launcher")
    where = lambda key: f"{path}:{lines.get(key, lines.get('', 0))}: launcher"  # noqa: E731
    if not isinstance(raw, dict):
        raise ConfigError(f"{where('')}: a mapping (name: slurm, partition, time, ...)")
    allowed = {"name", "slurm_args", *_CHECKS}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where(unknown[0])}: unknown keys {unknown}; a launcher section has {sorted(allowed)}")
    name = raw.get("name", "local")
    if name not in LAUNCHERS:
        raise ConfigError(f"{where('name')}.name: {name!r} is not a launcher; give one of {list(LAUNCHERS)}")
    settings: dict = {}
    for key, check in _CHECKS.items():
        if key in raw:
            try:
                settings[key] = check(raw[key])
            except ValueError as exc:
                raise ConfigError(f"{where(key)}.{key}: {exc}") from None
    if "slurm_args" in raw:
        args = raw["slurm_args"]
        if not isinstance(args, dict):
            raise ConfigError(f"{where('slurm_args')}.slurm_args: a mapping of sbatch options (account: lab, ...)")
        try:
            settings["slurm_args"] = tuple(_slurm_arg(str(k), v) for k, v in args.items())
        except ValueError as exc:
            raise ConfigError(f"{where('slurm_args')}.slurm_args: {exc}") from None
    if name == "local" and settings:
        raise ConfigError(f"{where(next(iter(settings)))}: {sorted(settings)} are Slurm settings; add name: slurm")
    return name, settings


def _section_lines(node, section: str) -> dict[str, int]:
    """1-based lines of a top-level section's keys ('' -> the section's own line)."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    for key, value in node.value:
        if key.value == section:
            out = {"": key.start_mark.line + 1}
            if isinstance(value, yaml.MappingNode):
                out |= {k.value: k.start_mark.line + 1 for k, _ in value.value}
            return out
    return {}


def slurm_options(sweep, given: dict) -> SlurmOptions:
    """The sweep file's Slurm settings (`sweep.slurm`, a grid's or a search's) with the command line's over them.

    Raises:
        ConfigError: a value of the wrong type or range (the option named).
    """
    settings = dict(sweep.slurm)
    for key, value in given.items():
        if value is None:
            continue
        if key == "slurm_args":
            merged = dict(settings.get("slurm_args", ()))
            merged.update(value)
            settings[key] = tuple(merged.items())
            continue
        try:
            settings[key] = _CHECKS[key](value) if key in _CHECKS else value
        except ValueError as exc:
            raise ConfigError(f"--{key.replace('_', '-')}: {exc}") from None
    names = {f.name for f in fields(SlurmOptions)}
    return SlurmOptions(**{k: v for k, v in settings.items() if k in names})
