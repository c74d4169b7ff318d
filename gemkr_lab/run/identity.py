"""A run's identity and where it lives: fingerprints, run directories, manifests, the prepared data it needs.

A run is its resolved config. Run directories are `<root>/<cell>/seed-<s>/<fingerprint>/`, where the
fingerprint covers everything that changes the result: the resolved experiment config (not where files are,
not tracking) and the prepared data's stamp (its prepare-time settings, tokenizer and input files). The same
cell and seed with another config is another run, never the old metrics. Light: no torch, numpy or Lightning,
so sweeps, reports and the CLI's refusals can use it.
"""

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from gemkr_lab.config.checks import test_time_defaults
from gemkr_lab.config.experiment import EXPERIMENTS_DIR, ConfigError, ExperimentConfig, to_dict

MANIFEST = "manifest.json"


RUN_LOCK = "run.lock"
"""Held (an OS lock, `gemkr_lab.io.lock`) by the one process training the run, for the whole of `run_cell`."""


NOT_IDENTITY = ("name", "data_root", "prepared", "tokenizer", "tracking")
"""Fields that say where things are or how they are shown, not what is computed: left out of a run's identity
(the prepared data's content is in it through its stamp)."""


def seed_dir(root: str | Path, cell: str, seed: int) -> Path:
    """Where a cell's runs for one seed live (one subfolder per resolved config)."""
    return Path(root) / cell.replace("/", "__") / f"seed-{seed}"


def with_seed(config: ExperimentConfig, seed: int) -> ExperimentConfig:
    """The config of one seed of a cell."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))


def config_fingerprint(
    config: ExperimentConfig, stamp: dict[str, Any], leave_out: tuple[str, ...], as_default: dict | None = None
) -> str:
    """A short hash of the config but `leave_out` (and `as_default` sub-fields at their defaults), with the stamp."""
    identity = {k: v for k, v in to_dict(config).items() if k not in leave_out}
    # dotted sub-fields at their defaults: a cell differing from another only in them shares its training
    for key, default in (as_default or {}).items():
        section, name = key.rsplit(".", 1)
        identity[section] = dict(identity[section], **{name: default})
    payload = json.dumps({"config": identity, "prepared": stamp["fingerprint"]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_fingerprint(config: ExperimentConfig) -> str:
    """What identifies a run's result: the resolved config and the prepared data's stamp (checked first)."""
    return config_fingerprint(config, check_prepared(config), NOT_IDENTITY)


NOT_TRAINING = (*NOT_IDENTITY, "decoding", "split")
"""Fields that change what a trained model is asked, not the model: decoding and the split it decodes."""


AT_TEST_TIME = test_time_defaults(ExperimentConfig)
"""Sub-fields marked TEST_TIME (e.g. data.zero_region_features_at_test): counted at their defaults in training."""


def training_fingerprint(config: ExperimentConfig, stamp: dict[str, Any]) -> str:
    """What identifies a run's trained model: the resolved config but decoding, split and test-time fields.

    Cells that differ only in decoding (beam size, search, constraint, clue-to-document policy, 8-bit, ...), in
    the split they decode (a search trial on validation, the selected configuration on test) or in test-time
    inputs (zeroed region features at test) share it, so one training serves them all (`_trained_elsewhere`).
    """
    return config_fingerprint(config, stamp, NOT_TRAINING, AT_TEST_TIME)


def run_dir(root: str | Path, config: ExperimentConfig) -> Path:
    """The run directory of this exact config (its seed is `config.train.seed`)."""
    return seed_dir(root, config.name, config.train.seed) / run_fingerprint(config)


RUN_FORMAT = 1
"""The format of a run directory's files (manifest.json, metrics.json, records.jsonl, intermediate.json): written
as `format` into the manifest and the metrics, checked wherever they are read back."""
METRICS_FILE = "metrics.json"


class RunFormatError(ConfigError):
    """A run file written in a format this version of gemkr_lab does not read."""


def check_run_format(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """`data` read from `path`, refused when its format is not RUN_FORMAT (files from before the field: format 1)."""
    found = data.get("format", 1)
    if found != RUN_FORMAT:
        raise RunFormatError(
            f"{path}: a run file of format {found!r}; this gemkr_lab reads format {RUN_FORMAT}. Read it with the "
            "gemkr_lab that wrote it (its manifest's git commit), or run the cell again under another root"
        )
    return data


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RunFormatError(f"{path}: not valid JSON ({exc}); the run's files are damaged: run it again") from None


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The run's manifest, or None if it has not started; a damaged or unknown-format one is refused by name."""
    path = Path(directory) / MANIFEST
    return check_run_format(_read_json(path), path) if path.is_file() else None


def read_metrics(directory: Path) -> dict[str, Any] | None:
    """The run's metrics.json ({split, means, per_query, ...}), or None if it has none yet."""
    path = Path(directory) / METRICS_FILE
    return check_run_format(_read_json(path), path) if path.is_file() else None


