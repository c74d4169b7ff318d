"""The config's view of the vision towers agrees with the model's and with open_clip's (#24).

The config checks read tower depths without importing open_clip or torch (tests/config/test_light_imports.py);
these tests, which may import both, keep the light copies equal to the real ones.
"""

import open_clip

from gemkr_lab.config.model import TOWER_DEPTHS, tower_depth
from gemkr_lab.model.vision import VISION_SPECS, vision_spec


def test_tower_depths_agree_with_the_model():
    assert {k: v.layers for k, v in VISION_SPECS.items()} == TOWER_DEPTHS


def test_open_clip_depths_read_from_its_files_agree_with_open_clip_for_every_architecture():
    names = open_clip.list_models()
    assert len(names) > 50
    for name in names:
        layers = (open_clip.get_model_config(name) or {}).get("vision_cfg", {}).get("layers")
        assert tower_depth(name) == (layers if isinstance(layers, int) else None), name
        if (
            tower_depth(name) is not None
            and name not in TOWER_DEPTHS
            and "timm_model_name" not in (open_clip.get_model_config(name)["vision_cfg"])
        ):
            assert vision_spec(name).layers == tower_depth(name), name  # the model builds what the config allowed


def test_unknown_names_and_paths_are_no_towers():
    for name in ("ViT-Nope", "../open_clip/model_configs/ViT-B-16", "hf-hub:someone/ViT-B-16", "", "RN50"):
        assert tower_depth(name) is None, name
