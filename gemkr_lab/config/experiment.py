"""Experiments: the typed defaults, YAML presets written as diffs over them, and `key=value` overrides.

A preset in `experiments/` lists only what differs; `base:` names another preset it builds on. Unknown keys
are errors that name the file (or override) and suggest the closest valid key.
"""

import dataclasses
import difflib
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

import yaml

from gemkr_lab.config.checks import AtLeast, ConfigLoader, FieldError, check_fields, load_yaml
from gemkr_lab.config.data import DataConfig
from gemkr_lab.config.decoding import DecodingConfig
from gemkr_lab.config.model import ModelConfig
from gemkr_lab.config.train import TrainConfig

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
OVERRIDES_ENV = "GEMKR_LAB_OVERRIDES"
"""Overrides (`key=value`, space-separated) applied after every experiment's own, in this process and the runs it
starts: quick checks (the README test: `train.max_steps=2 tracking.wandb=false`) shrink whole sweeps with them."""


@dataclass(frozen=True)
class TrackingConfig:
    """Weights & Biases tracking (offline first: nothing needs an account or the network)."""

    wandb: bool = True
    """Track the run in W&B."""
    mode: Literal["offline", "online", "disabled"] = "offline"
    """W&B mode: "offline" (sync later with `wandb sync`), "online" or "disabled"."""
    project: str = "gemkr-lab"
    """W&B project."""
    tags: tuple[str, ...] = ()
    """Extra tags (the cell and the dataset are always added)."""
    group: str | None = None
    """W&B group (default: the cell's name; a search groups its trials under the search's name)."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class ExperimentConfig:
    """One trainable and evaluable cell of an ablation table."""

    name: str = "default"
    """The preset's name (its path under experiments/, without .yaml)."""
    data_root: str = "runs/world"
    """Where the dataset's files are (for the synthetic world: written by make-world)."""
    prepared: str = "runs/world-prepared"
    """Where `prepare` put the index, clue targets and regions (stamped with the data settings it used)."""
    tokenizer: str | None = None
    """The LLM's tokenizer directory (default: the LLM's own checkpoint directory when `model.llm` is one, as an
    LLM and its tokenizer are tied; DATA_ROOT/tokenizer for "tiny-llama")."""
    limit_train: Annotated[int, AtLeast(1)] | None = None
    """Use only the first N instruction rows (quick runs)."""
    split: Literal["test", "validation"] = "test"
    """Which split the run decodes and scores: test (the paper's tables), or validation, held out of the
    training questions by `data.validation_size` (what a search tunes on; it never reads test metrics)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.decoding.max_clue_tokens is None:  # one clue-length knob: the decoding cap follows the targets
            decoding = dataclasses.replace(self.decoding, max_clue_tokens=self.data.clue_max_tokens)
            object.__setattr__(self, "decoding", decoding)


class ConfigError(ValueError):
    """A preset or override that does not fit the configuration schema."""


def read_yaml_file(path: str | Path, what: str = "sweep file") -> tuple[Any, Any]:
    """(data, composed node for line numbers) of a YAML file, by PyYAML's safe rules; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    text = _read_text(path)
    try:
        return yaml.safe_load(text) or {}, yaml.compose(text)
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from exc


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None


def yaml_error(path: Path, exc: yaml.YAMLError) -> ConfigError:
    """One line naming the file, the line and PyYAML's problem (its own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    what = getattr(exc, "problem", None) or str(exc)
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        what += f" ({context}" + (f" from line {start.line + 1})" if start is not None and start != mark else ")")
    return ConfigError(f"{where}: not valid YAML: {' '.join(what.split())}; fix the YAML there")


def load_experiment(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Compose a preset (and the presets it builds on) with `key=value` overrides over the defaults.

    Every value is checked against its field's declared type and bounds; an error names the key, the value,
    what is expected and the preset file or override it came from.
    """
    diff, sources = _preset(name_or_path, seen=())
    apply_overrides(diff, sources, [*overrides, *os.environ.get(OVERRIDES_ENV, "").split()])
    name = Path(name_or_path).stem if name_or_path.endswith(".yaml") else name_or_path
    diff.setdefault("name", name)
    return build(ExperimentConfig, diff, where=name_or_path, sources=sources)


