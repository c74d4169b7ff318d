"""`gemkr-lab prepare`: index the KB, build clue targets, normalise queries, detect and cache regions.

Idempotent: each step records a fingerprint of its inputs (file contents, tokenizer, knobs) in
`<out>/stamps/<step>.json`, written after its outputs; a re-run skips a step whose fingerprint is unchanged
and whose outputs are there, and `force=True` redoes every step. Region detection also resumes per image.

When every step is done, `<out>/prepare.json` stamps the folder with the prepare-time settings it was made
with (the PREPARE_TIME fields of DataConfig), the tokenizer's fingerprint and one fingerprint of all steps.
Runs compare that stamp with their own settings (`stamp_differences`) and key their results by it.
"""

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gemkr_lab.config.checks import prepare_time_fields
from gemkr_lab.config.data import DataConfig
from gemkr_lab.data.datasets import Dataset
from gemkr_lab.data.queries import DataError, Query, ReadReport
from gemkr_lab.data.regions import (
    CACHE_INPUTS,
    YoloDetector,
    check_detector_packages,
    ground_truth_regions,
    missing_regions,
    save_regions,
)
from gemkr_lab.data.validation import Split, hold_out
from gemkr_lab.io import clean_stale, read_json, write_json, write_jsonl
from gemkr_lab.kb.from_corpus import build_index_from_corpus
from gemkr_lab.kb.tokenize import load_tokenizer, tokenizer_fingerprint
from gemkr_lab.metrics.relevance import texts_for
from gemkr_lab.progress import tqdm


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes (of every file, for a folder)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(16 << 20):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def content_fingerprint(path: Path) -> str:
    """sha256 of one file's bytes alone: a copied or renamed file keeps it (e.g. YOLO weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


STAMP = "prepare.json"
DAMAGED = "the prepared folder is damaged; prepare it again with `gemkr-lab prepare ... --force`"
"""The fix named when a prepared file is not the JSON `prepare` wrote (deterministic: a sweep does not retry it)."""


def prepare_settings(config: DataConfig) -> dict[str, Any]:
    """The prepare-time settings of a data config (the fields marked PREPARE_TIME)."""
    return {name: getattr(config, name) for name in prepare_time_fields(DataConfig)}


def read_stamp(prepared: str | Path) -> dict[str, Any] | None:
    """The folder's `prepare.json` stamp, or None when `prepare` has not finished there."""
    path = Path(prepared) / STAMP
    return read_json(path, fix=DAMAGED) if path.is_file() else None


def stamp_differences(stamp: dict[str, Any], config: DataConfig) -> list[tuple[str, Any, Any]]:
    """(field, prepared value, wanted value) for every prepare-time setting where the two differ."""
    wanted = prepare_settings(config)
    made = stamp.get("settings", {})
    # a folder stamped before a setting existed was made as that setting's default does
    made = {k: made.get(k, _DEFAULTS[k]) for k in wanted}
    return [(k, made[k], v) for k, v in wanted.items() if made[k] != v]


_DEFAULTS = prepare_settings(DataConfig())


