"""Every preset under experiments/ loads, and its defining switch takes effect on the objects it builds.

Paper presets are built at their real shapes on the meta device (EVA-g, LLaMA-7B/13B: no weights needed), or,
where something must run, at tiny shapes: only paths and sizes are shrunk (`SHRINK`), never a key the preset
itself sets. Every tiny-cpu preset runs a training step as it is, on data prepared with its own data settings.
"""

import dataclasses
import math
from functools import cache
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from gemkr_lab.config.checks import load_yaml
from gemkr_lab.config.experiment import EXPERIMENTS_DIR, load_experiment

PRESETS = sorted(str(p.relative_to(EXPERIMENTS_DIR))[: -len(".yaml")] for p in EXPERIMENTS_DIR.rglob("*.yaml"))
TINY = [p for p in PRESETS if p.startswith("tiny-cpu/")]


def named(*names: str) -> list:
    """The presets (paper and tiny-cpu) with one of these names; a paper preset with a tiny-cpu twin is `slow` (the
    inner loop checks the switch on the twin, `make test` on both)."""
    out = [p for p in PRESETS if p.split("/", 1)[1] in names]
    assert out, names
    twins = {p.split("/", 1)[1] for p in out if p.startswith("tiny-cpu/")}
    slow = [p for p in out if p.startswith("paper/") and p.split("/", 1)[1] in twins]
    return [pytest.param(p, marks=pytest.mark.slow) if p in slow else p for p in out]


def own_keys(preset: str) -> set[str]:
    """Dotted keys the preset's own file sets (not its bases')."""

    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]

    diff = load_yaml((EXPERIMENTS_DIR / f"{preset}.yaml").read_text(encoding="utf-8")) or {}
    return set(leaves(diff)) - {"base"}


# ---- every preset loads, and every preset is checked below --------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads(preset):
    cfg = load_experiment(preset)
    assert cfg.name == preset
    assert cfg.decoding.clue_cap == cfg.data.clue_max_tokens  # one clue-length knob


CHECKED: dict[str, str] = {}  # preset name -> the test that checks its defining switch


def checks(*names: str):
    """Register the decorated test as the check of these presets' defining switches."""

    def mark(fn):
        for name in names:
            CHECKED[name] = fn.__name__
        return fn

    return mark


def test_every_preset_has_a_check_of_its_defining_switch():
    unchecked = sorted({p.split("/", 1)[1] for p in PRESETS} - set(CHECKED))
    assert not unchecked, f"presets without a test of their defining switch: {unchecked}"


def test_paper_presets_are_small_diffs_over_the_official_recipe():
    for preset in (p for p in PRESETS if p.startswith("paper/") and p != "paper/gemkr-7b"):
        diff = load_yaml((EXPERIMENTS_DIR / f"{preset}.yaml").read_text(encoding="utf-8"))
        assert diff["base"] == "paper/gemkr-7b", preset
        assert len(diff) <= 3, preset  # base + one or two lines


# ---- shared builders ------------------------------------------------------------------------------------------

SHRINK = {  # paths and sizes only
    "data_root": None,  # the tiny world
    "prepared": None,  # prepared with the preset's data settings
    "tokenizer": None,
    "data.dataset": "synthetic",
    "data.detector": "ground_truth",
    "data.yolo_weights": None,
    "model.vision_model": "tiny-vit",
    "model.vision_weights": None,
    "model.llm": "tiny-llama",
    "model.llm_dtype": "float32",
    "train.precision": "32-true",
}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory, tiny_world, tiny_llama):
    """The tiny world, its prepared copy for a data config and a tiny LM factory.

    One prepared copy per prepare-time data setting (the shared one for the default).
    """
    from gemkr_lab.config import DataConfig
    from gemkr_lab.data.prepare import Preparer

    world, default = tiny_world
    made: dict = {}

    def prepared_for(data) -> str:
        clue_keys = ("clue_max_tokens", "clue_min_tokens", "clue_length_policy", "clue_target_tokens")
        settings = dataclasses.replace(DataConfig(), **{k: getattr(data, k) for k in clue_keys})
        if settings == DataConfig():
            return default
        if settings not in made:
            out = tmp_path_factory.mktemp("prepared")
            Preparer(settings, world, out, progress=False).run()
            made[settings] = str(out)
        return made[settings]

    return world, prepared_for, tiny_llama


