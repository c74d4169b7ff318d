"""The synthetic multimodal world: the embedded default dataset, small enough to train on 2 CPU cores.

Made-up creatures, each with a distinct look (size, shape, colour, pattern), are
drawn into scene images among grey distractor objects. The KB holds one passage per creature and fact
(what it eats, where it lives, when it was first seen, what it collects), naming the creature and its
look, plus distractor passages about creatures that never appear. A query is a scene and a question such
as "what does this creature eat?": the question is the same for every creature, so the text alone cannot
find the passage; the image decides.

Written in the OKVQA-GS112K layout, so the same readers, `prepare` and scoring run on it:
`corpus.csv` (kid,text), `retriever_{train,test}.json` (VRR records with gold `ctxs`), `images/*.png`
(COCO-style names), plus `boxes.json` (ground-truth boxes), `qrels_{split}.txt` and `world.json`.
Deterministic: the same seed writes identical bytes.
"""

import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw

from gemkr_lab.io import atomic_directory
from gemkr_lab.kb.tokenize import train_tokenizer

SHAPES = ["circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ring"]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 190),
    "orange": (240, 130, 30),
    "cyan": (30, 190, 200),
    "pink": (240, 110, 170),
}
PATTERNS = ["solid", "striped", "dotted", "checkered"]
FACTS = {
    "food": ("What does this creature eat?", "{name}, the {look}, eats {value} every morning."),
    "home": ("Where does this creature live?", "{name}, the {look}, lives near the {value} all year."),
    "year": ("In what year was this creature first seen?", "{name}, the {look}, was first seen in {value}."),
    "hobby": ("What does this creature collect?", "{name}, the {look}, collects {value} for its nest."),
}
VALUES = {
    "food": ["figs", "bread", "honey", "rice", "plums", "cheese", "nuts", "soup", "kelp", "beans", "pears", "oats"],
    "home": ["harbour", "forest", "desert", "valley", "library", "market", "glacier", "island", "canyon", "marsh"],
    "year": [str(y) for y in range(1801, 1999)],
    "hobby": ["pebbles", "feathers", "shells", "buttons", "coins", "leaves", "keys", "stamps", "acorns", "beads"],
}
SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "vo", "zel", "qua", "nor", "pi", "sha", "dru", "bex", "fi", "gor", "ul"]
SIZES = {
    "small": {"creatures": 24, "distractors": 24, "train_scenes": 4, "test_scenes": 1, "image": 96, "vocab": 600},
    "medium": {"creatures": 64, "distractors": 64, "train_scenes": 6, "test_scenes": 2, "image": 128, "vocab": 1000},
}
CAPTION = "a picture of a few objects."


@dataclass(frozen=True)
class Creature:
    """One entity of the world: a unique look and one value per fact."""

    name: str
    size: str
    shape: str
    colour: str
    pattern: str
    facts: dict[str, str]

    @property
    def look(self) -> str:
        """How a passage describes its appearance."""
        return f"{self.size} {self.colour} {self.pattern} {self.shape}"


