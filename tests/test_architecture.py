"""The house rules of ../shared/DESIGN.md, checked on the source: imports point one way, no module circle.

Every import counts, lazy ones inside functions too (they are imports all the same, only later). A package may
import from the packages before it in `ORDER` and from itself, never from one after it; and no two modules
import each other, directly or around a circle.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "gemkr_lab"
ORDER = (
    "io",
    "progress",  # a leaf beside io: progress bars on a terminal, lines in logs
    "config",
    "numerics",  # a leaf beside io: reads configs, imports torch only when asked
    "kb",
    "metrics",
    "decoding",
    "baselines",
    "data",
    "model",
    "tracking",  # beside run: W&B for a run directory
    "run",
    "sweep",
    "report",
    "demo",  # the main job: world -> prepare -> sweep -> report
    "cli",
    "__main__",
)


def _module(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str:
    """`gemkr_lab.kb._select_kernels` or `gemkr_lab.kb` (a name imported from a package that is no module)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(sources: dict[str, str]) -> dict[str, set[str]]:
    """module -> the gemkr_lab modules it imports anywhere in its file."""
    modules = set(sources)
    out: dict[str, set[str]] = {}
    for module, text in sources.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("gemkr_lab.")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gemkr_lab"):
                # `from gemkr_lab.kb import _select_kernels` imports a module; `import build_index` a name
                found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        out[module] = {_resolve(n, modules) for n in found} - {module}
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs against ORDER."""
    rank = {p: i for i, p in enumerate(ORDER)}
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            a, b = _package(src), _package(dst)
            if a in rank and b in rank and rank[b] > rank[a]:
                bad.append((src, dst))
            elif "__init__" not in (a, b) and (a not in rank or b not in rank):
                bad.append((src, dst))  # a new package must be placed in ORDER (and DESIGN.md) first
    return sorted(bad)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), ignoring a package's own `__init__`."""
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _sources() -> dict[str, str]:
    return {_module(p, ROOT): p.read_text(encoding="utf-8") for p in sorted(ROOT.rglob("*.py"))}


def test_imports_point_one_way_and_close_no_circle():
    graph = imports(_sources())
    assert len(graph) > 50
    assert upward(graph) == []
    assert circles(graph) == []


def test_the_check_finds_an_upward_import_and_a_circle():
    sources = _sources()
    # lazy, inside a function, as the old run -> sweep import was
    sources["gemkr_lab.kb.index"] += "\n\ndef _late():\n    from gemkr_lab.sweep.grid import launch\n"
    sources["gemkr_lab.metrics.score"] += "\n\ndef _back():\n    import gemkr_lab.metrics.trec\n"
    sources["gemkr_lab.metrics.trec"] += "\n\ndef _forth():\n    from gemkr_lab.metrics import score\n"
    graph = imports(sources)
    assert ("gemkr_lab.kb.index", "gemkr_lab.sweep.grid") in upward(graph)
    assert ["gemkr_lab.metrics.score", "gemkr_lab.metrics.trec"] in circles(graph)