def tiny(preset: str, worlds, **extra):
    """The preset at tiny shapes on the tiny world; refuses to shrink a key the preset itself sets."""
    world, prepared_for, _ = worlds
    cfg = load_experiment(preset)
    if preset.startswith("tiny-cpu/"):
        values = {"data_root": world}
    else:
        touched = own_keys(preset) & (set(SHRINK) - {"data_root", "prepared", "tokenizer"})  # paths are remade
        assert not touched or preset == "paper/gemkr-7b", f"{preset} is defined by {touched}: check it at full shape"
        values = dict(SHRINK, data_root=world)
    values["prepared"] = prepared_for(cfg.data)
    values |= extra
    return load_experiment(preset, [f"{k}={'null' if v is None else v}" for k, v in values.items()])


@cache
def meta_model(preset: str):
    """The preset's GeMKR at its real shapes on the meta device (a named LLaMA shape for paper presets)."""
    from gemkr_lab.model.gemkr import GeMKR

    cfg = load_experiment(preset)
    shape = None if cfg.model.llm == "tiny-llama" else Path(cfg.model.llm).name
    return GeMKR(cfg.model, 32000 if shape else 400, device="meta", llm_shape=shape)


def tiny_parts(cfg, worlds, vision=None):
    """Tokenizer, tiny GeMKR and set-up datamodule of a tiny config."""
    from gemkr_lab.kb.tokenize import load_tokenizer
    from gemkr_lab.model.datamodule import GeMKRDataModule
    from gemkr_lab.model.gemkr import GeMKR

    torch.manual_seed(0)
    tok = load_tokenizer(Path(cfg.data_root) / "tokenizer")
    model = GeMKR(cfg.model, len(tok))
    data = GeMKRDataModule(
        cfg.prepared,
        cfg.data_root,
        tok,
        cfg.data,
        vision or model.vision,
        cfg.train.batch_size,
        drop_last=cfg.train.drop_last,
    )
    data.setup()
    return tok, model, data


def decode(cfg, worlds, queries: int = 2, seed: int = 0):
    """Records of `queries` random prompts decoded with the preset's decoding config by a random tiny LM."""
    import numpy as np

    from gemkr_lab.decoding import ClueDecoder
    from gemkr_lab.kb import open_index
    from gemkr_lab.kb.tokenize import load_tokenizer

    tok = load_tokenizer(Path(cfg.data_root) / "tokenizer")
    index = open_index(Path(cfg.prepared) / "index")
    prompts = torch.as_tensor(np.random.default_rng(seed).integers(4, len(tok), size=(queries, 6)))
    decoder = ClueDecoder(worlds[2](len(tok), seed=seed), index, cfg.decoding, tokenizer=tok)
    return decoder.decode([str(i) for i in range(queries)], input_ids=prompts), index


def frozen_cls(vit, images):
    """CLS of the tower without prefixes (the frozen tower's output)."""
    x = vit.tower._embeds(images)
    for block in vit.blocks:
        x = block(x)
    return x[:, 0]


# ---- the official recipe --------------------------------------------------------------------------------------


class _FakeTrainer:
    """Stands in for lightning's Trainer inside `fit`: records what it is given, trains nothing."""

    given: ClassVar[dict] = {}

    def __init__(self, **kwargs) -> None:
        _FakeTrainer.given = kwargs

    def fit(self, module, datamodule=None, ckpt_path=None) -> None:
        _FakeTrainer.given["datamodule"] = datamodule

    def save_checkpoint(self, path) -> None:
        _FakeTrainer.given["saved"] = path


