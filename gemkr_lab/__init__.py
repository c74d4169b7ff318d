"""gemkr_lab: the experiment-sweep and ablation harness for GeMKR (generative multimodal knowledge retrieval)."""

__version__ = "0.1.0"
