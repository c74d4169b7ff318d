"""Prepared data per variant: a sweep prepares each distinct set of prepare-time settings once.

A cell whose data settings (clue length, detector, ...) differ from those its `prepared` folder was made
with cannot use that folder. Before launching, the sweep points such a cell at a folder of its own,
`<sweep root>/prepared/<variant>/` (the variant is a fingerprint of the settings, the data root and the
tokenizer), prepares it once, and passes `prepared=<folder>` to the cell's runs. A cell whose own folder
matches, or does not exist yet (it is prepared there), keeps it. The same rule, applied without preparing,
tells reports where each cell's runs are.
"""

import fcntl
import hashlib
import json
from functools import cache
from pathlib import Path

from gemkr_lab.config.experiment import ExperimentConfig
from gemkr_lab.data.prepare import Preparer, prepare_settings, read_stamp, stamp_differences
from gemkr_lab.run.cell import tokenizer_dir


def prepared_overrides(config: ExperimentConfig, root: str | Path, prepare: bool = True) -> list[str]:
    """Overrides that point `config` at prepared data matching its settings (prepared first when `prepare`)."""
    own = Path(config.prepared)
    if _matches(config, own):
        return []
    if read_stamp(own) is None and not _has_files(own):
        if prepare:
            _prepare(config, own)
        return []
    variant = Path(root) / "prepared" / variant_key(config)
    if prepare and not _matches(config, variant):
        _prepare(config, variant)
    return [f"prepared={variant}"]


def variant_key(config: ExperimentConfig) -> str:
    """A short fingerprint of what the prepared data depends on."""
    payload = {
        "settings": prepare_settings(config.data),
        "data_root": str(Path(config.data_root).resolve()),
        "tokenizer": _tokenizer_fingerprint(str(tokenizer_dir(config).resolve())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def _matches(config: ExperimentConfig, folder: Path) -> bool:
    stamp = read_stamp(folder)
    return (
        stamp is not None
        and not stamp_differences(stamp, config.data)
        and stamp.get("tokenizer_fingerprint") == _tokenizer_fingerprint(str(tokenizer_dir(config).resolve()))
    )


def _prepare(config: ExperimentConfig, folder: Path) -> None:
    """Prepare `folder` for `config`, one process at a time (others wait, then find it made)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _matches(config, folder):
            Preparer(config.data, config.data_root, folder, tokenizer=tokenizer_dir(config), progress=False).run()


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


@cache
def _tokenizer_fingerprint(directory: str) -> str | None:
    from gemkr_lab.kb.tokenize import load_tokenizer, tokenizer_fingerprint

    if not Path(directory).is_dir():
        return None
    return tokenizer_fingerprint(load_tokenizer(directory))