@checks("gemkr-7b", "official-recipe")
@pytest.mark.parametrize("preset", ["paper/gemkr-7b", "tiny-cpu/official-recipe"])
def test_official_recipe(preset, worlds, tmp_path, monkeypatch):
    """No clipping, warmup in micro-batches, RandomResizedCrop augmentation and drop_last reach the objects."""
    import lightning as L
    from torchvision.transforms import v2 as T

    from gemkr_lab.kb.tokenize import load_tokenizer
    from gemkr_lab.model.train import fit

    cfg = tiny(preset, worlds)
    train = cfg.train
    assert (train.gradient_clip_val, train.warmup_unit, train.drop_last) == (None, "micro_batches", True)
    assert cfg.data.augment_train_images and train.accumulate_grad_batches == 2
    if preset.startswith("paper/"):  # the official loop's epochs: 2400 micro-batches, 5 of them in max_steps
        written = load_experiment(preset).train
        assert written.iterations_per_epoch == 2400
        assert written.max_steps * written.accumulate_grad_batches == 5 * written.iterations_per_epoch
    monkeypatch.setattr(L, "Trainer", _FakeTrainer)
    tok = load_tokenizer(Path(cfg.data_root) / "tokenizer")
    module = fit(
        cfg.prepared, cfg.data_root, tok, tmp_path, model_config=cfg.model, data_config=cfg.data, train_config=train
    )
    given = _FakeTrainer.given
    assert given["gradient_clip_val"] is None and given["accumulate_grad_batches"] == 2
    # warmup over `warmup_steps` micro-batches = warmup_steps / 2 optimizer steps, then the cosine
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    rate = lambda step: scheduler.lr_lambdas[0](step) * train.lr  # noqa: E731
    warm = train.warmup_steps // 2
    start, peak = train.warmup_start_lr, train.lr
    assert rate(0) == pytest.approx(start + (peak - start) * 1 / train.warmup_steps)
    assert rate(warm - 1) == pytest.approx(start + (peak - start) * (train.warmup_steps - 1) / train.warmup_steps)
    cosine = train.min_lr + (peak - train.min_lr) * 0.5 * (
        1 + math.cos(math.pi * (2 * warm + 1) / (2 * train.max_steps))
    )
    assert rate(warm) == pytest.approx(cosine) and rate(warm) > 0.99 * peak
    # the datamodule `fit` trains on: augmented training images, plain test images, the last partial batch dropped
    data = given["datamodule"]
    data.setup()
    crops = [t for t in data.train_transform.transforms if isinstance(t, T.RandomResizedCrop)]
    assert len(crops) == 1 and crops[0].scale == (0.5, 1.0)
    assert crops[0].interpolation == T.InterpolationMode.BICUBIC
    assert not any(isinstance(t, T.RandomResizedCrop) for t in data.transform.transforms)
    row = data.train_rows[0]
    crop = data.item(row, "train", index=0)["image"]
    assert torch.equal(crop, data.item(row, "train", index=0)["image"])  # drawn per (seed, epoch, sample)
    assert not torch.equal(crop, data.item(row, "train", index=1)["image"])  # random crops
    assert torch.equal(data.item(row, "test")["image"], data.item(row, "test")["image"])
    image = data._images.load(row["image_id"])
    assert data.item(data.test_rows[0], "test")["image"].shape == data.train_transform(image).shape
    loader = data.train_dataloader()
    per_epoch = train.iterations_per_epoch or len(data.train_rows) // train.batch_size  # paper: the official 2400
    assert loader.drop_last and len(loader) == per_epoch


def test_the_official_recipe_keeps_the_fp16_tower_and_the_bug_fixes():
    """gemkr-7b: EVA-g's linear/conv weights in fp16 (norms, embeddings, prefixes fp32); official bugs stay fixed."""
    cfg = load_experiment("paper/gemkr-7b")
    vit = meta_model("paper/gemkr-7b").vision
    weights = {n: p.dtype for n, p in vit.tower.named_parameters()}
    assert {weights[n] for n in weights if n.endswith(("in_proj_weight", "c_fc.weight", "conv1.weight"))} == {
        torch.float16
    }
    assert {weights[n] for n in weights if "ln_" in n} == {torch.float32}
    assert weights["positional_embedding"] == vit.prefix.dtype == vit.gate.dtype == torch.float32
    assert cfg.data.append_caption  # the caption stays in the query, as the official code
    assert not cfg.data.zero_region_features_at_test and cfg.data.object_order == "confidence"
    assert not cfg.decoding.allow_bos_eos_first_token and not cfg.decoding.llm_in_8bit


