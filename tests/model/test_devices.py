"""Device placement without a GPU: the model on the `meta` device, and spies on where work runs.

A tensor created on the CPU by mistake meets meta tensors and raises, so these tests fail for the same bugs
that would crash a GPU run (a CPU index tensor in the forward, CPU crops into a GPU tower, decoding on the CPU
after Lightning moved the module back).
"""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from gemkr_lab.config import ModelConfig
from gemkr_lab.model.gemkr import Batch, GeMKR

TINY = ModelConfig(vision_model="tiny-vit", llm="tiny-llama", use_lora=True)


def _batch(device, with_targets=True):
    return Batch(
        images=torch.zeros(2, 3, 64, 64, device=device),
        objects=torch.zeros(2, 10, 64, device=device),
        before=[[1, 5, 6], [1, 7]],
        after=[8, 9],
        targets=[[10, 11], [12]] if with_targets else None,
        qids=["a", "b"],
    )


def test_forward_and_prompt_embeds_run_on_the_meta_device():
    """Everything up to the LLM call (vision, prefixes, projector, sequence assembly, labels) on meta.

    The LLM itself is transformers' code, whose mask helpers read values (`.item()`), which meta tensors
    have not; a spy stands in for its call and checks that every input it gets is on the model's device.
    """
    for config in (TINY, ModelConfig(vision_model="tiny-vit", attention_flow="joint", use_lora=False)):
        model = GeMKR(config, 64, device="meta")
        assert {p.device.type for p in model.parameters()} == {"meta"}
        got: dict[str, str] = {}

        def llm(got=got, **inputs):
            got.update({k: v.device.type for k, v in inputs.items()})
            return SimpleNamespace(logits=inputs["inputs_embeds"][..., :1].expand(-1, -1, 64))

        model.llm.forward = llm
        loss = model(_batch("meta"))
        assert loss.device.type == "meta" and loss.shape == ()
        assert got == {"inputs_embeds": "meta", "attention_mask": "meta"}  # the loss is taken from the logits
        embeds, mask = model.prompt_embeds(_batch("meta", with_targets=False))
        assert embeds.device.type == "meta" and mask.device.type == "meta"


def test_a_batch_on_another_device_than_the_model_fails_fast():
    model = GeMKR(TINY, 64, device="meta")
    try:
        model(_batch("cpu"))
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        assert "meta" in str(exc) or "device" in str(exc)
    else:
        raise AssertionError("a CPU batch into a meta model must not run")


def test_region_features_are_computed_on_the_towers_device(tiny_world, monkeypatch):
    from gemkr_lab.config import DataConfig
    from gemkr_lab.kb.tokenize import load_tokenizer
    from gemkr_lab.model.datamodule import GeMKRDataModule

    world, prepared = tiny_world
    model = GeMKR(TINY, 64)
    data = GeMKRDataModule(prepared, world, load_tokenizer(f"{world}/tokenizer"), DataConfig(), model.vision, 4)
    data.setup()
    data.train_rows = data.train_rows[:6]
    seen = []

    def spy(crops):
        seen.append(crops.device.type)
        return torch.zeros(crops.shape[0], 64, device=crops.device)

    model.vision.to("meta")  # where Lightning would have put the tower (the GPU)
    monkeypatch.setattr(model.vision, "encode_regions", spy)
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t: torch.zeros(t.shape))  # meta has no values to copy back
    data.train_dataloader()  # makes the loader: every image's features are computed now, in this process
    assert seen and set(seen) == {"meta"}
    assert len(data._features) == len({r["image_id"] for r in data.train_rows})


@pytest.mark.slow  # trains a cell
def test_run_cell_decodes_on_the_runs_device_after_fit(tmp_path, tiny_overrides, monkeypatch):
    """Lightning hands the module back on the CPU after `fit`; decoding must go back to the run's device."""
    from gemkr_lab.config.experiment import load_experiment
    from gemkr_lab.model import infer, train
    from gemkr_lab.run.cell import run_cell

    class Stop(Exception):
        pass

    used = []

    def spy_decode(model, batches, *args, **kwargs):
        used.append(next(model.parameters()).device.type)
        raise Stop

    from gemkr_lab.model.datamodule import GeMKRDataModule

    monkeypatch.setattr(train, "run_device", lambda cfg: torch.device("meta"))  # stands in for "cuda"
    monkeypatch.setattr(GeMKRDataModule, "cache_region_features", lambda self, split: None)  # tested above
    monkeypatch.setattr(infer, "decode_batches", spy_decode)
    with contextlib.suppress(Stop):
        run_cell(load_experiment("tiny-cpu/full", tiny_overrides), 0, tmp_path)
    assert used == ["meta"]
