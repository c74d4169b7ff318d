"""The offline W&B reader on run files written here, record by record, without starting W&B (the fast tests of
the tracking package; the ones that run W&B itself are in test_tracking.py)."""

import json
import struct

import pytest
from wandb.proto import wandb_internal_pb2 as pb

from gemkr_lab.tracking.offline import last_step, offline_attempts, read_offline_run
from gemkr_lab.tracking.wandb_run import new_run_id

BLOCK, HEADER = 32 * 1024, 7


def _history(step: int, loss: float) -> bytes:
    record = pb.Record()
    for key, value in (("_step", step), ("train/loss", loss)):
        item = record.history.item.add()
        item.key, item.value_json = key, json.dumps(value)
    return record.SerializeToString()


def _config(**values) -> bytes:
    record = pb.Record()
    for key, value in values.items():
        item = record.config.update.add()
        item.key, item.value_json = key, json.dumps(value)
    return record.SerializeToString()


def _write_log(path, records: list[bytes]) -> None:
    """The write-ahead log W&B writes: a header, then 32 KiB blocks of chunks (full, or first/middle/last)."""
    out = bytearray(b":W&B\x00\x00\x01")
    for data in records:
        first = True
        while True:
            room = BLOCK - len(out) % BLOCK
            if room < HEADER:
                out += b"\x00" * room
                continue
            piece, data = data[: room - HEADER], data[room - HEADER :]
            kind = (1 if not data else 2) if first else (4 if not data else 3)
            out += struct.pack("<IHB", 0, len(piece), kind) + piece
            first = False
            if not data:
                break
    path.write_bytes(bytes(out))


@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "wandb" / "offline-run-20260101_000000-abcd1234"
    folder.mkdir(parents=True)
    big = _config(note="x" * 40_000)  # spans blocks: first, middle, last chunks
    records = [_config(lr=0.001, seed=0), big, *(_history(s, 1.0 / s) for s in range(1, 301))]
    _write_log(folder / "run-abcd1234.wandb", records)
    return folder


def test_config_and_history_are_read_back(run_dir):
    run = read_offline_run(run_dir)
    assert run["config"]["lr"] == 0.001 and run["config"]["seed"] == 0 and len(run["config"]["note"]) == 40_000
    assert [row["_step"] for row in run["history"]] == list(range(1, 301))
    assert run["history"][1]["train/loss"] == 0.5
    assert last_step(run_dir) == 300


def test_a_file_cut_anywhere_reads_up_to_its_last_whole_record(run_dir):
    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    whole = read_offline_run(run_dir)["history"]
    for cut in [0, 3, 7, 100, *range(1000, len(data), 4099)]:
        path.write_bytes(data[:cut])
        history = read_offline_run(run_dir)["history"]
        assert history == whole[: len(history)], cut


def test_other_files_and_folders_are_refused_or_empty(tmp_path, run_dir):
    (path,) = run_dir.glob("run-*.wandb")
    path.write_bytes(b"not a run file at all")
    with pytest.raises(ValueError, match="not a W&B run file"):
        read_offline_run(run_dir)
    with pytest.raises(FileNotFoundError, match="no run-"):
        read_offline_run(tmp_path)
    assert last_step(tmp_path) == -1


def test_attempts_are_found_oldest_first_and_run_ids_are_fresh(tmp_path):
    for stamp in ("20260101_000002", "20260101_000001", "20260101_000003"):
        (tmp_path / f"offline-run-{stamp}-abcd1234").mkdir()
    (tmp_path / "offline-run-20260101_000001-other000").mkdir()
    found = [p.name.split("-")[2] for p in offline_attempts(tmp_path, "abcd1234")]
    assert found == ["20260101_000001", "20260101_000002", "20260101_000003"]
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 8 and i.isalnum() for i in ids)
