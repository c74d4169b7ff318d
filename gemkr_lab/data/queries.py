"""Benchmark query files: VRR/DPR-style retriever JSON and GeMKR's own test.json, and their cross-check.

VRR's layout serves OK-VQA, ReMuQ and the synthetic world; GeMKR's `test.json` holds the same 5,046 OK-VQA
test queries as VRR's `retriever_test.json`, in its own layout and order (`compare_queries` pairs the two and
lists where they differ). Errors name the file and record; skipped records are counted, never silent.
"""

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """A benchmark file that cannot be used as it is (file and record named, with the fix)."""


@dataclass(frozen=True)
class Query:
    """One multimodal query: an image, a question (caption separate), answers and gold passage ids."""

    qid: str
    image_id: str
    question: str
    caption: str
    answers: tuple[str, ...]
    positives: tuple[str, ...] = ()


@dataclass
class ReadReport:
    """What a reader kept and what it skipped, and why."""

    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    """Kept records read in a way worth knowing (e.g. a caption that could not be split off), counted."""

    def skip(self, reason: str) -> None:
        """Count one skipped record."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def note(self, what: str) -> None:
        """Count one kept record read with a caveat."""
        self.notes[what] = self.notes.get(what, 0) + 1

    def describe(self) -> str:
        """E.g. '5046 queries (none skipped)' or '5045 queries (1 no answers; 2 caption kept in the question)'."""
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.items()) or "none skipped"
        notes = "".join(f"; {n} {what}" for what, n in self.notes.items())
        return f"{self.kept} queries ({skipped}{notes})"


def read_retriever_json(path: str | Path, report: ReadReport | None = None) -> list[Query]:
    """VRR retriever records `{question_id, img_id, question, caption?, answers, ctxs}`.

    The question field carries the caption after the "?" (VRR/GeMKR inputs); it is split off using the
    `caption` field, so that appending it is a switch (`DataConfig.append_caption`). `answers` may be a
    dict (answer -> soft score) or a list. Positives are the `ctxs` ids (ReMuQ: the first is the gold one).
    A record without answers and without positives cannot be scored and is skipped, counted in `report`.
    """
    path = Path(path)
    records = _load_json_list(path)
    report = report if report is not None else ReadReport()
    out = []
    for i, r in enumerate(records):
        where = f"{path}: record {i}"
        if not isinstance(r, dict):
            raise DataError(f"{where}: not a JSON object")
        missing = [k for k in ("question_id", "img_id", "question") if k not in r]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)}")
        caption = str(r.get("caption") or "").strip()
        question = str(r["question"]).strip()
        if caption and question.endswith(caption):
            question = question[: -len(caption)].strip()
        answers = r.get("answers") or {}
        answers = tuple(str(a) for a in (answers.keys() if isinstance(answers, dict) else answers))
        positives = tuple(str(c["id"]) for c in r.get("ctxs") or [] if isinstance(c, dict) and "id" in c)
        if not answers and not positives:
            report.skip("no answers and no gold passages")
            continue
        out.append(Query(str(r["question_id"]), str(r["img_id"]), question, caption, answers, positives))
    report.kept += len(out)
    return out


CAPTION_KEPT = "caption kept in the question (no '? ' in the input to split it off)"


def read_gemkr_test_json(path: str | Path, report: ReadReport | None = None) -> list[Query]:
    """GeMKR's `dataset/okvqa/test.json`: `{input: "question? caption.", output: [answers], image}`.

    The input is split after its last "? " into question and caption, so that `question + " " + caption`
    is the input again (what the official code feeds) and `DataConfig.append_caption` can leave the caption
    out; an input without "? " stays whole as the question, counted in `report.notes`. Query ids are the
    record positions ("0", "1", ...), as GeMKR's result file is aligned by position; a skipped record keeps
    its position unused.
    """
    path = Path(path)
    report = report if report is not None else ReadReport()
    out = []
    for i, r in enumerate(_load_json_list(path)):
        if not isinstance(r, dict) or not {"input", "output", "image"} <= set(r):
            raise DataError(f"{path}: record {i}: needs 'input', 'output' and 'image'")
        if not isinstance(r["output"], list):
            raise DataError(f"{path}: record {i}: 'output' must be a list of answer strings")
        if not r["output"]:
            report.skip("no answers")
            continue
        text = str(r["input"]).strip()
        cut = text.rfind("? ")
        question, caption = (text[: cut + 1], text[cut + 2 :].strip()) if cut >= 0 else (text, "")
        if not caption:
            question = text
            report.note(CAPTION_KEPT)
        out.append(Query(str(i), str(r["image"]), question, caption, tuple(str(a) for a in r["output"])))
    report.kept += len(out)
    return out


@dataclass
class QueryCheck:
    """GeMKR's and VRR's test queries paired by image and question, and where they differ.

    GeMKR's file has no query ids (its ids are positions), so a query is identified by its image and its
    question (case and spacing ignored); answers are compared as sets.
    """

    gemkr: int
    vrr: int
    pairs: dict[str, str] = field(default_factory=dict)
    """GeMKR query id (position) -> VRR question_id."""
    only_gemkr: list[str] = field(default_factory=list)
    """GeMKR query ids without a VRR query of the same image and question."""
    only_vrr: list[str] = field(default_factory=list)
    """VRR question_ids without a GeMKR query."""
    other_answers: list[dict] = field(default_factory=list)
    """Paired queries whose answer sets differ: ids and the answers only one file has."""

    @property
    def agree(self) -> bool:
        """Whether both files hold the same queries with the same answers."""
        return not (self.only_gemkr or self.only_vrr or self.other_answers)

    def summary(self) -> str:
        """One line for the prepare summary."""
        head = f"{len(self.pairs)} paired by image and question"
        if self.agree:
            return f"{head}: the same queries and answers"
        parts = [head]
        if self.only_gemkr:
            parts.append(f"{len(self.only_gemkr)} only in GeMKR's (e.g. query {self.only_gemkr[0]})")
        if self.only_vrr:
            parts.append(f"{len(self.only_vrr)} only in VRR's (e.g. question_id {self.only_vrr[0]})")
        if self.other_answers:
            d = self.other_answers[0]
            parts.append(
                f"{len(self.other_answers)} with other answers (e.g. query {d['gemkr']} / question_id {d['vrr']}: "
                f"only GeMKR's {d['only_gemkr']}, only VRR's {d['only_vrr']})"
            )
        return "DIFFERENT: " + ", ".join(parts)

    def to_json(self) -> dict:
        """Everything, for `<prepared>/query_check.json`."""
        return {
            "gemkr_queries": self.gemkr,
            "vrr_queries": self.vrr,
            "agree": self.agree,
            "paired": len(self.pairs),
            "only_gemkr": self.only_gemkr,
            "only_vrr": self.only_vrr,
            "other_answers": self.other_answers,
            "gemkr_to_vrr": self.pairs,
        }


def _image_key(image_id: str) -> str:
    """COCO_val2014_000000297147, 297147 and '297147' name the same image."""
    digits = re.search(r"(\d+)\D*$", image_id)
    return str(int(digits.group(1))) if digits else image_id.strip()


def _question_key(question: str) -> str:
    return " ".join(question.lower().split())


def compare_queries(gemkr: list[Query], vrr: list[Query]) -> QueryCheck:
    """Pair GeMKR's test queries with VRR's by image and question, and list what differs (see `QueryCheck`).

    A GeMKR question whose caption could not be split off is paired with a VRR query of the same image
    whose question begins it.
    """
    check = QueryCheck(gemkr=len(gemkr), vrr=len(vrr))
    by_key: dict[tuple[str, str], list[Query]] = defaultdict(list)
    by_image: dict[str, list[Query]] = defaultdict(list)
    for q in vrr:
        by_key[_image_key(q.image_id), _question_key(q.question)].append(q)
        by_image[_image_key(q.image_id)].append(q)
    used: set[int] = set()
    for g in gemkr:
        image, question = _image_key(g.image_id), _question_key(g.question)
        candidates = by_key.get((image, question), [])
        if not candidates and not g.caption:
            candidates = [q for q in by_image.get(image, []) if question.startswith(_question_key(q.question))]
        match = next((q for q in candidates if id(q) not in used), None)
        if match is None:
            check.only_gemkr.append(g.qid)
            continue
        used.add(id(match))
        check.pairs[g.qid] = match.qid
        ours, theirs = set(g.answers), set(match.answers)
        if ours != theirs:
            check.other_answers.append(
                {
                    "gemkr": g.qid,
                    "vrr": match.qid,
                    "only_gemkr": sorted(ours - theirs),
                    "only_vrr": sorted(theirs - ours),
                }
            )
    check.only_vrr = [q.qid for q in vrr if id(q) not in used]
    return check


def _load_json_list(path: Path) -> list:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data