def test_the_fp16_tower_runs_under_autocast(worlds):
    """The official tower precision at tiny shapes (CPU autocast): finite fp16 features, fp32 prefix gradients."""
    cfg = tiny("paper/gemkr-7b", worlds)
    assert cfg.model.vision_dtype == "float16"
    _, model, data = tiny_parts(cfg, worlds)
    batch = next(iter(data.train_dataloader()))
    cls, _prefix = model.vision(batch.images, batch.objects)
    assert cls.dtype == torch.float16 and torch.isfinite(cls).all()
    model(batch).backward()
    assert model.vision.prefix.grad.dtype == torch.float32 and model.vision.gate.grad.abs().sum() > 0


# ---- model shapes and switches at full shape (meta device) ------------------------------------------------------


@checks("gemkr-13b")
def test_13b_counts_the_papers_14m_trainable_parameters():
    assert meta_model("paper/gemkr-7b").components()["total"] == 10_247_488  # gemkr_spec.md §2.6
    model = meta_model("paper/gemkr-13b")
    assert model.llm.config.hidden_size == 5120 and model.components()["total"] == 14_049_600


@checks("vit-l-14")
def test_vit_l_14_is_the_papers_tower():
    vit = meta_model("paper/vit-l-14").vision
    assert (vit.spec.layers, vit.spec.width, vit.n_prefixed) == (24, 1024, 12)
    assert vit.prefix.shape == (12, 10, 1024)


@checks("no-object-prefix")
@pytest.mark.parametrize("preset", named("no-object-prefix"))
def test_no_object_prefix_has_no_prefix_parameters(preset, worlds):
    vit = meta_model(preset).vision
    assert vit.n_prefixed == 0 and not any("prefix" in n or "gate" in n for n, _ in vit.named_parameters())
    parts = meta_model(preset).components()
    assert parts["prefix"] == parts["gates"] == 0
    _, model, data = tiny_parts(tiny(preset, worlds), worlds)
    batch = next(iter(data.test_dataloader()))
    assert model.visual_tokens(batch.images, batch.objects).shape[1] == 1  # CLS only


@checks("prefix-layers-10", "prefix-layers-30", "prefix-layers-1", "prefix-layers-4")
@pytest.mark.parametrize("preset", named("prefix-layers-10", "prefix-layers-30", "prefix-layers-1", "prefix-layers-4"))
def test_prefixed_layers(preset):
    n = int(preset.rsplit("-", 1)[1])
    vit = meta_model(preset).vision
    assert vit.n_prefixed == n and vit.prefix.shape[0] == n and vit.gate.shape == (n, vit.spec.heads)
    assert meta_model(preset).components()["gates"] == n * vit.spec.heads


@checks("prefix-length-5", "prefix-length-20")
@pytest.mark.parametrize("preset", named("prefix-length-5", "prefix-length-20"))
def test_prefix_length(preset, worlds):
    n = int(preset.rsplit("-", 1)[1])
    vit = meta_model(preset).vision
    assert vit.prefix.shape[1] == n
    _, model, data = tiny_parts(tiny(preset, worlds), worlds)
    batch = next(iter(data.train_dataloader()))  # n object slots (zero beyond the detections)
    assert batch.objects.shape[1] == n and model.vision.prefix.shape[1] == n
    assert torch.isfinite(model(batch))


@checks("text-only")
@pytest.mark.parametrize("preset", named("text-only"))
def test_text_only_gives_the_llm_no_visual_token(preset, worlds):
    parts = meta_model(preset).components()
    assert parts["prefix"] == parts["gates"] == parts["projector"] == 0
    _, model, data = tiny_parts(tiny(preset, worlds), worlds)
    batch = next(iter(data.test_dataloader()))
    assert model.visual_tokens(batch.images, batch.objects).shape[1] == 0


