"""Clue explorer: a static HTML page to look at a sweep's queries, clues and ranked passages, cell beside cell.

`write_explorer(sweep, out)` writes a folder that opens from disk (no server):

    index.html, explorer.js, explorer.css   the page (copied from `gemkr_lab/report/explorer/`)
    data.js                                 the queries, runs and passages of the gold lists (`window.GEMKR_EXPLORER`)
    runs/<i>.js                             one run (cell, seed): per query its clues, ranked ids, relevance flags
                                            and the texts of its passages, loaded when its seed is shown
    img/<n>.jpg, img/<n>-<k>.jpg            image thumbnails and object crops

Browsers refuse `fetch()` from a `file://` page, so the data are script files the page includes. The page
filters and pages through thousands of queries (only one page of them is in the document at a time).

What a query shows is read from the runs, never recomputed by a model: `<run>/records.jsonl` (clues in score
order with their tokens, KB counts and documents; the ranked ids), the prepared queries and object regions of
the run's own config, and the passages' texts from its corpus. Relevance is the benchmark's (gold passages,
or answer substrings as `score` matches them), judged per ranked passage; a clue hit when one of its
documents is relevant. Per query, "right at k" is the benchmark's R@k (a relevant passage in the top k).
"""

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gemkr_lab.config.experiment import ExperimentConfig
from gemkr_lab.io import atomic_directory
from gemkr_lab.run.cell import read_manifest
from gemkr_lab.sweep.grid import GridSweep, cell_run, current_run

FORMAT = 1
PAGE = Path(__file__).with_name("explorer")
"""The page's static files."""
MARKER = "explorer.json"
"""Written into every explorer folder: an existing folder is replaced only when it holds one."""
THUMB_PX = 320
CROP_PX = 72
PASSAGE_CHARS = 2000
"""Longer passage texts are cut for display (relevance is judged on the whole text)."""
KS = (1, 5, 10)
GOLD_SHOWN = 5
"""Gold passages shown with their text per query (the rest by id: OK-VQA's weak labels can be many)."""


@dataclass
class Run:
    """One (cell, seed) of the sweep as the explorer shows it."""

    cell: str
    seed: int
    path: Path
    config: ExperimentConfig
    records: dict[str, dict] = field(default_factory=dict)
    """qid -> the record as written (`QueryRecord.to_json`) plus `rel`: relevance of each ranked id."""
    disagreements: list[str] = field(default_factory=list)
    """Queries whose R@k from the records differs from the run's metrics.json (another corpus, or data)."""

    def hit(self, qid: str, k: int) -> bool | None:
        """The benchmark's R@k of a query (None when the run has no record of it)."""
        record = self.records.get(qid)
        return None if record is None else any(record["rel"][:k])


@dataclass
class Explorer:
    """Everything the page shows, in memory."""

    sweep: GridSweep
    queries: list[dict]
    """In the first cell's order: qid, question, caption, answers, gold ids, image_id, objects (regions)."""
    runs: list[Run]
    texts: dict[str, str]
    match: str
    """How answers are highlighted: "exact" (case-sensitive) or "lower"."""
    notes: list[str] = field(default_factory=list)
    folder: Path | None = None
    """Where `write_explorer` wrote it."""
    images: dict[str, dict] = field(default_factory=dict)
    """Image id -> its thumbnail (`src` relative to `folder`, original and thumbnail `size`s) and crops."""

    def run(self, cell: str, seed: int) -> Run | None:
        """The complete run of (cell, seed), if any."""
        return next((r for r in self.runs if r.cell == cell and r.seed == seed), None)


