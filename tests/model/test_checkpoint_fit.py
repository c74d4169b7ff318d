"""A checkpoint that does not fit the run's model is one clear error naming the file and keys (#25).

It used to surface as torch's size-mismatch traceback from `load_state_dict` (evaluate, a run trained elsewhere)
or from Lightning's resume. It is bad input (exit 2), so a sweep does not retry it.
"""

import pytest
import torch

from gemkr_lab.config import ModelConfig
from gemkr_lab.config.experiment import ConfigError
from gemkr_lab.model import checkpoints
from gemkr_lab.model.checkpoints import LAST, check_fits, resume_point


class _Toy(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, width)


def test_a_fitting_checkpoint_passes(tmp_path):
    check_fits(_Toy(3).state_dict(), _Toy(3), tmp_path / LAST)


def test_other_shapes_and_unknown_keys_are_named(tmp_path):
    state = _Toy(5).state_dict() | {"extra.weight": torch.zeros(2)}
    with pytest.raises(ConfigError) as caught:
        check_fits(state, _Toy(3), tmp_path / LAST)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / LAST}: does not fit this run's model (")
    assert "proj.bias: [5] in the checkpoint, [3] in the model" in message
    assert "proj.weight: [5, 4] in the checkpoint, [3, 4] in the model; and 1 more" in message
    assert "\n" not in message


def test_a_tiny_gemkr_of_another_vocabulary_is_refused_naming_an_embedding(tmp_path):
    from gemkr_lab.model.gemkr import GeMKR

    config = ModelConfig(vision_model="tiny-vit")
    other = GeMKR(config, 80).checkpoint_state_dict()  # trained with another tokenizer's vocabulary
    with pytest.raises(ConfigError, match=r"embed_tokens.*\[80, \d+\] in the checkpoint, \[64, \d+\] in the model"):
        check_fits(other, GeMKR(config, 64), tmp_path / LAST)


def test_resume_refuses_a_sound_checkpoint_of_another_model_and_keeps_it(tmp_path):
    path = tmp_path / LAST
    torch.save({"state_dict": _Toy(5).state_dict(), "global_step": 3}, path)
    with pytest.raises(ConfigError, match=r"last\.ckpt: does not fit"):
        resume_point(tmp_path, _Toy(3))
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [LAST]  # not set aside as corrupt
    assert resume_point(tmp_path, _Toy(5)) == path
    assert checkpoints.resume_point(tmp_path) == path  # without a module: loadable is enough, as before
