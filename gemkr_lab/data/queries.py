"""Benchmark query files: VRR/DPR-style retriever JSON and GeMKR's own test.json.

VRR's layout serves OK-VQA, ReMuQ and the synthetic world. Errors name the file and record; skipped
records are counted, never silent.
"""

import json
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

    def skip(self, reason: str) -> None:
        """Count one skipped record."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


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


def read_gemkr_test_json(path: str | Path, report: ReadReport | None = None) -> list[Query]:
    """GeMKR's `dataset/okvqa/test.json`: `{input: "question? caption.", output: [answers], image}`.

    The caption cannot be told apart from the question reliably, so `input` is kept whole as the question;
    query ids are the record positions, as GeMKR's result files are aligned by position.
    """
    path = Path(path)
    report = report if report is not None else ReadReport()
    out = []
    for i, r in enumerate(_load_json_list(path)):
        if not isinstance(r, dict) or not {"input", "output", "image"} <= set(r):
            raise DataError(f"{path}: record {i}: needs 'input', 'output' and 'image'")
        if not r["output"]:
            report.skip("no answers")
            continue
        out.append(Query(str(i), str(r["image"]), str(r["input"]).strip(), "", tuple(str(a) for a in r["output"])))
    report.kept += len(out)
    return out


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
