"""`make demo`: the synthetic world, prepared, the demo ablation sweep of tiny models, and its report."""

from pathlib import Path

from gemkr_lab.config import DataConfig
from gemkr_lab.data.prepare import Preparer
from gemkr_lab.data.world import make_world
from gemkr_lab.report.explore import log_explorer, write_explorer
from gemkr_lab.report.table import write_report
from gemkr_lab.sweep.grid import load_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]


def run_demo(workers: int = 2) -> None:
    """Every step skips what is already done, so a second `make demo` only rewrites the report."""
    world, prepared = Path("runs/world"), Path("runs/world-prepared")
    if not (world / "world.json").is_file():
        make_world(world, seed=0, size="small", overwrite=world.exists())
        print(f"[1/4] synthetic world -> {world}")
    else:
        print(f"[1/4] synthetic world: {world} exists")
    for step in Preparer(DataConfig(), world, prepared).run():
        print(f"[2/4] prepare {step['step']}: {step['status']} ({step['why']})")
    sweep = load_sweep(ROOT / "sweeps" / "demo.yaml")
    print(f"[3/4] sweep {sweep.name}: {len(sweep.cells)} cells x {len(sweep.seeds)} seeds, {workers} workers")
    result = run_sweep(sweep, workers=workers)
    if result["failed"]:
        print(f"      failed runs: {result['failed']} (see their log.txt)")
    table = write_report(sweep, ROOT / "reports" / "demo")
    explorer = write_explorer(sweep, ROOT / "reports" / "demo" / "explore")
    log_explorer(explorer)
    print("[4/4] report -> reports/demo/, clue explorer -> reports/demo/explore/index.html")
    print(table.to_markdown(index=False, disable_numparse=True))
    print("\n".join(f"- {line}" for line in table.attrs.get("notes", ())))
