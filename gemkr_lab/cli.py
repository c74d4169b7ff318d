"""The `gemkr-lab` command line: each verb parses its arguments and calls one library function."""

import argparse
import contextlib
import json
import sys
import traceback
import typing
from collections.abc import Sequence
from pathlib import Path

from gemkr_lab.config.checks import prepare_time_fields
from gemkr_lab.config.data import DataConfig
from gemkr_lab.config.flags import add_field_flags, build_from_flags, given_fields
from gemkr_lab.config.metric_names import summary_line  # light: the config layer, no numpy

DATASETS = list(typing.get_args(typing.get_args(DataConfig.__annotations__["dataset"])[0]))
PREPARE_FLAGS = [f for f in prepare_time_fields(DataConfig) if f != "dataset"]
"""`prepare DATASET`'s flags: every prepare-time data setting but the dataset itself (generated, `config.flags`)."""


def _index_build(args: argparse.Namespace) -> int:
    from gemkr_lab.kb.from_corpus import build_index_from_corpus  # light until the corpus's head is read

    shards = args.shards if args.shards == "auto" else int(args.shards)
    index = build_index_from_corpus(
        args.corpus,
        args.tokenizer,
        args.out,
        backend=args.backend,
        shards=shards,
        dedup=args.dedup,
        prepend_title=args.prepend_title,
        carriage_returns_to_spaces=args.carriage_returns_to_spaces,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=False if args.json else None,  # --json: stdout is the JSON alone (no progress lines)
    )
    from gemkr_lab.kb.inspect import index_stats

    _print(index_stats(index), args.json)
    return 0


def _index_stats(args: argparse.Namespace) -> int:
    from gemkr_lab.kb.storage import read_meta

    read_meta(Path(args.index))  # a mistyped folder is answered before the index kernels (numba) load
    from gemkr_lab.kb import open_index
    from gemkr_lab.kb.inspect import index_stats

    _print(index_stats(open_index(args.index, verify=True if args.verify else "cheap")), args.json)
    return 0