@checks("base", "full", "lora")
@pytest.mark.parametrize("preset", ["tiny-cpu/base", "tiny-cpu/full", "tiny-cpu/lora"])
def test_tiny_models(preset):
    model = meta_model(preset)
    assert (model.config.vision_model, model.config.llm) == ("tiny-vit", "tiny-llama")
    has_lora = any("lora_" in n for n, _ in model.llm.named_parameters())
    assert has_lora == (preset == "tiny-cpu/lora") == ("llm (lora)" in model.components())


# ---- attention flows at tiny shapes --------------------------------------------------------------------------


FP32 = {"model.vision_dtype": "float32"}  # exact comparisons (the fp16 tower has its own test)


def reference_block(block, x, prefix, gate, flow):
    """One prefixed block written from the spec's formulas (gemkr_spec.md §2.3), independently of the model."""
    b, n, width = x.shape
    heads = block.attn.num_heads
    d = width // heads
    w, bias = block.attn.in_proj_weight, block.attn.in_proj_bias
    h = block.ln_1(x)

    def proj(t, part):
        out = t @ w[part * width : (part + 1) * width].T + bias[part * width : (part + 1) * width]
        return out.view(b, -1, heads, d).transpose(1, 2)

    q, k, v, k_a, v_a = proj(h, 0), proj(h, 1), proj(h, 2), proj(prefix, 1), proj(prefix, 2)
    s_a, s_x = q @ k_a.transpose(-1, -2) / math.sqrt(d), q @ k.transpose(-1, -2) / math.sqrt(d)
    g = gate.view(1, heads, 1, 1)
    if flow == "dual":
        out = g * (s_a.softmax(-1) @ v_a) + s_x.softmax(-1) @ v
    else:
        p = torch.cat([s_a, s_x], dim=-1).softmax(-1)
        out = g * (p[..., : k_a.shape[2]] @ v_a) + p[..., k_a.shape[2] :] @ v
    y = x + block.ls_1(block.attn.out_proj(out.transpose(1, 2).reshape(b, n, width)))
    return y + block.ls_2(block.mlp(block.ln_2(y)))


@checks("joint-attention")
@pytest.mark.parametrize("preset", named("joint-attention"))
def test_joint_attention_is_one_softmax(preset, worlds):
    from gemkr_lab.model.vision import PrefixedViT

    torch.manual_seed(0)
    joint = PrefixedViT(tiny(preset, worlds, **FP32).model)
    dual = PrefixedViT(tiny(preset, worlds, **FP32, **{"model.attention_flow": "dual"}).model, tower=joint.tower)
    block, gate = joint.blocks[-1], torch.randn(joint.spec.heads)
    x, prefix = torch.randn(2, 17, joint.spec.width), torch.randn(2, 10, joint.spec.width)
    with torch.no_grad():
        out = joint._prefixed_block(block, x, prefix, gate)
        torch.testing.assert_close(out, reference_block(block, x, prefix, gate, "joint"))
        assert not torch.allclose(out, reference_block(block, x, prefix, gate, "dual"), atol=1e-3)
        torch.testing.assert_close(
            dual._prefixed_block(block, x, prefix, gate), reference_block(block, x, prefix, gate, "dual")
        )


@checks("no-gate")
@pytest.mark.parametrize("preset", named("no-gate"))
def test_without_gate_the_prefix_flow_enters_unscaled(preset, worlds):
    from gemkr_lab.model.vision import PrefixedViT

    torch.manual_seed(0)
    ungated = PrefixedViT(tiny(preset, worlds, **FP32).model)
    gated = PrefixedViT(tiny(preset, worlds, **FP32, **{"model.use_gate": True}).model, tower=ungated.tower)
    gated.load_state_dict(ungated.state_dict())
    images, objects = torch.randn(2, 3, 64, 64), torch.randn(2, 10, 64)
    with torch.no_grad():
        frozen = frozen_cls(ungated, images)
        torch.testing.assert_close(gated(images, objects)[0], frozen)  # zero gate: the frozen tower
        assert not torch.allclose(ungated(images, objects)[0], frozen, atol=1e-3)  # same zero gate, ignored
    assert meta_model(preset).components()["gates"] == 0


