"""A report folder written as a unit: the whole folder is replaced, so nothing of an earlier report survives.

Every report (`table.write_report`, `search.write_search_report`) is written into a staging folder beside
`--out` and swapped in whole (`gemkr_lab.io.atomic_directory`): files of another sweep's report that this one
does not write (its plot, its trials) are gone, and a failure leaves the earlier report as it was. The folder
holds `report.json` (the marker: format, kind, sweep, the names it wrote). An existing `--out` is replaced
only when everything in it is a report's (names a report writes, or those its marker lists) or it is empty;
a folder holding anything else (the user's notes, another tool's output) is refused unless `overwrite`, so
nothing but an earlier report is ever removed. Its `explore/` subfolder (`gemkr-lab explore ... --out
REPORT/explore/`, written by another command) and the explorer's screenshot `explorer.png` are carried over
into the new report (`KEPT`).
"""

import datetime
import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gemkr_lab.io import atomic_directory, clean_stale, write_json

MARKER = "report.json"
FORMAT = 1
KEPT = ("explore", "explorer.png")
"""What other commands write into a report folder, carried over when the report is written again: the clue
explorer (`gemkr-lab explore ... --out REPORT/explore`) and its screenshot (`python -m gemkr_lab.report.browser
REPORT/explore/index.html --out REPORT/explorer.png`, shown in the README for reports/demo)."""
REPORT_FILES = frozenset(
    {
        MARKER,
        "table.md",
        "table.tex",
        "table.html",
        "table.csv",
        "runs.json",
        "ablation_r5.png",
        "trials.md",
        "trials.csv",
        "history.png",
        "importance.png",
    }
)
"""Every name a report (grid or search) writes: a folder holding only these is a report of ours."""


def check_out(out: str | Path, overwrite: bool = False) -> None:
    """Refuse an `--out` that is a file, or a folder holding files that are not a report of ours.

    Raises:
        NotADirectoryError: a file is in the way.
        FileExistsError: the folder holds other files (named) and `overwrite` is not given.
    """
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out))
    if overwrite:
        return
    clean_stale(out)  # leftovers of dead writers (e.g. a killed explore's staging folder) are nobody's
    ours = REPORT_FILES | set(KEPT) | set(_written(out))
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        what = "a gemkr-lab report" if (out / MARKER).is_file() else f"a gemkr-lab report ({MARKER} absent)"
        raise FileExistsError(
            f"{out}: holds files that are not part of {what}: {shown}; writing the report there would remove "
            "them: move them away, choose another --out, or pass --overwrite to replace the folder"
        )


def _written(out: Path) -> list[str]:
    """The names an earlier report recorded in its marker as written (none when it is absent or unreadable)."""
    try:
        files = json.loads((out / MARKER).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


@contextmanager
def report_directory(out: str | Path, *, sweep: str, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder that replaces `out` whole when the block finishes (its `explore/` carried over).

    Args:
        out: the report folder.
        sweep: the sweep's name (written into the marker).
        kind: "grid" or "search".
        overwrite: replace a folder that is not a report of ours.
    """
    check_out(out, overwrite)
    with atomic_directory(out, overwrite=True, keep=KEPT) as stage:
        yield stage
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        files = sorted({p.name for p in stage.iterdir()} | {MARKER})
        write_json(stage / MARKER, {"format": FORMAT, "kind": kind, "sweep": sweep, "written": now, "files": files})