def make_world(out: str | Path, seed: int = 0, size: Literal["small", "medium"] = "small", overwrite: bool = False):
    """Write the world to `out` (atomically); return the list of creatures shown in images.

    Without `overwrite`, a folder that already holds this world (its `world.json` names the same seed and size:
    the folder is written whole, so it is complete) is kept as it is, so `make-world` may be run again; any
    other existing folder is refused.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    existing = _existing_world(Path(out), seed, size)
    if existing is not None and not overwrite:
        return existing
    spec = SIZES[size]
    rng = random.Random(seed)
    looks = [(z, s, c, p) for z in ("small", "large") for s in SHAPES for c in COLOURS for p in PATTERNS]
    rng.shuffle(looks)
    names = _names(rng, spec["creatures"] + spec["distractors"])
    creatures = [_creature(rng, n, look) for n, look in zip(names, looks, strict=False)]
    shown, unseen = creatures[: spec["creatures"]], creatures[spec["creatures"] :]
    with atomic_directory(Path(out), overwrite=overwrite) as tmp:
        passages = _write_corpus(tmp, shown, unseen)
        (tmp / "images").mkdir()
        boxes: dict[str, list[dict]] = {}
        for split, n_scenes, base in (("train", spec["train_scenes"], 1), ("test", spec["test_scenes"], 5)):
            records, qrels = [], []
            for ci, c in enumerate(shown):
                for s in range(n_scenes):
                    image_id = f"COCO_{split}2014_{base * 10**8 + ci * 100 + s:012d}"
                    boxes[image_id] = _draw_scene(rng, c, spec["image"], tmp / "images" / f"{image_id}.png")
                    for fact, (question, _) in FACTS.items():
                        pid = passages[(c.name, fact)]
                        qid = f"{split}-{ci:03d}-{s}-{fact}"
                        records.append(
                            {
                                "question_id": qid,
                                "img_id": image_id,
                                "question": f"{question} {CAPTION}",
                                "caption": CAPTION,
                                "answers": {c.facts[fact]: 1.0},
                                "ctxs": [{"id": pid, "title": "", "text": "", "has_answer": True}],
                            }
                        )
                        qrels.append(f"{qid} 0 {pid} 1\n")
            rng.shuffle(records)
            _write_json(tmp / f"retriever_{split}.json", records)
            (tmp / f"qrels_{split}.txt").write_text("".join(qrels), encoding="utf-8")
        _write_json(tmp / "boxes.json", boxes)
        # the world's own small tokenizer: tiny CPU models need a small vocabulary (real data uses the LLM's)
        texts = [line.split(",", 1)[1].strip('"') for line in (tmp / "corpus.csv").read_text().splitlines()[1:]]
        questions = [q for q, _ in FACTS.values()] + [CAPTION]
        train_tokenizer(texts + questions, tmp / "tokenizer", vocab_size=spec["vocab"])
        _write_json(
            tmp / "world.json",
            {
                "seed": seed,
                "size": size,
                "caption": CAPTION,
                "creatures": [asdict(c) for c in shown],
                "unseen_creatures": [asdict(c) for c in unseen],
            },
        )
    return shown


def _existing_world(out: Path, seed: int, size: str) -> list[Creature] | None:
    """The creatures of the world already in `out` when it was made with `seed` and `size`, else None."""
    try:
        meta = json.loads((out / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("seed") != seed or meta.get("size") != size:
        return None
    try:
        return [Creature(**c) for c in meta["creatures"]]
    except (KeyError, TypeError):
        return None


def _names(rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
        if name not in out:
            out.append(name)
    return out


def _creature(rng: random.Random, name: str, look: tuple[str, str, str, str]) -> Creature:
    return Creature(name, *look, facts={fact: rng.choice(values) for fact, values in VALUES.items()})


def _write_corpus(tmp: Path, shown: list[Creature], unseen: list[Creature]) -> dict[tuple[str, str], str]:
    """One passage per creature and fact, shuffled deterministically; returns (name, fact) -> passage id."""
    rows = []
    for c in shown + unseen:
        for fact, (_, template) in FACTS.items():
            rows.append((c.name, fact, template.format(name=c.name, look=c.look, value=c.facts[fact])))
    rows.sort(key=lambda r: (hash_key(r[0] + r[1]), r[0], r[1]))
    ids = {}
    lines = ["kid,text\n"]
    for i, (name, fact, text) in enumerate(rows):
        ids[(name, fact)] = str(i)
        lines.append(f'{i},"{text}"\n')
    (tmp / "corpus.csv").write_text("".join(lines), encoding="utf-8")
    return ids


def hash_key(s: str) -> int:
    """A stable (not per-process salted) ordering key."""
    h = 2166136261
    for ch in s.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


def _draw_scene(rng: random.Random, c: Creature, side: int, path: Path) -> list[dict]:
    """The creature and 1-3 grey distractors on a light background; returns the ground-truth boxes."""
    img = Image.new("RGB", (side, side), (235, 235, 228))
    draw = ImageDraw.Draw(img)
    placed: list[tuple[int, int, int, int]] = []
    # a large creature fills 45-55% of the side, a small one 28-36%; grey distractors stay under 20%
    target = (
        rng.randint(side * 45 // 100, side * 55 // 100)
        if c.size == "large"
        else rng.randint(side * 28 // 100, side * 36 // 100)
    )
    box = _place(rng, side, target, placed)
    _draw_object(img, draw, box, c.shape, COLOURS[c.colour], c.pattern)
    objects = [{"box": list(box), "label": "creature", "is_target": True}]
    for _ in range(rng.randint(1, 3)):
        size = rng.randint(side // 8, side // 5)
        b = _place(rng, side, size, placed)
        grey = rng.randint(90, 160)
        _draw_object(img, draw, b, rng.choice(SHAPES), (grey, grey, grey), "solid")
        objects.append({"box": list(b), "label": "distractor", "is_target": False})
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    path.write_bytes(buf.getvalue())
    return objects


def _place(rng: random.Random, side: int, size: int, placed: list) -> tuple[int, int, int, int]:
    for _ in range(50):
        x, y = rng.randint(0, side - size), rng.randint(0, side - size)
        box = (x, y, x + size, y + size)
        if all(box[2] <= p[0] or box[0] >= p[2] or box[3] <= p[1] or box[1] >= p[3] for p in placed):
            break
    placed.append(box)
    return box


def _draw_object(img, draw, box, shape, colour, pattern) -> None:
    x0, y0, x1, y1 = box
    w = x1 - x0
    mask = Image.new("L", img.size, 0)
    m = ImageDraw.Draw(mask)
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, w / 2
    if shape == "circle":
        m.ellipse(box, fill=255)
    elif shape == "ring":
        m.ellipse(box, fill=255)
        m.ellipse((x0 + w * 0.3, y0 + w * 0.3, x1 - w * 0.3, y1 - w * 0.3), fill=0)
    elif shape == "square":
        m.rectangle(box, fill=255)
    elif shape == "triangle":
        m.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "diamond":
        m.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "hexagon":
        m.regular_polygon((cx, cy, r), 6, fill=255)
    elif shape == "star":
        m.regular_polygon((cx, cy, r), 5, fill=255)
        m.regular_polygon((cx, cy, r * 0.75), 5, rotation=36, fill=255)
    elif shape == "cross":
        m.rectangle((x0 + w * 0.35, y0, x1 - w * 0.35, y1), fill=255)
        m.rectangle((x0, y0 + w * 0.35, x1, y1 - w * 0.35), fill=255)
    fill = Image.new("RGB", img.size, colour)
    if pattern != "solid":
        shade = tuple(max(0, v - 110) for v in colour)
        p = ImageDraw.Draw(fill)
        step = max(4, w // 6)
        for i in range(int(x0), int(x1) + step, step):
            for j in range(int(y0), int(y1) + step, step):
                if pattern == "striped":
                    p.rectangle((i, y0, i + step // 2 - 1, y1), fill=shade)
                elif pattern == "dotted":
                    p.ellipse((i, j, i + step // 2, j + step // 2), fill=shade)
                elif pattern == "checkered" and ((i - x0) // step + (j - y0) // step) % 2 == 0:
                    p.rectangle((i, j, i + step - 1, j + step - 1), fill=shade)
    img.paste(fill, (0, 0), mask)


def _write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
