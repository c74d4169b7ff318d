"""Experiments: the typed defaults, YAML presets written as diffs over them, and `key=value` overrides.

A preset in `experiments/` lists only what differs; `base:` names another preset it builds on. Unknown keys
are errors that name the file (or override) and suggest the closest valid key.
"""

import dataclasses
import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from gemkr_lab.config.data import DataConfig
from gemkr_lab.config.decoding import DecodingConfig
from gemkr_lab.config.model import ModelConfig
from gemkr_lab.config.train import TrainConfig

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"


@dataclass(frozen=True)
class TrackingConfig:
    """Weights & Biases tracking (offline first: nothing needs an account or the network)."""

    wandb: bool = True
    """Track the run in W&B."""
    mode: str = "offline"
    """W&B mode: "offline" (sync later with `wandb sync`), "online" or "disabled"."""
    project: str = "gemkr-lab"
    """W&B project."""
    tags: tuple[str, ...] = ()
    """Extra tags (the cell and the dataset are always added)."""


@dataclass(frozen=True)
class ExperimentConfig:
    """One trainable and evaluable cell of an ablation table."""

    name: str = "default"
    """The preset's name (its path under experiments/, without .yaml)."""
    data_root: str = "runs/world"
    """Where the dataset's files are (for the synthetic world: written by make-world)."""
    prepared: str = "runs/world-prepared"
    """Where `prepare` put the index, clue targets and regions."""
    tokenizer: str | None = None
    """The LLM's tokenizer directory (default: DATA_ROOT/tokenizer)."""
    limit_train: int | None = None
    """Use only the first N instruction rows (quick runs)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


class ConfigError(ValueError):
    """A preset or override that does not fit the configuration schema."""


def load_experiment(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Compose a preset (and the presets it builds on) with `key=value` overrides over the defaults."""
    diff = _preset(name_or_path, seen=())
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: write key=value, e.g. train.max_steps=100")
        _set_path(diff, key.strip().split("."), yaml.safe_load(raw) if raw else None, where=f"override {item!r}")
    name = Path(name_or_path).stem if name_or_path.endswith(".yaml") else name_or_path
    diff.setdefault("name", name)
    return build(ExperimentConfig, diff, where=name_or_path)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain dict (tuples as lists) for YAML/JSON."""
    out = dataclasses.asdict(config)

    def fix(v):
        if isinstance(v, tuple):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    return fix(out)


def build(cls, values: dict[str, Any], where: str):
    """Instantiate dataclass `cls` from a (nested) dict, naming unknown keys with a suggestion."""
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(
                f"{where}: unknown key {key!r} in {cls.__name__}" + (f"; did you mean {hint[0]!r}?" if hint else "")
            )
        sub = _dataclass_type(known[key])
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key!r} must be a mapping of {sub.__name__} fields")
            kwargs[key] = build(sub, value, f"{where}: {key}")
        else:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _dataclass_type(f: dataclasses.Field):
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return type(default) if is_dataclass(default) else None


def _preset(name_or_path: str, seen: tuple[str, ...]) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(str(p.relative_to(EXPERIMENTS_DIR))[:-5] for p in EXPERIMENTS_DIR.rglob("*.yaml"))
        hint = difflib.get_close_matches(name_or_path, available, n=1)
        raise ConfigError(f"{path}: no such experiment preset" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    if str(path) in seen:
        raise ConfigError(f"{path}: presets build on each other in a cycle ({' -> '.join(seen)})")
    try:
        diff = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(diff, dict):
        raise ConfigError(f"{path}: a preset is a mapping of fields to change")
    base = diff.pop("base", None)
    merged = _preset(base, (*seen, str(path))) if base else {}
    return _merge(merged, diff)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_path(d: dict, keys: list[str], value: Any, where: str) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: {k!r} is not a section")
    d[keys[-1]] = value