def check_prepared(config: ExperimentConfig, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The stamp of the config's prepared data; refuses data that is missing or was prepared otherwise."""
    from gemkr_lab.data.prepare import read_stamp, stamp_differences
    from gemkr_lab.data.queries import DataError

    fix = prepare_command(config, overrides)
    stamp = read_stamp(config.prepared)
    if stamp is None:
        raise DataError(f"{config.prepared}: not prepared for {config.name}; run: {fix}")
    diffs = stamp_differences(stamp, config.data)
    if diffs:
        listed = "; ".join(f"data.{k}: prepared {a!r}, {config.name} wants {b!r}" for k, a, b in diffs)
        raise DataError(
            f"{config.prepared}: prepared with other settings than {config.name} ({listed}); "
            f"prepare matching data into another folder: {prepare_command(config, overrides, new_folder=True)}"
        )
    if config.split == "validation" and not (Path(config.prepared) / split_file("validation")).is_file():
        raise DataError(
            f"{config.prepared}: no validation split to decode (split=validation); hold one out of the training "
            "questions: set data.validation_size (e.g. 0.2) and prepare: "
            f"{prepare_command(config, [*overrides, 'data.validation_size=0.2'], new_folder=True)}"
        )
    return stamp


def split_file(split: str) -> str:
    """The prepared queries file of an evaluation split."""
    return f"queries_{split}.jsonl"


def prepare_command(
    config: ExperimentConfig,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    new_folder: bool = False,
    leave_out: tuple[str, ...] = (),
) -> str:
    """The `gemkr-lab prepare` command that makes the data this experiment needs.

    Only the overrides `prepare` reads are repeated (the data's prepare-time fields, where data, tokenizer and LLM
    come from, where the data goes), never training or decoding ones; `leave_out` drops keys the advice must not
    repeat (a wrong tokenizer); `new_folder` sends the data to `prepared=NEW_FOLDER` instead of the config's.
    """
    from gemkr_lab.config.checks import prepare_time_fields
    from gemkr_lab.config.data import DataConfig

    read = {f"data.{f}" for f in prepare_time_fields(DataConfig)} | {"data_root", "tokenizer", "model.llm", "prepared"}
    drop = {*leave_out, *(("prepared",) if new_folder else ())}
    keys = {}
    for o in overrides:  # the last of repeated keys wins, as when overrides are applied
        key = o.split("=", 1)[0].strip()
        if key in read and key not in drop:
            keys.pop(key, None)
            keys[key] = o.strip()
    sets = [*keys.values(), *(["prepared=NEW_FOLDER"] if new_folder else [])]
    return " ".join(["gemkr-lab prepare --experiment", config.name, *(f"--set {o}" for o in sets)])


def tokenizer_dir(config: ExperimentConfig) -> Path:
    """The LLM's tokenizer directory: `tokenizer`, else the LLM checkpoint's own, else DATA_ROOT/tokenizer.

    An LLM and its tokenizer are tied: a local checkpoint directory brings its tokenizer; the random "tiny-llama"
    has none and uses the prepared world's.
    """
    if config.tokenizer:
        return Path(config.tokenizer)
    if config.model.llm != "tiny-llama":
        return Path(config.model.llm)
    return Path(config.data_root) / "tokenizer"


def prepared_tokenizer(config: ExperimentConfig) -> str:
    """Where the prepared data's tokenizer came from (the index records it), for messages."""
    try:
        meta = json.loads((Path(config.prepared) / "index" / "meta.json").read_text(encoding="utf-8"))
        return str(meta.get("extra", {}).get("tokenizer_path") or "a tokenizer not recorded")
    except (OSError, ValueError):
        return "a tokenizer not recorded"


LAST_CHECKPOINT = "last.ckpt"


def find_run(target: str, seed: int, root: str | Path) -> Path:
    """A trained run: a run directory given as such, or the one run of cell `target` and `seed` under `root`."""
    path = Path(target)
    if (path / "config.yaml").is_file():
        return path
    if path.is_dir():  # a folder that is not a run (a cell's or seed's folder, a sweep root)
        below = sorted(p.parent for p in path.glob("**/config.yaml"))[:3]
        raise FileNotFoundError(
            f"{path}: not a run directory (no config.yaml); "
            + (f"runs below it: {', '.join(map(str, below))}" if below else "give <root>/<cell>/seed-<s>/<fingerprint>")
        )
    runs = sorted(p for p in seed_dir(root, target, seed).glob("*/config.yaml"))
    if not runs:
        if not (EXPERIMENTS_DIR / f"{target}.yaml").is_file() and not seed_dir(root, target, 0).parent.is_dir():
            raise FileNotFoundError(  # a mistyped path, not a cell: training a "preset" of that name is no advice
                f"{target}: neither a run directory nor a cell with runs under {root}; give a run directory "
                "(<root>/<cell>/seed-<s>/<fingerprint>) or a cell such as tiny-cpu/full with --seed and --root"
            )
        raise FileNotFoundError(
            f"{seed_dir(root, target, seed)}: no trained run of {target} seed {seed}; "
            f"run gemkr-lab train {target} --seed {seed} --root {root}"
        )
    if len(runs) > 1:
        listed = ", ".join(str(p.parent) for p in runs)
        raise ConfigError(
            f"{target} seed {seed} has {len(runs)} runs with different configs ({listed}); pass one run directory"
        )
    return runs[0].parent
