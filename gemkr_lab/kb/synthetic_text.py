"""Made-up encyclopedia passages: a small text corpus for index and tokenizer tests."""

import random

_SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "vo", "zel", "qua", "nor", "pi", "sha", "dru"]
_COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
_SHAPES = ["circle", "square", "triangle", "star", "hexagon", "diamond"]
_PLACES = ["harbour", "forest", "desert", "valley", "library", "market", "mountain", "island"]
_FOODS = ["figs", "bread", "honey", "rice", "plums", "cheese", "nuts", "soup"]


def synthetic_passages(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Made-up encyclopedia passages about `n` entities (deterministic for a seed)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name = "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize()
        text = (
            f"{name} is a {rng.choice(_COLOURS)} {rng.choice(_SHAPES)} that lives near the "
            f"{rng.choice(_PLACES)}. {name} eats {rng.choice(_FOODS)} and was first seen in "
            f"{1800 + rng.randrange(200)}."
        )
        out.append({"id": f"p{i:05d}", "title": name, "text": text})
    return out