@checks("no-object-features")
@pytest.mark.parametrize("preset", named("no-object-features"))
def test_without_object_features_objects_change_nothing(preset, worlds):
    from gemkr_lab.model.vision import PrefixedViT

    torch.manual_seed(0)
    vit = PrefixedViT(tiny(preset, worlds, **FP32).model)
    vit.gate.data.normal_()
    images, objects = torch.randn(2, 3, 64, 64), torch.randn(2, 10, 64)
    with torch.no_grad():
        cls, prefix = vit(images, objects)
        cls0, prefix0 = vit(images, torch.zeros_like(objects))
        torch.testing.assert_close((cls, prefix), (cls0, prefix0))
        with_features = PrefixedViT(
            tiny(preset, worlds, **FP32, **{"model.use_object_features": True}).model, vit.tower
        )
        with_features.load_state_dict(vit.state_dict())
        assert not torch.allclose(with_features(images, objects)[1], prefix)


# ---- data switches -------------------------------------------------------------------------------------------


@checks("question-only")
@pytest.mark.parametrize("preset", named("question-only"))
def test_question_only_leaves_the_caption_out(preset, worlds):
    tok, _, data = tiny_parts(tiny(preset, worlds), worlds)
    _, _, with_caption = tiny_parts(tiny(preset, worlds, **{"data.append_caption": True}), worlds)
    row = data.test_rows[0]
    assert row["caption"] and row["question"] in tok.decode(data.item(row, "test")["before"])
    assert row["caption"] not in tok.decode(data.item(row, "test")["before"])
    assert row["caption"] in tok.decode(with_caption.item(row, "test")["before"])


@checks("zero-region-features-at-test")
@pytest.mark.parametrize("preset", named("zero-region-features-at-test"))
def test_region_features_are_zero_at_test_only(preset, worlds):
    _, _, data = tiny_parts(tiny(preset, worlds), worlds)
    assert all(not data.region_features(r["image_id"], "test").any() for r in data.test_rows[:8])
    assert any(data.region_features(r["image_id"], "train").any() for r in data.train_rows[:8])


@checks("official-object-order")
@pytest.mark.parametrize("preset", named("official-object-order"))
def test_official_object_order_is_arbitrary_but_fixed(preset, worlds):
    _, model, shuffled = tiny_parts(tiny(preset, worlds), worlds)
    by_confidence = tiny_parts(tiny(preset, worlds, **{"data.object_order": "confidence"}), worlds, model.vision)[2]
    again = tiny_parts(tiny(preset, worlds), worlds, model.vision)[2]
    moved = 0
    for image in {r["image_id"] for r in shuffled.train_rows[:40]}:
        a, b = shuffled.region_features(image, "train"), by_confidence.region_features(image, "train")
        assert torch.equal(a, again.region_features(image, "train"))  # fixed per image
        # the same objects: each crop's features, up to the last bits (a crop's place in the batch may change the
        # GEMM's summation order, as it does in portable numerics, where convolutions run on MKL's GEMM)
        rows_a, rows_b = sorted(a.tolist()), sorted(b.tolist())
        assert torch.allclose(torch.tensor(rows_a), torch.tensor(rows_b), rtol=1e-5, atol=1e-6)
        moved += not torch.equal(a, b)
    assert moved  # in another order


@checks("clue-length-5", "clue-length-7", "clue-length-12")
@pytest.mark.parametrize("preset", named("clue-length-5", "clue-length-7", "clue-length-12"))
def test_clue_length_targets_are_centred_on_n(preset, worlds):
    import json

    n = int(preset.rsplit("-", 1)[1])
    cfg = load_experiment(preset)
    base = load_experiment(preset.split("/")[0] + ("/base" if preset.startswith("tiny") else "/gemkr-7b"))
    assert (cfg.data.clue_length_policy, cfg.data.clue_target_tokens) == ("target_length", n)
    assert base.data.clue_length_policy == "shortest_unique"
    assert cfg.data.clue_max_tokens == cfg.decoding.clue_cap == max(n, base.data.clue_max_tokens)
    assert cfg.prepared != base.prepared  # its own prepared data
    small = tiny(preset, worlds)
    rows = Path(small.prepared, "instructions_train.jsonl").read_text().splitlines()
    lengths = [len(json.loads(r)["clue_tokens"]) for r in rows]
    assert min(lengths) == n and max(lengths) <= cfg.data.clue_max_tokens  # n, or the nearest the passage allows
    records, _ = decode(small, worlds)
    assert all(len(c.tokens) <= cfg.decoding.clue_cap for r in records for c in r.clues)


