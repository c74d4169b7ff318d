"""Typed configuration: one dataclass per concern, every knob a documented field (nothing here runs)."""

from gemkr_lab.config.data import DataConfig
from gemkr_lab.config.decoding import DecodingConfig

__all__ = ["DataConfig", "DecodingConfig"]
