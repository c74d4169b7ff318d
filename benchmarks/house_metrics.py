"""Module sizes and the longest functions of gemkr_lab (#24): the figures the house is judged by.

    python benchmarks/house_metrics.py [--out benchmarks/results]

Counts physical lines per module (every .py under gemkr_lab/), functions by their line span (decorators to last
line, methods included), and test files and tests; writes house.json and house.md. No imports of the package.
"""

import argparse
import ast
import json
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure() -> dict:
    modules, functions = {}, []
    for path in sorted((ROOT / "gemkr_lab").rglob("*.py")):
        name = str(path.relative_to(ROOT))
        text = path.read_text(encoding="utf-8")
        modules[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                functions.append((node.end_lineno - start + 1, f"{name}:{node.lineno} {node.name}"))
    tests = sorted((ROOT / "tests").rglob("test_*.py"))
    n_tests = sum(
        1
        for path in tests
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    )
    sizes = list(modules.values())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "commit": commit.stdout.strip(),
        "modules": len(modules),
        "lines": sum(sizes),
        "module_lines": {"median": statistics.median(sizes), "p90": _quantile(sizes, 0.9), "max": max(sizes)},
        "largest_modules": sorted(modules.items(), key=lambda kv: -kv[1])[:8],
        "longest_functions": [{"lines": n, "where": w} for n, w in sorted(functions, reverse=True)[:8]],
        "test_files": len(tests),
        "test_functions": n_tests,
        "test_lines": sum(len(p.read_text(encoding="utf-8").splitlines()) for p in tests),
    }


def markdown(m: dict) -> str:
    lines = [
        f"# House metrics at {m['commit']}",
        "",
        "Command: `python benchmarks/house_metrics.py` (physical lines; functions by line span, methods included).",
        "",
        f"- gemkr_lab: {m['modules']} modules, {m['lines']} lines; lines per module median "
        f"{m['module_lines']['median']:g}, p90 {m['module_lines']['p90']}, max {m['module_lines']['max']}",
        f"- tests: {m['test_files']} files, {m['test_functions']} test functions (before parametrization), "
        f"{m['test_lines']} lines",
        "",
        "| largest modules | lines |",
        "|---|---:|",
        *(f"| {name} | {n} |" for name, n in m["largest_modules"]),
        "",
        "| longest functions | lines |",
        "|---|---:|",
        *(f"| {f['where']} | {f['lines']} |" for f in m["longest_functions"]),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    m = measure()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in (("house.json", json.dumps(m, indent=2) + "\n"), ("house.md", markdown(m))):
        tmp = args.out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(args.out / name)
    print(markdown(m))


if __name__ == "__main__":
    main()
