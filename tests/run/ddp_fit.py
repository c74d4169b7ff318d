"""Train a tiny-cpu preset with `fit` and a CSV logger (a script, because Lightning's DDP launcher starts the
other ranks by running the same command again).

    python ddp_fit.py OUT [--resume] [--kill-at=N] OVERRIDE...

`--kill-at=N`: rank 0 SIGKILLs its process group (every rank) when step N is done, as a killed job.
"""

import os
import signal
import sys

import lightning as L
from lightning.pytorch.loggers import CSVLogger

from gemkr_lab.config.experiment import load_experiment
from gemkr_lab.kb.tokenize import load_tokenizer
from gemkr_lab.model.train import fit
from gemkr_lab.run.cell import tokenizer_dir


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.killpg(os.getpgrp(), signal.SIGKILL)


if __name__ == "__main__":
    out, flags = sys.argv[1], [a for a in sys.argv[2:] if a.startswith("--")]
    overrides = [a for a in sys.argv[2:] if not a.startswith("--")]
    kill = [int(f.split("=")[1]) for f in flags if f.startswith("--kill-at=")]
    config = load_experiment("tiny-cpu/full", overrides)
    fit(
        config.prepared,
        config.data_root,
        load_tokenizer(tokenizer_dir(config)),
        out,
        model_config=config.model,
        data_config=config.data,
        train_config=config.train,
        limit_train=config.limit_train,
        logger=CSVLogger(out, name="", version=""),
        callbacks=[KillAt(s) for s in kill],
        resume="--resume" in flags,
    )
