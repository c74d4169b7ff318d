"""The synthetic end-to-end path: world -> prepare -> train a tiny GeMKR -> constrained decoding -> score."""

import pytest

from gemkr_lab.config import DataConfig, DecodingConfig, ModelConfig, TrainConfig
from gemkr_lab.data.prepare import Preparer
from gemkr_lab.data.world import make_world
from gemkr_lab.decoding import write_records_run
from gemkr_lab.kb import open_index
from gemkr_lab.kb.tokenize import load_tokenizer
from gemkr_lab.metrics import QrelsRelevance, evaluate, read_qrels, read_run
from gemkr_lab.model.infer import decode_batches
from gemkr_lab.model.train import fit


@pytest.mark.slow
def test_world_to_scores(tmp_path):
    make_world(tmp_path / "w", seed=2)
    Preparer(DataConfig(), tmp_path / "w", tmp_path / "p", progress=False).run()
    tok = load_tokenizer(tmp_path / "w" / "tokenizer")
    config = ModelConfig(vision_model="tiny-vit", use_lora=False, train_vision=True)
    train = TrainConfig(max_steps=30, batch_size=8, accumulate_grad_batches=1, warmup_steps=3, lr=2e-3)
    module = fit(
        tmp_path / "p",
        tmp_path / "w",
        tok,
        tmp_path / "run",
        model_config=config,
        data_config=DataConfig(),
        train_config=train,
        limit_train=64,
        accelerator="cpu",
    )
    data = module.datamodule
    index = open_index(tmp_path / "p" / "index")
    batches = list(data.test_dataloader())[:2]
    records = decode_batches(module.model, batches, index, DecodingConfig(num_groups=4, max_clue_tokens=6), tok)
    assert len(records) == sum(len(b.qids) for b in batches)
    for r in records:
        assert len(r.clues) == 4 and all(c.count > 0 for c in r.clues)  # constrained: every clue is in the KB
    write_records_run(tmp_path / "run.txt", records)
    ev = evaluate(read_run(tmp_path / "run.txt"), QrelsRelevance(read_qrels(tmp_path / "w" / "qrels_test.txt")))
    assert 0.0 <= ev.means["R@5"] <= 1.0 and len(ev.per_query) == 96
