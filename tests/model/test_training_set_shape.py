"""Issue #23: training-set shape switches: rows per question, and epochs of a fixed number of micro-batches."""

from collections import Counter

import pytest

from gemkr_lab.model.datamodule import EpochSampler, ResumableLoader, rows_per_question


def _epoch(n, batch, iterations, epoch=0, rank=0, world=1, resume=None):
    draws = None if iterations is None else iterations * batch * world
    sampler = EpochSampler(n, seed=3, batch_size=batch, rank=rank, world_size=world, draws=draws)
    sampler.set_epoch(epoch)
    loader = ResumableLoader(list(range(n)), batch_size=batch, sampler=sampler)
    if resume is not None:
        loader.load_state_dict(resume)
    out = [b.tolist() for b in loader]
    assert resume is not None or len(out) == len(loader)  # the length Lightning plans the epoch with
    return out, loader


def test_an_epoch_draws_its_micro_batches_from_a_fresh_shuffle():
    # 30 rows, micro-batches of 4, 5 iterations: 20 rows drawn, each at most once, the first 20 of the shuffle
    batches, _ = _epoch(30, 4, 5)
    drawn = [i for b in batches for i in b]
    assert len(batches) == 5 and all(len(b) == 4 for b in batches) and len(set(drawn)) == 20
    whole, _ = _epoch(30, 4, None)  # a pass over the rows: the same shuffle, all 30 rows
    assert drawn == [i for b in whole for i in b][:20]
    assert [i for b in _epoch(30, 4, 5, epoch=1)[0] for i in b] != drawn  # the next epoch: another shuffle


def test_more_draws_than_rows_go_on_in_another_shuffle():
    # 10 rows, micro-batches of 3, 6 iterations: 18 draws = every row once (10) + 8 rows a second time
    batches, _ = _epoch(10, 3, 6)
    counts = Counter(i for b in batches for i in b)
    assert len(batches) == 6 and sum(counts.values()) == 18
    assert sorted(counts) == list(range(10)) and sorted(Counter(counts.values()).items()) == [(1, 2), (2, 8)]
    assert len({i for b in batches[:3] for i in b}) == 9  # the first shuffle: 9 distinct rows in 3 batches


def test_iterations_per_epoch_resume_and_ranks():
    whole, loader = _epoch(10, 3, 6)
    loader.consumed = lambda: 4
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches": 4, "samples": 12}
    assert _epoch(10, 3, 6, resume=state)[0] == whole[4:]  # a resumed epoch draws exactly what was left
    ranks = [_epoch(10, 3, 6, rank=r, world=2)[0] for r in range(2)]  # global micro-batch 6: 36 draws
    single, _ = _epoch(10, 6, 6)
    assert [a + b for a, b in zip(*ranks, strict=True)] == single and len(single) == 6


def test_rows_per_question_keeps_the_first_rows_of_each_question():
    rows = [{"qid": q, "i": i} for i, q in enumerate("aabacbbd")]
    assert rows_per_question(rows, None) == rows
    assert [r["i"] for r in rows_per_question(rows, 1)] == [0, 2, 4, 7]  # first: a, b, c, d
    assert [r["i"] for r in rows_per_question(rows, 2)] == [0, 1, 2, 4, 5, 7]  # capped at 2


@pytest.mark.slow
def test_training_draws_the_hand_counted_rows_per_epoch(tmp_path, tiny_world, monkeypatch):
    """10 rows, micro-batches of 3, 4 iterations per epoch, 10 steps: epochs of 12, 12 and 6 rows drawn."""
    import dataclasses

    from gemkr_lab.config.experiment import load_experiment
    from gemkr_lab.kb.tokenize import load_tokenizer
    from gemkr_lab.model.module import GeMKRModule
    from gemkr_lab.model.train import fit

    world, prepared = tiny_world
    cfg = load_experiment("tiny-cpu/full", ["train.max_steps=10", "train.batch_size=3", "train.iterations_per_epoch=4"])
    assert cfg.train.iterations_per_epoch == 4 and cfg.train.accumulate_grad_batches == 1
    drawn: dict[int, list[str]] = {}
    step = GeMKRModule.training_step

    def spy(self, batch, batch_idx):
        drawn.setdefault(self.current_epoch, []).extend(batch.qids)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(GeMKRModule, "training_step", spy)
    fit(
        prepared,
        world,
        load_tokenizer(f"{world}/tokenizer"),
        tmp_path,
        model_config=cfg.model,
        data_config=dataclasses.replace(cfg.data, max_rows_per_question=1),
        train_config=cfg.train,
        limit_train=10,
    )
    assert {e: len(q) for e, q in drawn.items()} == {0: 12, 1: 12, 2: 6}
    for e in (0, 1):  # 12 draws of 10 rows: each row once, then 2 of them again from another shuffle
        assert len(set(drawn[e])) == 10 and sorted(Counter(Counter(drawn[e]).values()).items()) == [(1, 8), (2, 2)]
    assert drawn[0] != drawn[1]