def _index_query(args: argparse.Namespace) -> int:
    from gemkr_lab.kb.storage import read_meta

    read_meta(Path(args.index))  # a mistyped folder is answered before the index kernels (numba) load
    from gemkr_lab.kb import open_index
    from gemkr_lab.kb.inspect import query_index
    from gemkr_lab.kb.tokenize import load_tokenizer, tokenizer_fingerprint

    # what it reads is checked: cheap checks by default (counts, shapes, small files' checksums), all with --verify
    verify = True if args.verify else "cheap"
    index = open_index(args.index, verify=verify)
    tok_path = args.tokenizer or index.meta.get("extra", {}).get("tokenizer_path")
    if not tok_path:
        raise ValueError(f"{args.index}: no tokenizer recorded in the index; pass --tokenizer DIR")
    tok = load_tokenizer(tok_path)
    index = open_index(args.index, tokenizer_fingerprint=tokenizer_fingerprint(tok), verify=False)  # checked above
    result = query_index(index, tok, args.text, limit=args.limit)
    if args.json:
        _print(result, True)
        return 0
    forms = result["forms"]
    matched = " and ".join(result["matched_forms"]) or "neither form"
    print(f"{result['text']!r}: count={result['count']} in {result['n_documents']} documents (matched: {matched})")
    for f in forms:
        print(f"  {f['form']:<25} {f['tokens']}  count={f['count']}  documents={f['n_documents']}")
    print(f"  note: {result['note']}")
    print(
        f"continuations of the {result['form']!r} form ({result['n_continuations']}): "
        + " ".join(repr(c["text"]) for c in result["continuations"])
    )
    for d in result["documents"]:
        print(f"  [{d['id']}] {d['snippet']}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from gemkr_lab.metrics import AnswerRelevance, QrelsRelevance, evaluate, read_answers, read_qrels, read_run
    from gemkr_lab.metrics.relevance import texts_for

    run = read_run(args.run, dedup=args.dedup)
    if args.qrels:
        relevance = QrelsRelevance(read_qrels(args.qrels))
    else:
        if not args.corpus:
            raise ValueError("--answers needs --corpus (the passages whose text is matched)")
        wanted = {d for docs in run.values() for d in docs}
        texts = texts_for(args.corpus, wanted, carriage_returns_to_spaces=args.carriage_returns_to_spaces)
        missing = wanted - set(texts)
        if missing:
            raise ValueError(
                f"{args.run}: {len(missing)} documents are not in {args.corpus} (e.g. {sorted(missing)[0]!r}); "
                "score against the corpus the run was made from"
            )
        relevance = AnswerRelevance(read_answers(args.answers), texts, match=args.match)
    ev = evaluate(run, relevance, args.k)
    for line in ev.warnings():
        print(f"gemkr-lab: warning: {line}", file=sys.stderr)
    if args.per_query:
        from gemkr_lab.io import write_json

        write_json(Path(args.per_query), {"means": ev.means, "per_query": ev.per_query})
    if args.json:
        print(json.dumps(ev.means, indent=2))
    else:
        n = len(ev.per_query)
        print(f"{n} queries ({len(ev.missing_from_run)} without results)")
        for name, value in ev.means.items():
            print(f"{name:<10} {value:.4f}")
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from gemkr_lab.baselines.queries import kb_passages, read_queries
    from gemkr_lab.metrics import write_run

    queries = read_queries(args.queries)
    ids, texts = kb_passages(args.corpus, dedup=args.dedup)
    if args.method == "bm25":  # imported once the inputs are read: the dense retriever loads torch
        from gemkr_lab.baselines.bm25 import bm25_search as search
    else:
        from gemkr_lab.baselines.dense import dense_search as search
    ranked = search(ids, texts, queries, k=args.k)
    write_run(args.out, ranked, tag=args.method)
    print(f"{args.method}: {len(queries)} queries over {len(ids)} passages -> {args.out}")
    return 0


def _make_world(args: argparse.Namespace) -> int:
    from gemkr_lab.data.world import make_world

    shown = make_world(args.out, seed=args.seed, size=args.size, overwrite=args.overwrite)
    print(f"synthetic world ({args.size}, seed {args.seed}): {len(shown)} creatures -> {args.out}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from gemkr_lab.config import DataConfig
    from gemkr_lab.config.experiment import ConfigError, load_experiment
    from gemkr_lab.data.prepare import Preparer

    if args.experiment:
        if args.dataset or args.data_root or args.out:
            raise ConfigError("prepare: give either --experiment (with --set KEY=VALUE) or DATASET --data-root --out")
        flags = given_fields(args, PREPARE_FLAGS)
        if flags:  # they would be ignored: the preset's data settings are changed with --set
            sets = " ".join(f"--set data.{k}={v}" for k, v in flags.items())
            raise ConfigError(f"prepare --experiment takes data settings as overrides: {sets}")
        from gemkr_lab.run.cell import tokenizer_dir

        config = load_experiment(args.experiment, args.set)
        # the run's tokenizer: `tokenizer`, else the LLM checkpoint's own, else DATA_ROOT/tokenizer
        data, data_root, out, tokenizer = config.data, config.data_root, config.prepared, tokenizer_dir(config)
    else:
        if not (args.dataset and args.data_root and args.out):
            raise ConfigError("prepare: give DATASET --data-root DIR --out DIR, or --experiment PRESET")
        data = build_from_flags(DataConfig, {"dataset": args.dataset, **given_fields(args, PREPARE_FLAGS)})
        data_root, out, tokenizer = args.data_root, args.out, args.tokenizer
    steps = Preparer(data, data_root, out, tokenizer=tokenizer, force=args.force).run()
    for s in steps:
        print(f"{s['step']:<8} {s['status']:<8} {s['why']}" + (f": {s['detail']}" if s.get("detail") else ""))
    print(f"-> {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from gemkr_lab.config.experiment import load_experiment
    from gemkr_lab.numerics import apply_for
    from gemkr_lab.run.cell import run_cell, run_dir, with_seed
    from gemkr_lab.sweep.grid import exit_with_launcher

    exit_with_launcher()  # launched by a sweep: end when it dies
    if args.verb == "run-cell":  # a sweep worker's trainer (also inside a Slurm job) is never started by srun
        import signal
        import warnings

        warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
        # Slurm's requeue signal reaches every process of a job; it is the worker's to act on (it stops this
        # trainer with SIGTERM, which checkpoints first), never a reason to die mid-step
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    config = load_experiment(args.experiment, args.overrides)
    apply_for(config)  # portable CPU numerics: before anything loads torch (DDP ranks and children inherit it)
    intermediate = None
    if args.verb == "run-cell":  # a search trial decodes validation subsets for its pruner
        from gemkr_lab.sweep.search import intermediate_from_env

        intermediate = intermediate_from_env()
    lock_until_exit = args.verb == "run-cell"
    means = run_cell(
        config, args.seed, args.root, list(args.overrides), lock_until_exit=lock_until_exit, intermediate=intermediate
    )
    if not means:  # a DDP rank > 0: rank 0 reports
        return 0
    print(f"{config.name} seed {args.seed} -> {run_dir(args.root, with_seed(config, args.seed))}")
    print(summary_line(means))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from gemkr_lab.numerics import apply_for_run
    from gemkr_lab.run.cell import evaluate_cell, find_run

    run = find_run(args.experiment, args.seed, args.root)
    apply_for_run(run)  # the numerics the run was trained with, before anything loads torch
    means = evaluate_cell(run, args.overrides)
    print(f"{run} (decoding {' '.join(args.overrides) or 'unchanged'})")
    print(summary_line(means))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from gemkr_lab.config.experiment import ConfigError
    from gemkr_lab.sweep.grid import load_sweep, run_sweep
    from gemkr_lab.sweep.search_file import is_search, load_search_file  # light: Optuna loads for the work

    slurm_given = {
        "partition": args.partition,
        "time": args.time,
        "cpus_per_trial": args.cpus_per_trial,
        "mem": args.mem,
        "max_jobs": args.max_jobs,
        "slurm_args": dict(_slurm_args(args.slurm_arg)) or None,
    }
    slurm_only = [f"--{k.replace('_', '-')}" for k, v in slurm_given.items() if v is not None] + (
        ["--wait"] if args.wait else []
    )
    common = {
        "workers": args.workers or 1,
        "storage": args.storage,
        "new_study": args.new_study,
        "gpus_per_trial": args.gpus_per_trial or 0,
    }
    if Path(args.sweep).is_file() and is_search(args.sweep):
        search = load_search_file(args.sweep)
        _check_storage(args.storage)
        if (args.launcher or search.launcher) == "slurm" and not args.finalize:
            return _search_slurm(args, search, slurm_given)
        if slurm_only:
            raise ConfigError(
                f"{', '.join(slurm_only)}: Slurm options; add --launcher slurm (or launcher: in the file)"
            )
        from gemkr_lab.sweep.search import FinalRunError, finalize_search, run_search

        try:
            if args.finalize:
                common.pop("new_study")
                final = finalize_search(search, **common)
                print(f"search {search.name}: selected trial {final['trial']} {final['params']}")
                print(f"  on test: {final['seeds']} -> {Path(search.root) / 'final.json'}")
                return 0
            result = run_search(search, **common)
        except FinalRunError as exc:
            print(f"gemkr-lab: {exc}", file=sys.stderr)
            return 1
        _print_search(search, result)
        return 0
    if args.finalize:
        raise ConfigError("--finalize ends a search sweep; this is a grid (its cells are scored on test already)")
    sweep = load_sweep(args.sweep)
    _check_storage(args.storage)
    if (args.launcher or sweep.launcher) == "slurm":
        return _sweep_slurm(args, sweep, slurm_given)
    if slurm_only:
        raise ConfigError(f"{', '.join(slurm_only)}: Slurm options; add --launcher slurm (or launcher: in the file)")
    result = run_sweep(sweep, retries=args.retries, retry_failed=args.retry_failed, **common)
    print(f"sweep {sweep.name}: {result['complete']}/{result['ran']} runs complete", end="")
    print(f", failed: {result['failed']}" if result["failed"] else "")
    print(f"grid: {result['grid_complete']}/{result['grid_total']} (cell, seed) pairs complete")
    for cell, seeds in result["failed_for_good"].items():
        listed = "; ".join(f"seed {s['seed']} after {s['attempts']} attempts: {s['error']}" for s in seeds)
        print(f"failed for good (retries exhausted): {cell}: {listed}")
    if result["failed_for_good"]:
        print(f"-> {Path(sweep.root) / 'failed.json'}; run again with --retry-failed (or more --retries)")
    return 1 if result["failed"] or result["failed_for_good"] or result["grid_complete"] < result["grid_total"] else 0


def _check_storage(url: str | None) -> None:
    from gemkr_lab.sweep.storage_url import check_storage_url

    if url:
        check_storage_url(url)  # a typo is refused before Optuna and SQLAlchemy load (a second)


def _print_search(search, result: dict) -> None:
    states = ", ".join(f"{v} {k.lower()}" for k, v in result.items() if k.isupper())
    print(f"search {search.name}: {states or 'no trials'} (on the validation split)")
    best, final = result.get("best"), result.get("final")
    if best:
        value = f"{search.objective} {100 * best['values'][0]:.1f}"
        print(f"  best trial {best['number']}: {value} on validation, {best['params']}")
    if final:
        shown = ", ".join(f"seed {k} {100 * v['means'][search.objective]:.1f}" for k, v in final["seeds"].items())
        print(f"  selected on test ({search.objective}): {shown} -> {Path(search.root) / 'final.json'}")
    elif best:
        print("  test split not evaluated yet: every trial must finish (or run with --finalize once they have)")


def _slurm_options(args: argparse.Namespace, sweep, given: dict):
    """The Slurm options of a grid or a search: its file's `launcher:` section with the command line's over it."""
    from gemkr_lab.config.experiment import ConfigError
    from gemkr_lab.sweep.launcher import slurm_options

    if args.workers not in (None, 1):
        raise ConfigError("--workers is for --launcher local; with slurm, --max-jobs worker jobs run at once")
    return slurm_options(sweep, given | {"gpus_per_trial": args.gpus_per_trial})


def _search_slurm(args: argparse.Namespace, search, given: dict) -> int:
    options = _slurm_options(args, search, given)  # checked before submitit and Optuna load
    from gemkr_lab.sweep.search import run_search_slurm

    result = run_search_slurm(
        search,
        options,
        storage=args.storage,
        new_study=args.new_study,
        wait=args.wait,
        command=" ".join(["gemkr-lab", *sys.argv[1:]]),
    )
    left = result["left"]
    head = f"submitted {len(result['submitted'])} worker job(s): {' '.join(result['submitted'])}"
    print(f"search {search.name} (slurm): " + (head if result["submitted"] else "submitted nothing"))
    final = "pending" if left["final"] else "done"
    print(f"trials: {left['to_start']} to start, {left['running']} running; final step {final}")
    print(f"jobs and logs: {result['jobs_file']}")
    return 0 if not args.wait or not any(left.values()) else 1


def _slurm_args(texts: list[str]) -> list[tuple[str, object]]:
    from gemkr_lab.config.experiment import ConfigError
    from gemkr_lab.sweep.launcher import parse_slurm_arg

    try:
        return [parse_slurm_arg(t) for t in texts]
    except ValueError as exc:
        raise ConfigError(f"--slurm-arg: {exc}") from None


def _sweep_slurm(args: argparse.Namespace, sweep, given: dict) -> int:
    options = _slurm_options(args, sweep, given)  # checked before submitit and Optuna load
    from gemkr_lab.sweep.slurm import describe, run_slurm

    result = run_slurm(
        sweep,
        options,
        retries=args.retries,
        storage=args.storage,
        new_study=args.new_study,
        retry_failed=args.retry_failed,
        wait=args.wait,
        command=" ".join(["gemkr-lab", *sys.argv[1:]]),
    )
    for line in describe(result, sweep):
        print(line)
    for cell, seeds in result["failed_for_good"].items():
        listed = "; ".join(f"seed {s['seed']} after {s['attempts']} attempts: {s['error']}" for s in seeds)
        print(f"failed for good (retries exhausted): {cell}: {listed}")
    if result["failed_for_good"]:
        print(f"-> {Path(sweep.root) / 'failed.json'}; run again with --retry-failed (or more --retries)")
    if not args.wait:
        return 1 if result["failed_for_good"] else 0
    return 1 if result["failed_for_good"] or result["grid_complete"] < result["grid_total"] else 0


def _report(args: argparse.Namespace) -> int:
    from gemkr_lab.sweep.search_file import is_search, load_search_file

    # the sweep file is read before pandas and Optuna load: a bad one is answered at once
    if Path(args.sweep).is_file() and is_search(args.sweep):
        search = load_search_file(args.sweep)
        from gemkr_lab.report.search import write_search_report

        table = write_search_report(search, args.out, storage=args.storage, overwrite=args.overwrite)
    else:
        from gemkr_lab.sweep.grid import load_sweep

        sweep = load_sweep(args.sweep)
        from gemkr_lab.report.table import write_report

        table = write_report(sweep, args.out, overwrite=args.overwrite)
    print(table.to_string(index=False))
    print(f"-> {args.out}/")
    return 0


def _explore(args: argparse.Namespace) -> int:
    from gemkr_lab.report.explore import log_explorer, write_explorer
    from gemkr_lab.sweep.grid import load_sweep

    explorer = write_explorer(load_sweep(args.sweep), args.out)
    for note in explorer.notes:
        print(f"note: {note}")
    print(f"{len(explorer.queries)} queries, {len(explorer.runs)} runs -> {Path(args.out) / 'index.html'}")
    folder = log_explorer(explorer, args.wandb)
    if folder is not None:
        print(f"W&B: the per-query table with images -> {folder}")
    return 0


def _import_gemkr_results(args: argparse.Namespace) -> int:
    from gemkr_lab.data.gemkr_results import import_gemkr_results

    counts = import_gemkr_results(args.results, args.test_json, args.run_out, args.answers_out)
    print(
        f"{counts['queries']} queries ({counts['without_answers']} without answers), {counts['ids']} ids, "
        f"{counts['unique_ids']} after keeping first occurrences ({counts['fewer_than_5_unique']} queries with "
        f"fewer than 5) -> {args.run_out}, {args.answers_out}"
    )
    print(f"score: gemkr-lab score --run {args.run_out} --answers {args.answers_out} --corpus CORPUS --match exact")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gemkr_lab.demo import run_demo

    run_demo(workers=args.workers)
    return 0


def _print(payload: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in payload)
        for k, v in payload.items():
            print(f"{k:<{width}}  {v}")


def _integer(text: str, lowest: int, what: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give {what}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"{text!r} is too small; give {what}")
    return value


def positive_int(text: str) -> int:
    """Type of a number option: a whole number >= 1 (argparse names the option in its error)."""
    return _integer(text, 1, "a whole number >= 1")


def non_negative_int(text: str) -> int:
    """Type of a number option: a whole number >= 0."""
    return _integer(text, 0, "a whole number >= 0")


def shard_count(text: str) -> int | str:
    """Type of --shards: 'auto' or a whole number >= 1."""
    if text.strip().lower() == "auto":
        return "auto"
    return _integer(text, 1, "a whole number >= 1 or 'auto'")


def cutoffs(text: str) -> list[int]:
    """Type of score --k: comma-separated whole numbers >= 1, e.g. 1,5,10 (sorted, duplicates dropped)."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"{text!r} holds no cutoff; give whole numbers >= 1, e.g. 1,5,10")
    return sorted({_integer(p, 1, "whole numbers >= 1, e.g. 1,5,10") for p in parts})


CRS_HELP = (
    "also turn carriage returns (\\r) in passages into spaces; the official index builder turns only \\n "
    "(a deviation from the official texts: other tokens, clues and answer matches where passages hold \\r)"
)


class _Parser(argparse.ArgumentParser):
    """argparse, with a refusal in one line like every other error (the usage block is in `--help`)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(USER_ERROR, f"gemkr-lab: error: {' '.join(message.split())}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    parser = _Parser(prog="gemkr-lab", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (also accepted after the verb)"
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    index = verbs.add_parser("index", help="build and inspect knowledge-base indexes")
    index_verbs = index.add_subparsers(dest="index_verb", required=True)
    build = index_verbs.add_parser("build", help="tokenise a corpus file and index it")
    build.add_argument("corpus", help="corpus file: .csv (kid|id,text), .tsv (DPR id,text,title) or .jsonl")
    build.add_argument("--tokenizer", required=True, help="local Hugging Face tokenizer directory")
    build.add_argument("--out", required=True, help="index directory to create")
    build.add_argument("--backend", choices=["sa", "fm"], default="fm", help="suffix array or FM-index")
    build.add_argument(
        "--shards", type=shard_count, default=1, help="number of shards, or 'auto' (cut at the sort limit)"
    )
    build.add_argument("--no-dedup", dest="dedup", action="store_false", help="index duplicate texts again")
    build.add_argument("--prepend-title", action="store_true", help="index 'title. text' (DPR passages)")
    build.add_argument("--carriage-returns-to-spaces", action="store_true", help=CRS_HELP)
    build.add_argument("--batch-size", type=positive_int, default=1024, help="passages per tokenizer call")
    build.add_argument("--overwrite", action="store_true", help="replace an existing index directory")
    build.add_argument("--json", action="store_true", help="print the summary as JSON")
    build.set_defaults(func=_index_build)

    stats = index_verbs.add_parser("stats", help="sizes and provenance of an index")
    stats.add_argument("index")
    stats.add_argument(
        "--verify", action="store_true", help="check every file's checksum (default: sizes, counts, small files')"
    )
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=_index_stats)

    query = index_verbs.add_parser(
        "query",
        help="count, continuations and documents of a text",
        description="Looks the text up as typed and as it tokenises inside a passage after a space (a byte-level "
        "BPE without a prefix space tokenises the two differently); reports the count of each form and which matched.",
    )
    query.add_argument("index")
    query.add_argument("--text", required=True)
    query.add_argument("--tokenizer", help="tokenizer directory (default: the one the index was built with)")
    query.add_argument("--limit", type=non_negative_int, default=10, help="documents to show")
    query.add_argument(
        "--verify",
        action="store_true",
        help="check every file's checksum first (default: sizes, shapes, counts and the checksums of small files)",
    )
    query.add_argument("--json", action="store_true")
    query.set_defaults(func=_index_query)

    score = verbs.add_parser(
        "score",
        help="score a TREC run against qrels or answer strings",
        description="Documents are ranked by their score, highest first; equal scores are ordered by document id, "
        "descending as strings (as trec_eval does), and the rank column is ignored. Runs written by gemkr-lab "
        "(decoding, baselines, import gemkr-results) have strictly decreasing scores, so their order is kept.",
    )
    score.add_argument("--run", required=True, help="TREC run: qid Q0 docid rank score tag")
    source = score.add_mutually_exclusive_group(required=True)
    source.add_argument("--qrels", help="TREC qrels: qid 0 docid relevance (gold, as ReMuQ)")
    source.add_argument("--answers", help='JSONL {"qid", "answers": [...]}: answer-substring relevance (OK-VQA)')
    score.add_argument("--corpus", help="corpus file the run's documents come from (with --answers)")
    score.add_argument(
        "--match",
        choices=["exact", "lower"],
        default="exact",
        help="exact: case-sensitive as GeMKR's evaluation; lower: lower-cased passage and answers",
    )
    score.add_argument("--k", type=cutoffs, default="1,5,10", help="cutoffs, comma-separated")
    score.add_argument("--dedup", action="store_true", help="keep the best-ranked copy of a repeated document")
    score.add_argument(
        "--carriage-returns-to-spaces", action="store_true", help="match answers in texts normalised so: " + CRS_HELP
    )
    score.add_argument("--per-query", help="also write every query's values to this JSON file")
    score.add_argument("--json", action="store_true", help="print the means as one JSON object")
    score.set_defaults(func=_score)

    base = verbs.add_parser("baseline", help="BM25 or dense text retrieval over the same KB, as a TREC run")
    base.add_argument("method", choices=["bm25", "dense"])
    base.add_argument("--corpus", required=True, help="the KB's corpus file")
    base.add_argument("--queries", required=True, help='JSONL {"qid", "text"}')
    base.add_argument("--out", required=True, help="TREC run to write")
    base.add_argument("--k", type=positive_int, default=100, help="documents per query")
    base.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep duplicate texts")
    base.set_defaults(func=_baseline)

    world = verbs.add_parser("make-world", help="write the synthetic multimodal world (deterministic)")
    world.add_argument("--out", required=True)
    world.add_argument("--seed", type=non_negative_int, default=0)
    world.add_argument("--size", choices=["small", "medium"], default="small")
    world.add_argument("--overwrite", action="store_true")
    world.set_defaults(func=_make_world)

    prep = verbs.add_parser(
        "prepare",
        help="index the KB, build clue targets, cache object regions",
        description="Either DATASET --data-root DIR --out DIR [options], or --experiment PRESET [--set KEY=VALUE]: "
        "the experiment's data settings, data root, prepared folder and tokenizer.",
    )
    prep.add_argument("dataset", nargs="?", choices=DATASETS)
    prep.add_argument("--experiment", help="prepare what this experiment preset needs (e.g. tiny-cpu/clue-length-5)")
    prep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of the experiment")
    prep.add_argument("--data-root", help="the dataset's downloaded files")
    prep.add_argument("--out", help="where prepared files go")
    prep.add_argument("--tokenizer", help="the LLM's tokenizer directory (default: DATA_ROOT/tokenizer)")
    # one flag per prepare-time field of DataConfig, generated: the config is the one place they are declared
    add_field_flags(prep, DataConfig, PREPARE_FLAGS, aliases={"index_backend": ("--backend",)})
    prep.add_argument("--force", action="store_true", help="redo every step")
    prep.set_defaults(func=_prepare)

    for verb, func, text in (
        ("train", _train, "train, decode and score one experiment cell (resumes an incomplete run)"),
        ("run-cell", _train, "the same, as a sweep's worker process runs it"),
        ("evaluate", _evaluate, "decode and score a trained run again, exactly as trained, with other decoding"),
    ):
        cmd = verbs.add_parser(verb, help=text)
        if verb == "evaluate":
            cmd.add_argument("experiment", help="a run directory, or the cell (e.g. tiny-cpu/full) whose run to use")
            cmd.add_argument("overrides", nargs="*", help="decoding.key=value only, e.g. decoding.num_groups=5")
        else:
            cmd.add_argument("experiment", help="preset under experiments/ (e.g. tiny-cpu/full) or a YAML path")
            cmd.add_argument("overrides", nargs="*", help="key=value, e.g. train.max_steps=100 model.use_gate=false")
        cmd.add_argument("--seed", type=non_negative_int, default=0)
        cmd.add_argument("--root", default="runs/experiments", help="run directories go under ROOT/CELL/seed-S")
        cmd.set_defaults(func=func)

    sweep = verbs.add_parser("sweep", help="run an ablation grid (idempotent, resumable)")
    sweep.add_argument("sweep", help="sweep file, e.g. sweeps/demo.yaml")
    sweep.add_argument(
        "--workers", type=positive_int, default=None, help="runs at a time, each in its own process (default 1)"
    )
    sweep.add_argument("--retries", type=non_negative_int, default=1, help="retries of a failed run")
    sweep.add_argument(
        "--storage",
        help="Optuna storage URL, e.g. postgresql+psycopg2://user@host/db "
        "(default: a journal file under the sweep's root)",
    )
    sweep.add_argument("--new-study", action="store_true", help="start over if the sweep file changed")
    sweep.add_argument(
        "--finalize",
        action="store_true",
        help="search sweeps: evaluate the selected configuration on the test split now (every trial must be done)",
    )
    sweep.add_argument(
        "--retry-failed", action="store_true", help="queue again the cells whose retries were exhausted (fresh count)"
    )
    sweep.add_argument(
        "--gpus-per-trial",
        type=non_negative_int,
        default=None,
        help="GPUs pinned to each worker (local), or per worker job (slurm); default 0",
    )
    slurm = sweep.add_argument_group(
        "Slurm", "run the workers as Slurm jobs (also set in the sweep file's launcher: section; these win)"
    )
    slurm.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        help="local: workers are processes of this command (default); slurm: worker jobs through submitit",
    )
    slurm.add_argument("--partition", help="Slurm partition of the worker jobs")
    slurm.add_argument("--time", help="time limit per worker job: minutes or [D-]HH:MM:SS (default 60 minutes)")
    slurm.add_argument("--cpus-per-trial", type=positive_int, help="CPUs per worker job")
    slurm.add_argument("--mem", help="memory per worker job, e.g. 32G")
    slurm.add_argument("--max-jobs", type=positive_int, help="worker jobs pending or running at once (default 1)")
    slurm.add_argument(
        "--slurm-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. account=lab (repeat; a bare KEY is a flag)",
    )
    slurm.add_argument(
        "--wait",
        action="store_true",
        help="follow the worker jobs until the grid is complete (default: submit, return)",
    )
    sweep.set_defaults(func=_sweep)

    report = verbs.add_parser("report", help="ablation table (md, tex, html, csv) and plot of a sweep")
    report.add_argument("sweep")
    report.add_argument(
        "--out", required=True, help="report folder, replaced whole (an explore/ subfolder in it is kept)"
    )
    report.add_argument(
        "--storage",
        help="the Optuna storage URL a search sweep ran with (default: the journal file under its root); "
        "only read. A grid's report reads its run directories",
    )
    report.add_argument(
        "--overwrite", action="store_true", help="replace an --out folder that holds files that are not a report"
    )
    report.set_defaults(func=_report)

    explore = verbs.add_parser(
        "explore",
        help="static HTML clue explorer of a sweep (opens from disk)",
        description="Writes OUT/index.html with data.js and runs/*.js beside it (no server needed): per query the "
        "image with its object boxes and crops, question, answers and gold passages; per cell its clues (KB "
        "counts, hits) and ranked passages; filters (cell A right and B wrong, hit/miss at k, clue length and "
        "uniqueness, text search) and a summary panel. Also logs the per-query table with images to W&B.",
    )
    explore.add_argument("sweep", help="sweep file, e.g. sweeps/demo.yaml")
    explore.add_argument("--out", required=True, help="folder to write, e.g. reports/demo/explore (replaced whole)")
    explore.add_argument(
        "--wandb",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log the per-query table to a W&B run under OUT/wandb (default: as the sweep's tracking settings)",
    )
    explore.set_defaults(func=_explore)

    imports = verbs.add_parser("import", help="convert published result files for `score`")
    import_verbs = imports.add_subparsers(dest="import_verb", required=True)
    official = import_verbs.add_parser(
        "gemkr-results",
        help="GeMKR's released result file -> TREC run + answers file",
        description="RESULTS.json is GeMKR's result file: a JSON list, aligned with its test.json, of the passage "
        "ids of each query's beams (duplicates included). Writes a TREC run (query id = position in test.json; "
        "first occurrence of an id kept; strictly decreasing scores) and the answers as score --answers reads "
        "them; `score --run RUN --answers ANSWERS --corpus CORPUS --match exact` is then the official metric.",
    )
    official.add_argument("results", help="GeMKR's result JSON")
    official.add_argument("--test-json", required=True, help="GeMKR's dataset/okvqa/test.json")
    official.add_argument("--run-out", required=True, help="TREC run to write")
    official.add_argument("--answers-out", required=True, help="answers JSONL to write")
    official.set_defaults(func=_import_gemkr_results)

    demo = verbs.add_parser("demo", help="the main job: world -> prepare -> demo ablation sweep -> report")
    demo.add_argument("--workers", type=positive_int, default=2)
    demo.set_defaults(func=_demo)
    return parser


USER_ERROR = 2
"""Exit status of bad input; a sweep does not retry a run that exits with it (`gemkr_lab.sweep.grid`)."""
TRANSIENT_ERROR = 75
"""Exit status of a `run-cell` (a sweep's run) that an OS error stopped: retried (EX_TEMPFAIL of sysexits.h)."""
TERMINATED = 128 + 15
"""Exit status of a verb stopped by SIGTERM (as a shell reports a process killed by it)."""
_STOPPABLE = frozenset({"index", "prepare", "make-world", "baseline", "score", "report"})
"""Verbs that SIGTERM stops through an exception, so that their staging folders and temporary files go at once.

train/run-cell/evaluate/sweep keep SIGTERM as it is: Lightning turns it into a stop at the next step, decoding
stops at once (`run.cell.RunStopped`; the run is marked stopped, resumable), and a sweep stops its runs itself.
Whatever a SIGKILL leaves is removed by the next run of the same command (`gemkr_lab.io.clean_stale`).
"""


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException: no `except Exception` swallows it; cleanup blocks run on the way out)."""


@contextlib.contextmanager
def _sigterm_stops(verb: str):
    """For the duration of a stoppable verb (in the main thread), SIGTERM raises `Terminated`."""
    import signal
    import threading

    if verb not in _STOPPABLE or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; a user error is one line on stderr with exit 2.

    User errors (bad input, unreadable or unwritable files: disk full, read-only, permissions) name the problem
    and the fix, with no traceback (`--debug` shows it); argparse refuses bad options with exit 2 as well.
    """
    from gemkr_lab.kb.errors import KBError

    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:cut]  # a global flag, accepted anywhere before "--"
    argv = [a for i, a in enumerate(argv) if i >= cut or a != "--debug"]
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_stops(args.verb):
            return args.func(args)
    except Terminated:
        if debug:
            traceback.print_exc()
        print("gemkr-lab: stopped by SIGTERM; nothing half-written was left behind", file=sys.stderr)
        return TERMINATED
    except (KBError, OSError, ValueError, KeyError) as exc:  # ConfigError, DataError, RunFileError too
        if debug:
            traceback.print_exc()
        print(f"gemkr-lab: error: {_user_message(exc)}", file=sys.stderr)
        if args.verb == "run-cell" and isinstance(exc, OSError):
            return TRANSIENT_ERROR  # a sweep's run: an OS error (I/O, a lock, a full disk) may pass on a retry
        return USER_ERROR
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("gemkr-lab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if type(exc).__name__ != "TrialPruned":  # an Optuna search stopped this trial: not an error
            raise
        from gemkr_lab.sweep.search import PRUNED_EXIT

        print(f"gemkr-lab: trial pruned ({exc})", file=sys.stderr)
        return PRUNED_EXIT


def _user_message(exc: BaseException) -> str:
    from gemkr_lab.io import describe_os_error

    if isinstance(exc, OSError):
        return " ".join(describe_os_error(exc).split())  # one line, also for odd file names
    return str(exc) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
