"""The training sampler under DDP: rank r's batches are slices of the single-process batches of the global size."""

import pytest

from gemkr_lab.model.datamodule import EpochSampler, ResumableLoader


def _batches(n, batch, rank=0, world=1, drop_last=False, epoch=0, resume=None):
    sampler = EpochSampler(n, seed=7, batch_size=batch, rank=rank, world_size=world, drop_last=drop_last)
    sampler.set_epoch(epoch)
    loader = ResumableLoader(list(range(n)), batch_size=batch, sampler=sampler, drop_last=drop_last)
    if resume is not None:
        loader.load_state_dict(resume)
    out = [b.tolist() for b in loader]
    assert resume is not None or len(out) == len(loader)  # the length Lightning plans the epoch with
    return out, loader


@pytest.mark.parametrize("n", [16, 17, 20, 21, 23, 24])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_split_each_single_process_batch(n, drop_last):
    for epoch in (0, 1):
        single, _ = _batches(n, 8, drop_last=drop_last, epoch=epoch)
        ranks = [_batches(n, 4, r, 2, drop_last, epoch)[0] for r in range(2)]
        assert len(ranks[0]) == len(ranks[1])  # DDP needs as many batches on every rank
        if n % 8 == 1 and not drop_last:  # a last global batch of 1 sample cannot feed 2 ranks: dropped
            single = single[:-1]
        assert [a + b for a, b in zip(*ranks, strict=True)] == single
        assert all(len(b) == 4 for r in ranks for b in r[: n // 8])  # contiguous slices of full global batches


def test_a_mid_epoch_resume_continues_from_the_global_position():
    whole = [_batches(22, 3, r, 2)[0] for r in range(2)]
    _, loader = _batches(22, 3, 1, 2)
    loader.consumed = lambda: 2  # two micro-batches of the epoch done on each rank
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches": 2, "samples": 12}  # the global position: 2 x 3 x 2 samples
    for r in range(2):
        rest, _ = _batches(22, 3, r, 2, resume=state)
        assert rest == whole[r][2:]
    single, _ = _batches(22, 6, resume=state)  # the same position in a single-process run of the global batch
    assert single == [a + b for a, b in zip(whole[0][2:], whole[1][2:], strict=True)]


def test_a_checkpoint_without_the_global_position_resumes_by_batches():
    whole, _ = _batches(10, 3)
    rest, _ = _batches(10, 3, resume={"epoch": 0, "batches": 1})
    assert rest == whole[1:]
