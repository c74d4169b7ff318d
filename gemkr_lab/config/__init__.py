"""Typed configuration: one dataclass per concern, every knob a documented field (nothing here runs)."""

from gemkr_lab.config.data import DataConfig
from gemkr_lab.config.decoding import DecodingConfig
from gemkr_lab.config.model import ModelConfig
from gemkr_lab.config.train import TrainConfig

__all__ = ["DataConfig", "DecodingConfig", "ModelConfig", "TrainConfig"]
