"""GeMKR's released result file as a TREC run and an answers file, so that `gemkr-lab score` gives its metric.

The official result file (`results_okvqa_*_p5: 0.491.json` in GeMKR's repository) is a JSON list aligned with
`dataset/okvqa/test.json`: per query, the passage ids of its 10 beams in beam order, duplicates included. The
official evaluation (`eval.py`) keeps each id's first occurrence, matches the query's answers case-sensitively
as substrings of the passages, and averages over every query of the file: P@5 = relevant in the top 5 over 5,
R@k = a relevant passage in the top k.

`import_gemkr_results` writes the same lists as a TREC run (query id = the query's position in `test.json`, as
a string; first occurrence kept; scores strictly decreasing, so no tie is left for the reader to break) and
the answers as `{"qid", "answers"}` lines. Then

    gemkr-lab score --run run.txt --answers answers.jsonl --corpus okvqa_train_corpus.csv --match exact

is the official metric. A `test.json` record without answers is written with an empty list: it counts, as a
miss, as the official loop counts it.
"""

import json
from pathlib import Path

from gemkr_lab.data.queries import DataError, ReadReport, read_gemkr_test_json
from gemkr_lab.io import write_jsonl
from gemkr_lab.metrics import write_run

TAG = "gemkr-official"


def read_gemkr_results(path: str | Path) -> list[list[str]]:
    """The result file's ranked passage ids per query (as strings, in beam order, duplicates kept)."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc.msg}, line {exc.lineno}); expected a list of id lists") from None
    if not isinstance(results, list):
        raise DataError(f"{path}: expected a JSON list (one list of passage ids per query of test.json)")
    out = []
    for i, ids in enumerate(results):
        if not isinstance(ids, list) or not all(isinstance(d, str | int) and not isinstance(d, bool) for d in ids):
            raise DataError(f"{path}: entry {i}: expected a list of passage ids (strings or integers)")
        out.append([str(d) for d in ids])
    return out


def import_gemkr_results(
    results: str | Path, test_json: str | Path, run_out: str | Path, answers_out: str | Path
) -> dict[str, int]:
    """Write the TREC run and the answers file of a GeMKR result file; returns counts for the summary.

    Raises:
        DataError: the two files are not aligned (other lengths), or one is not in its format.
    """
    ranked = read_gemkr_results(results)
    report = ReadReport()
    queries = read_gemkr_test_json(test_json, report)
    n_records = len(queries) + sum(report.skipped.values())  # the reader skips records without answers only
    if len(ranked) != n_records:
        raise DataError(
            f"{results}: {len(ranked)} result lists, but {test_json} holds {n_records} queries; "
            "the result file is aligned with test.json by position"
        )
    answers = {str(i): [] for i in range(n_records)} | {q.qid: list(q.answers) for q in queries}
    run = {str(i): ids for i, ids in enumerate(ranked)}
    write_run(run_out, run, tag=TAG)
    Path(answers_out).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(answers_out, ({"qid": qid, "answers": a} for qid, a in answers.items()))
    unique = [len(dict.fromkeys(ids)) for ids in ranked]
    return {
        "queries": n_records,
        "without_answers": n_records - len(queries),
        "ids": sum(len(ids) for ids in ranked),
        "unique_ids": sum(unique),
        "fewer_than_5_unique": sum(u < 5 for u in unique),
    }
