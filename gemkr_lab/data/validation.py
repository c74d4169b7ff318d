"""The validation split: training questions held out, by whole images, for tuning.

Searches choose hyperparameters on it and report the test split once, at their end. It is drawn from the
training questions only, so the test split is never touched; an image's questions go together, so no image
(and no question) of the validation split is trained on. The draw is a seeded permutation of the sorted image
ids: the same questions, seed and size give the same split on any machine.
"""

import random
from collections import defaultdict
from dataclasses import dataclass

from gemkr_lab.data.queries import DataError, Query


@dataclass(frozen=True)
class Split:
    """Training questions left for training, those held out for validation, and how they were drawn."""

    train: list[Query]
    validation: list[Query]
    description: dict


def hold_out(queries: list[Query], size: int | float | None, seed: int) -> Split:
    """Hold out whole images' questions until `size` questions (an int) or that share of them (a float).

    Images are taken in a seeded random order until at least the wanted number of questions is held out, so a
    count may be exceeded by the last image's other questions. Both parts keep the file order.
    """
    if not size:
        return Split(list(queries), [], {"questions": 0})
    wanted = size if isinstance(size, int) else max(1, round(size * len(queries)))
    by_image: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(queries):
        by_image[q.image_id].append(i)
    if wanted >= len(queries) or len(by_image) < 2:
        raise DataError(
            f"data.validation_size={size}: {len(queries)} training questions on {len(by_image)} images leave "
            "nothing to train on; hold out fewer (e.g. 0.1)"
        )
    order = sorted(by_image)
    random.Random(seed).shuffle(order)
    held: set[int] = set()
    images = 0
    for image in order:
        if len(held) >= wanted:
            break
        held.update(by_image[image])
        images += 1
    if len(held) >= len(queries):
        raise DataError(f"data.validation_size={size}: the held-out images hold every training question")
    validation = [q for i, q in enumerate(queries) if i in held]
    train = [q for i, q in enumerate(queries) if i not in held]
    description = {
        "questions": len(validation),
        "images": images,
        "training_questions_before": len(queries),
        "size": size,
        "seed": seed,
        "rule": "whole images in a seeded random order, disjoint from training by question and by image",
    }
    return Split(train, validation, description)