class Preparer:
    """Runs the preparation steps of one dataset into one output folder."""

    def __init__(
        self,
        config: DataConfig,
        data_root: str | Path,
        out: str | Path,
        tokenizer: str | Path | None = None,
        force: bool = False,
        progress: bool | None = None,
    ) -> None:
        self.config = config
        self.dataset = Dataset(config.dataset, data_root, test_queries=config.gs112k_test_queries)
        self.out = Path(out)
        tok_dir = Path(tokenizer) if tokenizer else self.dataset.root / "tokenizer"
        if not tok_dir.is_dir():
            raise DataError(f"{tok_dir}: no tokenizer; pass --tokenizer with the LLM's tokenizer directory")
        self.tokenizer_dir = tok_dir
        if config.detector == "yolo":  # bad detector input fails here, before any work
            if not config.yolo_weights:
                raise DataError("detector 'yolo' needs yolo_weights (a local weights file; nothing is downloaded)")
            if not Path(config.yolo_weights).is_file():
                raise DataError(f"{config.yolo_weights}: no such YOLO weights file (give a local .pt or .onnx)")
            check_detector_packages(config.yolo_weights)  # e.g. onnxruntime for .onnx, before any step runs
        self.tokenizer = load_tokenizer(tok_dir)
        self.backend = config.index_backend
        self.force = force
        self.progress = progress
        self.summary: list[dict[str, str]] = []
        self.fingerprints: dict[str, str] = {}
        self._held_out: Split | None = None

    def training_split(self) -> Split:
        """The training questions, less the validation split held out of them (drawn once)."""
        if self._held_out is None:
            self._held_out = hold_out(
                self.dataset.queries("train"), self.config.validation_size, self.config.validation_seed
            )
        return self._held_out

    def run(self) -> list[dict[str, str]]:
        """Every step in order; returns what was made or skipped, and why.

        A failure keeps the steps already made (a re-run resumes after them); a folder this run created and
        left without a file (e.g. a full disk in the first step) is removed again.
        """
        created = not self.out.exists()
        try:
            return self._run()
        except BaseException:
            if created and self.out.is_dir() and not any(p.is_file() for p in self.out.rglob("*")):
                shutil.rmtree(self.out, ignore_errors=True)
            raise

    def _run(self) -> list[dict[str, str]]:
        self.out.mkdir(parents=True, exist_ok=True)
        # leftovers of a prepare that was killed (SIGTERM, SIGKILL): temporary files, staging folders
        for folder in (self.out, self.out / "stamps", self.out / "regions"):
            clean_stale(folder)
        (self.out / STAMP).unlink(missing_ok=True)  # not a prepared folder until every step is done again
        tok_fp = tokenizer_fingerprint(self.tokenizer)
        corpus_fp = file_fingerprint(self.dataset.corpus)
        crs = self.config.carriage_returns_to_spaces
        # the normalisation is an input: indexes made before it was a switch turned \r into spaces too
        index_inputs = {"corpus": corpus_fp, "tokenizer": tok_fp, "backend": self.backend, "texts_crs": crs}
        self._step("index", index_inputs, self._index)
        splits = [s for s in ("train", "test") if self.dataset.has_split(s)]
        query_fps = {s: file_fingerprint(self.dataset.query_file(s)) for s in splits}
        held_out = {"size": self.config.validation_size, "seed": self.config.validation_seed}
        query_inputs: dict[str, Any] = {"files": query_fps, "validation": held_out}
        if self.dataset.layout.gemkr_test is not None:  # which file was chosen, and the other one it is checked with
            layout = self.dataset.layout
            both = {f: self.dataset.root / f for f in (layout.gemkr_test, layout.test)}
            query_inputs["test_source"] = self.dataset.test_source
            query_inputs["checked"] = {f: file_fingerprint(p) for f, p in both.items() if p.is_file()}
        self._step("queries", query_inputs, lambda: self._queries(splits))
        if "train" in splits:
            knobs = {
                "min": self.config.clue_min_tokens,
                "max": self.config.clue_max_tokens,
                "texts_crs": crs,
                "validation": held_out,  # its questions are not trained on
            }
            if self.config.clue_length_policy != "shortest_unique":  # the reference's steps keep their stamps
                knobs |= {"policy": self.config.clue_length_policy, "target": self.config.clue_target_tokens}
            inputs = {"corpus": corpus_fp, "tokenizer": tok_fp, "train": query_fps["train"], "knobs": knobs}
            self._step("clues", inputs, self._clues)
        else:
            self.summary.append({"step": "clues", "status": "skipped", "why": "the dataset has no train split"})
        detector = {"kind": self.config.detector, "max": self.config.max_objects}
        if self.config.detector == "yolo":
            detector |= {
                "weights": content_fingerprint(Path(self.config.yolo_weights)),  # copies and renames keep the cache
                "conf": self.config.detector_confidence,
                "iou": self.config.detector_iou,
            }
        if self.config.detector == "none":
            self.summary.append({"step": "regions", "status": "skipped", "why": "detector is 'none'"})
        else:
            self._step("regions", {"detector": detector, "queries": query_fps}, lambda: self._regions(splits))
        summary = {"dataset": self.config.dataset, "steps": self.summary}
        if "train" in splits:
            summary["validation"] = self.training_split().description
            summary["clue_targets"] = clue_targets_summary(self.out)
        if "test" in splits:
            summary["test_queries"] = self.dataset.test_source_note(self.config.gs112k_test_queries)
        write_json(self.out / "prepare_summary.json", summary)
        steps = self.fingerprints  # the steps that apply to these settings, not stale stamps of others
        settings = prepare_settings(self.config)
        identity = {"settings": settings, "tokenizer_fingerprint": tok_fp, "steps": steps}
        fingerprint = "sha256:" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        write_json(self.out / STAMP, {"format": 1, **identity, "fingerprint": fingerprint, "at": _now()})
        return self.summary

    # ---- steps -----------------------------------------------------------------------------------------

    def _step(self, name: str, inputs: dict[str, Any], action: Callable[[], str]) -> None:
        stamp = self.out / "stamps" / f"{name}.json"
        fingerprint = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        self.fingerprints[name] = fingerprint
        if not self.force and stamp.is_file():
            done = read_json(stamp, fix=DAMAGED)
            if done.get("fingerprint") == fingerprint and self._outputs_exist(name):
                self.summary.append({"step": name, "status": "skipped", "why": "inputs unchanged since " + done["at"]})
                return
            why = "inputs changed" if done.get("fingerprint") != fingerprint else "outputs missing"
        else:
            why = "forced" if self.force and stamp.is_file() else "first run"
        self.why = why
        detail = action()
        stamp.parent.mkdir(exist_ok=True)
        write_json(stamp, {"fingerprint": fingerprint, "inputs": inputs, "at": _now(), "detail": detail})
        self.summary.append({"step": name, "status": "made", "why": why, "detail": detail})

    def _outputs_exist(self, name: str) -> bool:
        expected = {
            "index": [self.out / "index" / "meta.json"],
            "queries": [self.out / "queries_test.jsonl", *self._validation_file()],
            "clues": [self.out / "instructions_train.jsonl", self.out / "clue_stats.json"],
            "regions": [self.out / "regions"],
        }[name]
        if name == "regions" and (self.out / "regions").is_dir():  # partly deleted: every image needs its file
            return not missing_regions(self.out / "regions", self._image_ids())
        return all(p.exists() for p in expected)

    def _validation_file(self) -> list[Path]:
        return [self.out / "queries_validation.jsonl"] if self.config.validation_size else []

    def _image_ids(self) -> list[str]:
        """The images of every query of the splits being prepared."""
        splits = [s for s in ("train", "test") if self.dataset.has_split(s)]
        return sorted({q.image_id for s in splits for q in self.dataset.queries(s)})

    def _index(self) -> str:
        index = build_index_from_corpus(
            self.dataset.corpus,
            self.tokenizer_dir,
            self.out / "index",
            backend=self.backend,
            carriage_returns_to_spaces=self.config.carriage_returns_to_spaces,
            overwrite=True,
            progress=self.progress,
        )
        texts = (
            "\\r turned into spaces too" if self.config.carriage_returns_to_spaces else "official texts: \\n to spaces"
        )
        return f"{index.n_docs} documents, {index.n_tokens} tokens ({self.backend}; {texts})"

    def _queries(self, splits: list[str]) -> str:
        parts = []
        (self.out / "queries_validation.jsonl").unlink(missing_ok=True)  # none unless this draw makes one
        for split in splits:
            report = ReadReport()
            queries = self.dataset.queries(split, report)
            if split == "train":
                held = self.training_split()
                queries = held.train
                if held.validation:
                    write_jsonl(self.out / "queries_validation.jsonl", (asdict(q) for q in held.validation))
                    d = held.description
                    parts.append(
                        f"validation: {d['questions']} of the {d['training_questions_before']} training questions "
                        f"held out ({d['images']} whole images, size {d['size']}, seed {d['seed']})"
                    )
            write_jsonl(self.out / f"queries_{split}.jsonl", (asdict(q) for q in queries))
            source = f" {self.dataset.test_source_note(self.config.gs112k_test_queries)}" if split == "test" else ""
            parts.append(f"{split}: {report.describe()}{source}")
            if split == "test" and self.dataset.layout.gemkr_test is not None:
                parts.append(self._check_test_queries())
        return "; ".join(parts)

    def _check_test_queries(self) -> str:
        """GS112K: GeMKR's and VRR's test queries compared when both are there (written to query_check.json)."""
        layout, path = self.dataset.layout, self.out / "query_check.json"
        check = self.dataset.check_test_queries()
        if check is None:
            path.unlink(missing_ok=True)
            absent = layout.test if self.dataset.test_source == "gemkr" else layout.gemkr_test
            return f"not checked against the other query file ({absent} absent)"
        write_json(path, {"gemkr_file": layout.gemkr_test, "vrr_file": layout.test, **check.to_json()})
        return f"{layout.gemkr_test} vs {layout.test}: {check.summary()} (details in query_check.json)"

    def _clues(self) -> str:
        # the index kernels (numba, a second to import) load here, not before the inputs have been checked
        from gemkr_lab.data.clue_targets import ClueFinder, ClueStats
        from gemkr_lab.kb import open_index

        index = open_index(self.out / "index", tokenizer_fingerprint=tokenizer_fingerprint(self.tokenizer))
        c = self.config
        finder = ClueFinder(index, self.tokenizer, c.clue_min_tokens, c.clue_max_tokens, c.clue_target_tokens)
        stats, rows, missing = ClueStats(), [], 0
        queries: list[Query] = self.training_split().train  # the validation split is never trained on
        # stream the corpus once for the texts of the relevant passages only (21M passages do not fit a dict)
        texts = texts_for(
            self.dataset.corpus,
            {p for q in queries for p in q.positives},
            carriage_returns_to_spaces=self.config.carriage_returns_to_spaces,
        )
        for q in tqdm(queries, desc="clue targets", disable=_quiet(self.progress)):
            stats.queries += 1
            found = False
            for pid in q.positives:
                try:
                    doc = index.position(pid)
                except KeyError:
                    missing += 1
                    continue
                stats.pairs += 1
                clue = finder.find(doc, texts[index.corpus_id(doc)], q.answers)
                if clue is None:
                    continue
                found = True
                stats.with_clue += 1
                stats.overlapping_answer += clue.overlaps_answer
                stats.lengths[len(clue.tokens)] += 1
                rows.append(
                    {
                        "qid": q.qid,
                        "image_id": q.image_id,
                        "question": q.question,
                        "caption": q.caption,
                        "clue_tokens": clue.tokens,
                        "clue_text": clue.text,
                        "doc_id": index.corpus_id(doc),
                        "overlaps_answer": clue.overlaps_answer,
                    }
                )
            stats.queries_without_clue += not found
        policy = {"length_policy": c.clue_length_policy, "target_tokens": c.clue_target_tokens}
        per_question = Counter(Counter(r["qid"] for r in rows).values())
        shape = {
            "rows": len(rows),
            "questions_with_rows": stats.queries - stats.queries_without_clue,
            "rows_per_question_histogram": {str(k): v for k, v in sorted(per_question.items())},
        }
        summary = policy | stats.summary() | shape | {"relevant_passages_absent_from_corpus": missing}
        write_jsonl(self.out / "instructions_train.jsonl", rows)
        write_json(self.out / "clue_stats.json", summary)
        return (
            f"{stats.with_clue}/{stats.pairs} pairs with a clue ({summary['coverage']:.1%}), "
            f"{stats.queries_without_clue} queries without one, {missing} relevant ids absent from the corpus; "
            f"{_policy_note(c)}: mean length {summary['mean_length']:.2f} tokens, "
            f"{summary['answer_overlap_share']:.1%} overlap the answer"
        )

    def _regions(self, splits: list[str]) -> str:
        cache = self.out / "regions"
        fingerprint = self.fingerprints["regions"]
        made_with = _cache_inputs(cache)
        # detections of other weights, thresholds or queries must not survive under new ones; a cache from
        # before it recorded its inputs is trusted when the step's stamp says its inputs are unchanged
        stale = made_with != fingerprint if made_with is not None else self.why == "inputs changed"
        if (self.force or stale) and cache.exists():
            shutil.rmtree(cache)
        cache.mkdir(exist_ok=True)
        write_json(cache / CACHE_INPUTS, {"fingerprint": fingerprint})  # before any detection under these inputs
        image_ids = sorted({q.image_id for s in splits for q in self.dataset.queries(s)})
        todo = missing_regions(cache, image_ids)  # resume an interrupted run, repair a partly deleted cache
        images = self.dataset.images()
        counts = []
        if self.config.detector == "ground_truth":
            boxes = self.dataset.ground_truth_boxes()
            for image_id in tqdm(todo, desc="regions", disable=_quiet(self.progress)):
                regions = ground_truth_regions(boxes, image_id, self.config.max_objects)
                save_regions(cache, image_id, images.load(image_id), regions)
                counts.append(len(regions))
        else:
            detector = YoloDetector(
                self.config.yolo_weights,
                self.config.detector_confidence,
                self.config.detector_iou,
                self.config.max_objects,
            )
            for start in tqdm(range(0, len(todo), 16), desc="regions", disable=_quiet(self.progress)):
                batch = todo[start : start + 16]
                loaded = [images.load(i) for i in batch]
                for image_id, img, regions in zip(batch, loaded, detector.detect(loaded), strict=True):
                    save_regions(cache, image_id, img, regions)
                    counts.append(len(regions))
        empty = sum(1 for c in counts if c == 0)
        return f"{len(todo)} images detected ({len(image_ids) - len(todo)} cached), {empty} without any region"