def collect_explorer(sweep: GridSweep) -> Explorer:
    """Read every complete run of the sweep's current configs, its queries, regions and passage texts."""
    from gemkr_lab.data.datasets import LAYOUTS
    from gemkr_lab.data.queries import DataError

    runs, notes = [], []
    for cell in sweep.cells:
        for seed in sweep.seeds:
            path = current_run(sweep, cell, seed)
            manifest = (read_manifest(path) if path is not None else None) or {}
            if manifest.get("status") != "complete" or not (path / "records.jsonl").is_file():
                notes.append(f"{cell} seed {seed}: no complete run ({manifest.get('status', 'pending')})")
                continue
            try:
                config = cell_run(sweep, cell, seed)[0]
            except DataError as exc:
                notes.append(f"{cell} seed {seed}: {exc}")
                continue
            records = _read_jsonl(path / "records.jsonl")
            runs.append(Run(cell, seed, path, config, {r["qid"]: r for r in records}))
    queries = _queries(runs)
    texts = _texts(runs, queries)
    for run in runs:
        _judge(run, queries, texts)
        if run.disagreements:
            notes.append(
                f"{run.cell} seed {run.seed}: R@k of {len(run.disagreements)} queries differs from its metrics.json "
                f"(e.g. {run.disagreements[0]}); its corpus or prepared data changed since the run"
            )
    datasets = {r.config.data.dataset for r in runs}
    match = LAYOUTS[datasets.pop()].match if len(datasets) == 1 else "exact"
    return Explorer(sweep, queries, runs, texts, match, notes)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _queries(runs: list[Run]) -> list[dict]:
    """The test queries of the runs (their prepared folders), each with the object regions of its image."""
    seen: dict[str, dict] = {}
    for prepared in dict.fromkeys(Path(r.config.prepared) for r in runs):
        for q in _read_jsonl(prepared / "queries_test.jsonl"):
            if q["qid"] not in seen:
                regions = prepared / "regions" / f"{q['image_id']}.json"
                objects = json.loads(regions.read_text(encoding="utf-8")) if regions.is_file() else None
                seen[q["qid"]] = {
                    "qid": q["qid"],
                    "question": q["question"],
                    "caption": q.get("caption", ""),
                    "answers": list(q.get("answers", [])),
                    "gold": list(q.get("positives", [])),
                    "image_id": q["image_id"],
                    "objects": objects,
                    "regions": str(prepared / "regions"),
                }
    recorded = {qid for r in runs for qid in r.records}
    return [q for q in seen.values() if q["qid"] in recorded]


def _texts(runs: list[Run], queries: list[dict]) -> dict[str, str]:
    """Texts of every ranked and gold passage, one pass over each distinct corpus."""
    from gemkr_lab.data.datasets import Dataset
    from gemkr_lab.metrics.relevance import texts_for

    wanted = {d for q in queries for d in q["gold"][:GOLD_SHOWN]}
    corpora: dict[tuple[Path, bool], set[str]] = {}
    for r in runs:
        corpus = Dataset(r.config.data.dataset, r.config.data_root).corpus
        key = (corpus, r.config.data.carriage_returns_to_spaces)
        corpora.setdefault(key, set(wanted)).update(d for rec in r.records.values() for d in rec["ranked_ids"])
    texts: dict[str, str] = {}
    for (corpus, crs), ids in corpora.items():
        texts.update(texts_for(corpus, ids - set(texts), carriage_returns_to_spaces=crs))
    return texts


def _judge(run: Run, queries: list[dict], texts: dict[str, str]) -> None:
    """Relevance flags of each ranked id, as the run's benchmark defines it; checked against metrics.json."""
    from gemkr_lab.data.relevance import benchmark_relevance

    gold, answers = {q["qid"]: q["gold"] for q in queries}, {q["qid"]: q["answers"] for q in queries}
    relevance = benchmark_relevance(run.config.data.dataset, gold, answers, texts)
    metrics_file = run.path / "metrics.json"
    per_query = json.loads(metrics_file.read_text(encoding="utf-8"))["per_query"] if metrics_file.is_file() else {}
    for qid, record in run.records.items():
        record["rel"] = relevance.judge(qid, record["ranked_ids"])
        expected = per_query.get(qid, {})
        if any(f"R@{k}" in expected and expected[f"R@{k}"] != float(run.hit(qid, k)) for k in KS):
            run.disagreements.append(qid)


