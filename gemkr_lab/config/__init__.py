"""Typed configuration: one dataclass per concern, every knob a documented field (nothing here runs)."""

from gemkr_lab.config.decoding import DecodingConfig

__all__ = ["DecodingConfig"]
