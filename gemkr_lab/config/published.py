"""Published numbers of a sweep file's `paper:` section: each with its source, attached to the variant it came from.

```yaml
paper:
  paper/official-code:                 # the cell (variant) the numbers came from
    P@5: {value: 49.1, kind: official-file, source: "results_okvqa_20240611004_p5: 0.491.json"}
    R@5: {value: 78.6, kind: second-hand, source: "ReAuSE (AAAI 2025) Table 4, citing GeMKR"}
    beside: [paper/gemkr-7b, paper/gemkr-13b]   # rows shown with their distance to these numbers, not graded
    note: "the model size behind them is unverified"
```

Kinds: `paper` (the paper's own table) and `official-file` (a file of the official release, e.g. the result
file whose name records P@5) are first hand: the report grades them (OK / OK-ish / FAIL). `second-hand` (cited
by another paper or a summary) is shown with its distance and never FAILs. The old flat form
(`paper/gemkr-7b: {P@5: 49.1}`) still reads, as `unsourced` numbers that are not graded either.
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from gemkr_lab.config.checks import Bounds, FieldError, check_fields
from gemkr_lab.config.metric_names import REPORTED

METRICS = REPORTED  # the report's columns
KINDS = ("paper", "official-file", "second-hand")
FIRST_HAND = ("paper", "official-file")
KIND_NAMES = {
    "paper": "the paper's own table",
    "official-file": "a file of the official release",
    "second-hand": "second-hand",
    "unsourced": "source not given (the old flat form)",
}


class PublishedError(ValueError):
    """A `paper:` entry that cannot be read; the message names the cell, the key and the expected form."""


@dataclass(frozen=True)
class Published:
    """One published number (in %) of one variant and metric, and where it comes from."""

    value: Annotated[float, Bounds(ge=0, le=100)]
    """The number, in % (49.1, not 0.491)."""
    source: str
    """Where it is printed: the paper's table, the official file's name, or the paper that cites it."""
    kind: Literal["paper", "official-file", "second-hand", "unsourced"]
    """First hand (`paper`, `official-file`: graded) or not (`second-hand`, `unsourced`: never FAIL)."""
    note: str | None = None
    """A caveat shown with it (e.g. that the model size behind it is unverified)."""

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def first_hand(self) -> bool:
        """Whether a reproduction can FAIL against it."""
        return self.kind in FIRST_HAND


@dataclass(frozen=True)
class PublishedCell:
    """The published numbers of one variant (sweep cell), and the rows to show beside them."""

    numbers: dict[str, Published]
    beside: tuple[str, ...] = ()
    note: str | None = None


def read_published(paper: Any) -> dict[str, PublishedCell]:
    """The `paper:` section of a sweep file, checked; see the module doc for the form.

    Raises:
        PublishedError: not a mapping, an unknown metric or key, a number without value, source or kind, a kind
            other than paper / official-file / second-hand, a value outside 0..100, `beside` not a list of cells.
    """
    if not paper:
        return {}
    if not isinstance(paper, dict):
        raise PublishedError(f"paper: expected a mapping of cell -> published numbers, got {paper!r}")
    out = {}
    for cell, entry in paper.items():
        where = f"paper: {cell}"
        if not isinstance(entry, dict):
            raise PublishedError(f"{where}: expected a mapping of metric -> number, e.g. {{P@5: {_EXAMPLE}}}")
        unknown = set(entry) - {*METRICS, "beside", "note"}
        if unknown:
            raise PublishedError(
                f"{where}: unknown key(s) {sorted(map(str, unknown))}; a published cell has {', '.join(METRICS)}, "
                "beside and note"
            )
        numbers = {m: _number(f"{where}: {m}", entry[m]) for m in METRICS if m in entry}
        beside = entry.get("beside") or []
        if not isinstance(beside, list) or not all(isinstance(b, str) and b for b in beside):
            raise PublishedError(f"{where}: beside: expected a list of cells, e.g. [paper/gemkr-7b], got {beside!r}")
        note = entry.get("note")
        if note is not None and not (isinstance(note, str) and note):
            raise PublishedError(f"{where}: note: expected a text, got {note!r}")
        out[str(cell)] = PublishedCell(numbers, tuple(beside), note)
    return out


_EXAMPLE = '{value: 49.1, kind: official-file, source: "results_okvqa_20240611004_p5: 0.491.json"}'


def _number(where: str, raw: Any) -> Published:
    if isinstance(raw, int | float) and not isinstance(raw, bool):  # the old flat form
        return _published(where, raw, "not given", "unsourced", None)
    if not isinstance(raw, dict):
        raise PublishedError(f"{where}: expected {_EXAMPLE}, got {raw!r}")
    missing = [k for k in ("value", "source", "kind") if k not in raw]
    unknown = set(raw) - {"value", "source", "kind", "note"}
    if missing or unknown:
        problem = f"missing {', '.join(missing)}" if missing else f"unknown key(s) {sorted(map(str, unknown))}"
        raise PublishedError(f"{where}: {problem}; a published number is {_EXAMPLE} (kind: {', '.join(KINDS)})")
    if raw["kind"] not in KINDS:
        raise PublishedError(
            f"{where}: kind {raw['kind']!r}: expected one of {', '.join(KINDS)} "
            "(paper, official-file: first hand, graded; second-hand: shown, never FAIL)"
        )
    return _published(where, raw["value"], raw["source"], raw["kind"], raw.get("note"))


def _published(where: str, value: Any, source: Any, kind: str, note: Any) -> Published:
    try:
        return Published(value, source, kind, note)  # type: ignore[arg-type]
    except FieldError as exc:
        raise PublishedError(f"{where}: {exc}") from None