def clue_hits(record: dict) -> list[bool]:
    """Whether each clue of a record retrieved a relevant document (positional ids mapped through the ranking)."""
    ids = dict(zip(record["ranked_docs"], record["ranked_ids"], strict=True))
    rel = dict(zip(record["ranked_ids"], record["rel"], strict=True))
    return [any(rel.get(ids.get(d), False) for d in clue["docs"]) for clue in record["clues"]]


def repeated_clues(record: dict) -> list[bool]:
    """Whether each clue repeats the tokens of an earlier clue of the query (beam groups that ended alike)."""
    seen: set[tuple[int, ...]] = set()
    out = []
    for clue in record["clues"]:
        out.append(tuple(clue["tokens"]) in seen)
        seen.add(tuple(clue["tokens"]))
    return out


def right_wrong(explorer: Explorer, a: str, b: str, seed: int, k: int = 5) -> list[str]:
    """Queries cell `a` gets right at k (R@k) and cell `b` gets wrong, in the explorer's order."""
    run_a, run_b = explorer.run(a, seed), explorer.run(b, seed)
    if run_a is None or run_b is None:
        return []
    return [q["qid"] for q in explorer.queries if run_a.hit(q["qid"], k) and run_b.hit(q["qid"], k) is False]


def summary(explorer: Explorer, run: Run, k: int = 5, qids: list[str] | None = None) -> dict:
    """What the page's summary panel shows for one run over some queries (default: all).

    clue_lengths: clue length in tokens -> clues; unique_share: clues found exactly once in the KB, over
    clues; duplicate_share: clues that repeat an earlier clue of the same query (beam groups that ended on
    the same tokens), over clues; hits_by_objects: object count -> [queries right at k, queries].
    """
    objects = {q["qid"]: len(q["objects"] or ()) for q in explorer.queries}
    qids = [q["qid"] for q in explorer.queries] if qids is None else qids
    lengths: Counter = Counter()
    n_clues = unique = duplicates = 0
    by_objects: dict[int, list[int]] = {}
    for qid in qids:
        record = run.records.get(qid)
        if record is None:
            continue
        for clue, repeated in zip(record["clues"], repeated_clues(record), strict=True):
            n_clues += 1
            lengths[len(clue["tokens"])] += 1
            unique += clue["count"] == 1
            duplicates += repeated
        cell = by_objects.setdefault(objects.get(qid, 0), [0, 0])
        cell[0] += bool(run.hit(qid, k))
        cell[1] += 1
    return {
        "queries": sum(v[1] for v in by_objects.values()),
        "clues": n_clues,
        "clue_lengths": dict(sorted(lengths.items())),
        "unique_share": unique / n_clues if n_clues else 0.0,
        "duplicate_share": duplicates / n_clues if n_clues else 0.0,
        "hits_by_objects": dict(sorted(by_objects.items())),
        f"R@{k}": sum(v[0] for v in by_objects.values()) / max(sum(v[1] for v in by_objects.values()), 1),
    }


def sees(config: ExperimentConfig) -> str:
    """What the model of a run was given at test time, in words."""
    if not config.model.use_image:
        return "text only"
    if config.data.zero_region_features_at_test:
        return "image; object regions zeroed at test"
    if config.model.use_object_prefix or config.model.use_object_features:
        return "image and object crops"
    return "image, no objects"