# ---- decoding switches ---------------------------------------------------------------------------------------


@checks("beams-5", "beams-20")
@pytest.mark.parametrize("preset", named("beams-5", "beams-20"))
def test_beam_size(preset, worlds):
    n = int(preset.rsplit("-", 1)[1])
    cfg = tiny(preset, worlds)
    assert (cfg.decoding.search, cfg.decoding.groups, cfg.decoding.num_clues) == ("diverse", n, n)
    records, _ = decode(cfg, worlds)
    assert all(len(r.clues) == n for r in records)


@checks("plain-beam-search")
@pytest.mark.parametrize("preset", named("plain-beam-search"))
def test_plain_beam_search_has_one_group_and_no_diversity(preset, worlds):
    cfg = tiny(preset, worlds)
    assert (cfg.decoding.groups, cfg.decoding.beams) == (1, 10)
    records, _ = decode(cfg, worlds)
    assert all(len(r.clues) == 10 for r in records)
    penalised = dataclasses.replace(cfg, decoding=dataclasses.replace(cfg.decoding, diversity_penalty=1000.0))
    assert [[c.tokens for c in r.clues] for r in decode(penalised, worlds)[0]] == [
        [c.tokens for c in r.clues] for r in records
    ]  # the penalty of diverse search plays no part


@checks("unconstrained")
@pytest.mark.parametrize("preset", named("unconstrained"))
def test_unconstrained_clues_need_not_occur_in_the_kb(preset, worlds):
    cfg = tiny(preset, worlds)
    assert not cfg.decoding.constrained
    records, _ = decode(cfg, worlds)
    assert any(c.count == 0 and not c.docs for r in records for c in r.clues)  # a random LM's free clues


@checks("clue-unique")
@pytest.mark.parametrize("preset", named("clue-unique"))
def test_unique_clues_retrieve_only_their_one_document(preset, worlds):
    cfg = tiny(preset, worlds)
    assert (cfg.decoding.clue_to_docs, cfg.decoding.stop_at_count) == ("unique", 1)
    records, _ = decode(cfg, worlds)
    clues = [c for r in records for c in r.clues]
    assert all(len(c.docs) == (c.n_docs_containing == 1) for c in clues)
    assert all(c.count <= 1 or c.ended_with_eos or len(c.tokens) == cfg.decoding.clue_cap for c in clues)


@checks("clue-all")
@pytest.mark.parametrize("preset", named("clue-all"))
def test_all_policy_retrieves_every_containing_document(preset, worlds):
    cfg = tiny(preset, worlds)
    records, index = decode(cfg, worlds)
    for c in (c for r in records for c in r.clues):
        key = [*c.tokens, index.eos_id] if c.ended_with_eos else c.tokens
        assert c.docs == index.docs(key).tolist()


@checks("official-step-0")
@pytest.mark.parametrize("preset", named("official-step-0"))
def test_official_step_0_reaches_the_search(preset, worlds, monkeypatch):
    import gemkr_lab.decoding.search as search

    cfg = tiny(preset, worlds)
    assert cfg.decoding.allow_bos_eos_first_token
    built = []
    real = search.DocumentStarts
    monkeypatch.setattr(search, "DocumentStarts", lambda *a: built.append(a) or real(*a))
    records, _ = decode(cfg, worlds)
    assert len(built) == 1 and built[0][1] == cfg.decoding.clue_cap + 1  # built once, for the clue cap
    # the behaviour itself (BOS-first clues begin documents, EOS-first clues are empty): tests/decoding/test_starts.py
    assert all(len(c.tokens) <= cfg.decoding.clue_cap for r in records for c in r.clues)


