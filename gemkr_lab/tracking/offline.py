"""Read an offline W&B run back without a server: its config, logged history and summary.

A `.wandb` file is a write-ahead log: a 7-byte header, then 32 KiB blocks of chunks, each with a 7-byte
header (CRC, length, type: full, first, middle or last), carrying serialised protobuf `Record`s. The file of
a killed run ends where its writer's buffer was last flushed, possibly mid-record: the whole records before
that are read.
"""

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> Iterator[Any]:
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if len(data) < _HEADER and b":W&B".startswith(data[:4]):
        return  # a writer killed before its first flush: created, (partly) empty
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER:  # the block's tail is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:
            pos += room
            continue
        if pos + _HEADER + length > len(data):
            return  # a killed writer's last chunk, cut short: what came before is whole
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = pb.Record()
            try:
                record.ParseFromString(pending)
            except DecodeError:
                return  # a torn write
            yield record


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """`{"config", "history", "summary"}` of an offline run folder (`.../wandb/offline-run-*`)."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")

    def key(item) -> str:
        return item.key or "/".join(item.nested_key)

    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for record in _records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            config.update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "run":
            config.update({key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in record.summary.update})
    return {"config": config, "history": history, "summary": summary}


def offline_attempts(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """The offline folders of run `run_id` under `wandb_dir`, one per attempt, oldest first."""
    return sorted(Path(wandb_dir).glob(f"offline-run-*-{run_id}"))


def last_step(run_dir: str | Path) -> int:
    """The highest history step an offline run folder holds (-1: none; a killed attempt's is often empty)."""
    try:
        history = read_offline_run(run_dir)["history"]
    except FileNotFoundError:
        return -1
    return max((int(row["_step"]) for row in history if "_step" in row), default=-1)


def read_offline_artifacts(run_dir: str | Path) -> list[dict[str, Any]]:
    """The artifacts an offline run logged: `{"type", "name", "files": {path in the artifact: staged local path}}`.

    Offline, an artifact's files wait in W&B's staging folder until `wandb sync` uploads them.
    """
    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out = []
    for record in _records(files[0]):
        if record.WhichOneof("record_type") == "artifact":
            a = record.artifact
            entries = {c.path: c.local_path for c in a.manifest.contents}
            out.append({"type": a.type, "name": a.name, "files": entries})
    return out