def apply_overrides(values: dict[str, Any], sources: dict[str, str], overrides) -> None:
    """Set each `key=value` override (YAML value) in the nested `values`, noting its origin in `sources`."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: write key=value, e.g. train.max_steps=100")
        try:
            value = load_yaml(raw) if raw else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc.problem})") from exc
        _set_path(values, key.split("."), value, where=f"override {item!r}")
        _forget(sources, key)
        sources[key] = f"override {item!r}"


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


def build(cls, values: dict[str, Any], where: str, sources: dict[str, str] | None = None, prefix: str = ""):
    """Instantiate dataclass `cls` from a (nested) dict.

    Unknown keys are named with a suggestion; bad values with the key, what is expected and where the value
    came from (`sources`: dotted key -> origin).
    """
    sources = sources or {}
    known = {f.name: f for f in fields(cls)}
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            origin = _origin(sources, path)
            raise ConfigError(
                f"{origin}: unknown key {path!r} in {cls.__name__}"
                + (f"; did you mean {prefix + hint[0]!r}?" if hint else "")
            )
        sub = hints[key] if is_dataclass(hints[key]) else None
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{_origin(sources, path)}: {path!r} must be a mapping of {sub.__name__} fields")
            kwargs[key] = build(sub, value, where, sources, prefix=f"{path}.")
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except FieldError as exc:
        path = f"{prefix}{exc.key}"
        origin = _origin(sources, path.split("[")[0], default=where)
        raise ConfigError(f"{path} = {exc.value!r}: expected {exc.expected} (from {origin})") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {prefix}{exc}") from exc


def _origin(sources: dict[str, str], path: str, default: str = "the defaults") -> str:
    """Where the value at `path` (or the section holding it) was set."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in sources:
            return sources[".".join(parts[:n])]
    return default


def _forget(sources: dict[str, str], key: str) -> None:
    for k in [k for k in sources if k == key or k.startswith(key + ".")]:
        del sources[k]


def _preset(name_or_path: str, seen: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """The merged diff of a preset and its bases, and where each key was set ("file:line")."""
    path = Path(name_or_path)
    if not path.suffix:
        path = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(str(p.relative_to(EXPERIMENTS_DIR))[:-5] for p in EXPERIMENTS_DIR.rglob("*.yaml"))
        hint = difflib.get_close_matches(name_or_path, available, n=1)
        raise ConfigError(f"{path}: no such experiment preset" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    if str(path) in seen:
        raise ConfigError(f"{path}: presets build on each other in a cycle ({' -> '.join(seen)})")
    text = _read_text(path)
    try:
        diff = load_yaml(text) or {}
        lines = _key_lines(yaml.compose(text, Loader=ConfigLoader))
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from exc
    if not isinstance(diff, dict):
        raise ConfigError(f"{path}: a preset is a mapping of fields to change")
    shown = _shown(path)
    sources = {key: f"{shown}:{line}" for key, line in lines.items()}
    base = diff.pop("base", None)
    if base is None:
        return diff, sources
    if not isinstance(base, str):
        raise ConfigError(f"{shown}:{lines.get('base', 1)}: base must name a preset, got {base!r}")
    merged, base_sources = _preset(base, (*seen, str(path)))
    for key in _leaf_keys(diff):
        _forget(base_sources, key)
    return _merge(merged, diff), base_sources | sources


def _key_lines(node, prefix: str = "") -> dict[str, int]:
    """Dotted key -> 1-based line of every key in a composed YAML mapping."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            dotted = f"{prefix}{key.value}"
            out[dotted] = key.start_mark.line + 1
            out |= _key_lines(value, dotted + ".")
    return out


key_lines = _key_lines


def _leaf_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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