@checks("eval-8bit")
@pytest.mark.parametrize("preset", named("eval-8bit"))
def test_eight_bit_evaluation_is_asked_for_at_decode_time(preset, worlds, monkeypatch):
    from gemkr_lab.kb import open_index
    from gemkr_lab.model import infer

    full = load_experiment(preset)  # trained in fp16 as the reference, decoded in 8 bits
    assert full.decoding.llm_in_8bit and full.model.llm_dtype == "float16" and not full.model.load_in_8bit
    cfg = tiny(preset, worlds)
    _, model, data = tiny_parts(cfg, worlds)
    index = open_index(Path(cfg.prepared) / "index")
    batches = [next(iter(data.test_dataloader()))]
    decoding = dataclasses.replace(cfg.decoding, num_groups=2, max_clue_tokens=3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            infer.decode_batches(model, batches, index, decoding)
    asked = []
    monkeypatch.setattr(infer, "prepare_8bit_evaluation", lambda m: asked.append(m) or m)
    assert len(infer.decode_batches(model, batches, index, decoding)) == len(batches[0].qids)
    assert asked == [model]
    infer.decode_batches(model, batches, index, dataclasses.replace(decoding, llm_in_8bit=False))
    assert asked == [model]  # not asked without the flag


def test_eight_bit_quantises_every_linear_layer_but_the_head_and_lora():
    from gemkr_lab.model.gemkr import linear_layers_to_quantize

    llm = meta_model("paper/gemkr-7b").llm
    names = linear_layers_to_quantize(llm)
    assert len(names) == 32 * 7  # q, k, v, o, gate, up, down of every block (LoRA's wrapped base layers included)
    assert sum(n.endswith("q_proj.base_layer") for n in names) == 32
    assert not any("lm_head" in n or "lora_" in n for n in names)


@pytest.mark.gpu
def test_eight_bit_evaluation_on_a_gpu(worlds):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from gemkr_lab.kb import open_index
    from gemkr_lab.model.infer import decode_batches

    cfg = tiny("tiny-cpu/base", worlds, **{"decoding.llm_in_8bit": True, "model.use_lora": True})
    _, model, data = tiny_parts(cfg, worlds)
    index = open_index(Path(cfg.prepared) / "index")
    records = decode_batches(model, [next(iter(data.test_dataloader()))], index, cfg.decoding)
    assert records and any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.llm.modules())


@checks("official-code")
def test_official_code_restores_every_official_behaviour():
    cfg, fixed = load_experiment("paper/official-code"), load_experiment("paper/gemkr-7b")
    singles = ["zero-region-features-at-test", "official-step-0", "official-object-order", "eval-8bit"]
    assert own_keys("paper/official-code") == set().union(*(own_keys(f"paper/{s}") for s in singles))
    assert cfg.data.zero_region_features_at_test and cfg.data.object_order == "shuffled"
    assert cfg.decoding.allow_bos_eos_first_token and cfg.decoding.llm_in_8bit
    assert (cfg.model, cfg.train) == (fixed.model, fixed.train)  # the same training recipe


# ---- every tiny-cpu preset trains ----------------------------------------------------------------------------


# a training step each (2-5 s): the inner loop keeps tiny-cpu/full, `make test` runs every preset
STEPPED = [p if p == "tiny-cpu/full" else pytest.param(p, marks=pytest.mark.slow) for p in TINY]


@pytest.mark.parametrize("preset", STEPPED)
def test_every_tiny_preset_runs_a_training_step(preset, worlds):
    from gemkr_lab.model.module import GeMKRModule

    cfg = tiny(preset, worlds)
    as_written = load_experiment(preset)
    assert dataclasses.replace(cfg, data_root=as_written.data_root, prepared=as_written.prepared) == as_written
    tok, _, data = tiny_parts(cfg, worlds)
    module = GeMKRModule(cfg.model, cfg.train, len(tok))
    batch = next(iter(data.train_dataloader()))
    opt = module.configure_optimizers()["optimizer"]
    loss = module.model(batch)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and batch.images.shape[0] == cfg.train.batch_size
