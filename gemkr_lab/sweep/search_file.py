"""Search sweep files: read and checked with light imports (Optuna loads only to check the space's bounds).

A search file that does not exist, is not YAML, or has a bad key is refused before Optuna, torch or the data
preparation load (#25); `gemkr_lab.sweep.search` runs what this reads.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gemkr_lab.config.experiment import ConfigError, ExperimentConfig, build, key_lines, load_experiment, read_yaml_file
from gemkr_lab.config.search import SearchSettings
from gemkr_lab.sweep.launcher import launcher_section
from gemkr_lab.sweep.names import check_sweep_name

if TYPE_CHECKING:
    import optuna

TOP_KEYS = ("name", "root", "base", "seed", "overrides", "search", "launcher")
SEARCH_KEYS = ("space", "enqueue")


@dataclass(frozen=True)
class SearchSweep:
    """An Optuna search read from a sweep file."""

    name: str
    root: str
    base: str
    seed: int
    space: dict[str, dict[str, Any]]
    settings: SearchSettings = field(default_factory=SearchSettings)
    overrides: tuple[str, ...] = ()
    enqueue: tuple[dict[str, Any], ...] = ()
    launcher: str = "local"
    """How trials run: local (processes of the sweep command) or slurm (worker jobs; `gemkr_lab.sweep.slurm`)."""
    slurm: dict = field(default_factory=dict)
    """The `launcher:` section's Slurm settings, checked (`gemkr_lab.sweep.slurm.SlurmOptions` fields)."""

    @property
    def objective(self) -> str:
        """The tuned metric (on validation)."""
        return self.settings.objective

    @property
    def final_seeds(self) -> tuple[int, ...]:
        """Seeds of the final test-split runs."""
        return self.settings.final_seeds or (self.seed,)

    @property
    def selected_cell(self) -> str:
        """The name of the selected configuration's final runs."""
        return f"{self.base}@selected"


def load_search_file(path: str | Path) -> SearchSweep:
    """Read and check a search sweep file; every error names the file and line."""
    path = Path(path)
    raw, node = read_yaml_file(path)
    lines = key_lines(node)
    sweep = load_search(raw, path, lines)
    if isinstance(raw, dict) and "launcher" in raw:
        launcher, slurm = launcher_section(raw["launcher"], path, node)
        sweep = dataclasses.replace(sweep, launcher=launcher, slurm=slurm)
    return sweep


def load_search(raw: dict, path: Path, lines: dict[str, int] | None = None) -> SearchSweep:
    """Check a search sweep (keys, settings, space, validation split); nothing is created."""
    lines = lines or {}

    def at(key: str) -> str:
        return f"{path}:{lines[key]}" if key in lines else str(path)

    if not isinstance(raw, dict) or not isinstance(raw.get("search"), dict):
        raise ConfigError(f"{path}: a search sweep is a mapping with a `search:` section")
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(f"{at(key)}: unknown key {key!r}; a search sweep has {', '.join(TOP_KEYS)}")
    for key in ("name", "base"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{at(key)}: `{key}:` must name the {'search' if key == 'name' else 'experiment'}")
    check_sweep_name(raw["name"], at("name"))
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"{at('seed')}: seed {seed!r} is not an integer >= 0")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list):
        raise ConfigError(f"{at('overrides')}: overrides must be a list of key=value")
    search = dict(raw["search"])
    space, enqueue = search.pop("space", None), search.pop("enqueue", None) or []
    sources = {k: at(k) for k in lines if k.startswith("search.")}
    settings = build(SearchSettings, search, where=at("search"), sources=sources, prefix="search.")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{at('search.space')}: search.space must map config keys to distributions")
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        raise ConfigError(f"{at('search.enqueue')}: search.enqueue is a list of {{key: value}} trials")
    sweep = SearchSweep(
        name=raw["name"],
        root=str(raw.get("root", f"runs/{raw['name']}")),
        base=raw["base"],
        seed=seed,
        space=space,
        settings=settings,
        overrides=tuple(str(o) for o in overrides),
        enqueue=tuple(enqueue),
    )
    try:
        config = load_experiment(sweep.base, sweep.overrides)
    except ConfigError as exc:
        raise ConfigError(f"{at('base')}: {exc}") from exc
    if not config.data.validation_size:
        raise ConfigError(
            f"{at('overrides')}: a search tunes on a validation split, and {sweep.base} holds none out; add "
            "data.validation_size=0.2 (a share of the training questions, or a count) to overrides "
            "(tuning on the test split would report a number the search has already seen)"
        )
    distributions(sweep, path, lines)
    for i, trial in enumerate(sweep.enqueue):
        unknown = set(trial) - set(sweep.space)
        if unknown:
            raise ConfigError(f"{at('search.enqueue')}: enqueued trial {i}: {sorted(unknown)} not in search.space")
        _compose(sweep, [f"{k}={json.dumps(v)}" for k, v in trial.items()], f"{at('search.enqueue')}: trial {i}")
    return sweep


def distributions(
    sweep: SearchSweep, where: Path | str, lines: dict[str, int] | None = None
) -> dict[str, "optuna.distributions.BaseDistribution"]:
    """Optuna distributions of the space; every key must be a config field whose type admits its bounds."""
    import optuna

    out = {}
    for key, spec in sweep.space.items():
        line = (lines or {}).get(f"search.space.{key}")
        here = f"{where}:{line}" if line else str(where)
        kind = (spec or {}).get("type") if isinstance(spec, dict) else None
        try:
            if kind == "float":
                dist = optuna.distributions.FloatDistribution(
                    float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
                )
                values = [dist.low, dist.high]
            elif kind == "int":
                dist = optuna.distributions.IntDistribution(
                    int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False))
                )
                values = [dist.low, dist.high]
            elif kind == "categorical":
                values = list(spec["choices"])
                if not values:
                    raise ValueError("no choices")
                dist = optuna.distributions.CategoricalDistribution(values)
            else:
                raise ValueError(f"type must be float, int or categorical, got {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{here}: search.space[{key!r}] is invalid ({exc})") from exc
        if sweep.settings.sampler == "grid" and kind != "categorical":
            raise ConfigError(f"{here}: search.sampler grid needs categorical choices; {key!r} is {kind}")
        for value in values:  # a wrong key or a bound its type refuses fails here
            _compose(sweep, [f"{key}={json.dumps(value)}"], f"{here}: search.space[{key!r}]")
        out[key] = dist
    return out


def _compose(sweep: SearchSweep, extra: list[str], where: str) -> ExperimentConfig:
    try:
        return load_experiment(sweep.base, [*sweep.overrides, *extra])
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def is_search(path: str | Path) -> bool:
    """Whether a sweep file describes a search (it has `search:`) rather than a grid."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        return False  # reported by the loader that reads it, with the file and line
    return isinstance(raw, dict) and "search" in raw