def write_explorer(sweep: GridSweep, out: str | Path, explorer: Explorer | None = None) -> Explorer:
    """Write the explorer folder `out` (replaced whole, atomically; refused over a folder that is not one)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise FileExistsError(f"{out}: exists and is not a clue explorer folder; choose another --out")
    explorer = explorer or collect_explorer(sweep)
    if not explorer.runs:
        first = f" ({explorer.notes[0]})" if explorer.notes else ""
        raise ValueError(f"sweep {sweep.name}: no complete run to explore{first}; run `gemkr-lab sweep` first")
    with atomic_directory(out, overwrite=True) as stage:
        for name in ("index.html", "explorer.js", "explorer.css"):
            shutil.copyfile(PAGE / name, stage / name)
        (stage / "img").mkdir()
        (stage / "runs").mkdir()
        explorer.images = images = _write_images(explorer, stage / "img")
        runs = []
        for i, run in enumerate(explorer.runs):
            _write_script(stage / "runs" / f"{i}.js", f"gemkrExplorerRun({i}, ", _run_payload(explorer, run), ");")
            runs.append({"cell": run.cell, "seed": run.seed, "file": f"runs/{i}.js", "sees": sees(run.config)})
        gold = {d for q in explorer.queries for d in q["gold"][:GOLD_SHOWN]}
        payload = {
            "format": FORMAT,
            "sweep": sweep.name,
            "cells": list(sweep.cells),
            "seeds": list(sweep.seeds),
            "reference": sweep.reference or sweep.cells[0],
            "ks": list(KS),
            "match": explorer.match,
            "notes": explorer.notes,
            "runs": runs,
            "queries": [_query_payload(q, images.get(q["image_id"])) for q in explorer.queries],
            "passages": {d: _cut(explorer.texts[d]) for d in sorted(gold) if d in explorer.texts},
        }
        _write_script(stage / "data.js", "window.GEMKR_EXPLORER = ", payload, ";")
        (stage / MARKER).write_text(
            json.dumps({"format": FORMAT, "sweep": sweep.name, "queries": len(explorer.queries)}) + "\n"
        )
    explorer.folder = out
    return explorer


def _cut(text: str) -> str:
    return text if len(text) <= PASSAGE_CHARS else text[:PASSAGE_CHARS] + " …"


def _write_script(path: Path, head: str, payload, tail: str) -> None:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    path.write_text(head + text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + tail + "\n")


def _query_payload(q: dict, image: dict | None) -> dict:
    keep = ("qid", "question", "caption", "answers", "gold")
    objects = [{"box": o["box"], "label": o["label"], "score": o["score"]} for o in q["objects"] or ()]
    return {key: q[key] for key in keep} | {"image": image, "objects": objects, "n_objects": len(objects)}


def _run_payload(explorer: Explorer, run: Run) -> dict:
    """One run for the page: per query its clues, ranked ids and relevance flags; the ranked passages' texts.

    A clue is [text, tokens, score, KB count, ids, hit, ended with EOS, repeats an earlier clue].
    """
    queries, used = {}, set()
    for qid, record in run.records.items():
        ids = dict(zip(record["ranked_docs"], record["ranked_ids"], strict=True))
        dups = repeated_clues(record)
        clues = [
            [c["text"], len(c["tokens"]), round(c["score"], 4), c["count"], [ids[d] for d in c["docs"] if d in ids]]
            for c in record["clues"]
        ]
        for clue, hit, dup, c in zip(clues, clue_hits(record), dups, record["clues"], strict=True):
            clue += [int(hit), int(c["ended_with_eos"]), int(dup)]
        queries[qid] = {"c": clues, "r": record["ranked_ids"], "h": [int(x) for x in record["rel"]]}
        used.update(record["ranked_ids"])
    texts = {d: _cut(explorer.texts[d]) for d in sorted(used) if d in explorer.texts}
    return {"cell": run.cell, "seed": run.seed, "queries": queries, "passages": texts}


def _write_images(explorer: Explorer, folder: Path) -> dict[str, dict]:
    """Thumbnails of each query image and its object crops; image id -> {src, size, crops} (missing: none)."""
    from PIL import Image

    from gemkr_lab.data.datasets import Dataset
    from gemkr_lab.data.queries import DataError

    store = None
    config = explorer.runs[0].config
    try:
        store = Dataset(config.data.dataset, config.data_root).images()
    except DataError as exc:
        explorer.notes.append(f"images not shown: {exc}")
    out: dict[str, dict] = {}
    for n, q in enumerate(dict((q["image_id"], q) for q in explorer.queries).values()):
        entry: dict = {"src": None, "size": None, "thumb_size": None, "crops": []}
        if store is not None:
            try:
                image = store.load(q["image_id"])
            except DataError:
                image = None
            if image is not None:
                entry["size"] = list(image.size)
                image.thumbnail((THUMB_PX, THUMB_PX))
                image.save(folder / f"{n}.jpg", quality=85)
                entry["thumb_size"] = list(image.size)
                entry["src"] = f"img/{n}.jpg"
        for k in range(len(q["objects"] or ())):
            crop = Path(q["regions"]) / q["image_id"] / f"{k}.png"
            if crop.is_file():
                with Image.open(crop) as img:
                    small = img.convert("RGB")
                    small.thumbnail((CROP_PX, CROP_PX))
                    small.save(folder / f"{n}-{k}.jpg", quality=85)
                entry["crops"].append(f"img/{n}-{k}.jpg")
        out[q["image_id"]] = entry
    return out


def query_table(explorer: Explorer, k: int = 5) -> tuple[list[str], list[list]]:
    """The explorer's per-query table for W&B: one row per (seed, query), three columns per cell.

    The image column is `{"image": path, "boxes": [{"box", "label"}]}` (the thumbnail written by
    `write_explorer`, boxes in its pixels), or None.
    """
    columns = ["seed", "qid", "image", "question", "caption", "answers", "gold"]
    for cell in explorer.sweep.cells:
        columns += [f"{cell} R@{k}", f"{cell} clues", f"{cell} ranked"]
    rows = []
    images = {q["qid"]: _thumbnail(explorer, q) for q in explorer.queries}
    for seed in explorer.sweep.seeds:
        runs = [explorer.run(cell, seed) for cell in explorer.sweep.cells]
        if not any(runs):
            continue
        for q in explorer.queries:
            row = [seed, q["qid"], images[q["qid"]], q["question"], q["caption"]]
            row += [" | ".join(q["answers"]), " ".join(q["gold"])]
            for run in runs:
                record = run.records.get(q["qid"]) if run else None
                if record is None:
                    row += [None, "", ""]
                    continue
                clues = "\n".join(
                    f"{'✓' if h else '✗'} {c['text'].strip()!r} (count {c['count']})"
                    for c, h in zip(record["clues"], clue_hits(record), strict=True)
                )
                ranked = " ".join(
                    f"{d}{'*' if r else ''}" for d, r in zip(record["ranked_ids"], record["rel"], strict=True)
                )
                row += [int(run.hit(q["qid"], k)), clues, ranked]
            rows.append(row)
    return columns, rows


def _thumbnail(explorer: Explorer, q: dict) -> dict | None:
    entry = explorer.images.get(q["image_id"]) or {}
    if explorer.folder is None or not entry.get("src"):
        return None
    scale = entry["thumb_size"][0] / entry["size"][0]
    boxes = [{"box": [round(v * scale) for v in o["box"]], "label": o["label"]} for o in q["objects"] or ()]
    return {"image": str(explorer.folder / entry["src"]), "boxes": boxes}


def log_explorer(explorer: Explorer, enabled: bool | None = None) -> Path | None:
    """Log the per-query table with images (and the summary numbers) to a W&B run under the explorer folder.

    `enabled` None follows the tracking settings of the sweep's first run (`tracking.wandb`, `tracking.mode`;
    offline by default). Returns the W&B run's folder, or None when not logged.
    """
    tracking = explorer.runs[0].config.tracking
    if enabled is None:
        enabled = tracking.wandb and tracking.mode != "disabled"
    if not enabled or explorer.folder is None:
        return None
    from gemkr_lab.tracking.wandb_run import log_query_table

    numbers = {
        f"{run.cell}/seed-{run.seed}/{key}": value
        for run in explorer.runs
        for key, value in summary(explorer, run).items()
        if isinstance(value, int | float)
    }
    return log_query_table(
        explorer.folder,
        "explore/queries",
        *query_table(explorer),
        project=tracking.project,
        group=explorer.sweep.name,
        name=f"{explorer.sweep.name}-explore",
        mode="offline" if tracking.mode == "disabled" else tracking.mode,
        summary=numbers,
    )