def clue_targets_summary(prepared: str | Path) -> dict[str, Any] | None:
    """What the training targets of a prepared folder are (its clue_stats.json; None when it has none).

    Policy, realized length histogram and mean, answer-overlap share, rows, questions and rows per question.
    """
    path = Path(prepared) / "clue_stats.json"
    if not path.is_file():
        return None
    stats = read_json(path, fix=DAMAGED)
    keys = (
        "length_policy",
        "target_tokens",
        "mean_length",
        "length_histogram",
        "answer_overlap_share",
        "rows",
        "questions_with_rows",
        "rows_per_question_histogram",
    )
    out = {k: stats[k] for k in keys if k in stats}
    if out.get("questions_with_rows"):
        out["rows_per_question"] = out["rows"] / out["questions_with_rows"]
    return out


def _policy_note(config: DataConfig) -> str:
    if config.clue_length_policy == "shortest_unique":
        return f"shortest unique {config.clue_min_tokens}-{config.clue_max_tokens} tokens"
    return f"closest to {config.clue_target_tokens} tokens within {config.clue_min_tokens}-{config.clue_max_tokens}"


def _cache_inputs(cache: Path) -> str | None:
    """The fingerprint a region cache's detections were made under (None: none recorded, or no cache)."""
    try:
        return json.loads((cache / CACHE_INPUTS).read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _quiet(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
