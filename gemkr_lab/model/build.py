"""One place that builds a cell's model and data module, for training and for a rebuilt checkpoint alike.

Training (`model.train.fit`) and re-evaluation (`run.evaluate.load_trained`) both call `build_model_and_data`,
so a checkpoint is always decoded by a model assembled, and seeded, exactly as the one it was trained as.
"""

from pathlib import Path
from typing import Any

import lightning as L

from gemkr_lab.config.data import DataConfig
from gemkr_lab.config.model import ModelConfig
from gemkr_lab.config.train import TrainConfig
from gemkr_lab.model.datamodule import GeMKRDataModule
from gemkr_lab.model.module import GeMKRModule


def build_model_and_data(
    prepared: str | Path,
    data_root: str | Path,
    tokenizer: Any,
    *,
    model_config: ModelConfig,
    data_config: DataConfig,
    train_config: TrainConfig,
    limit_train: int | None = None,
) -> tuple[GeMKRModule, GeMKRDataModule]:
    """The LightningModule and its data module; the global seed is set first (random inits depend on it)."""
    L.seed_everything(train_config.seed, workers=True, verbose=False)
    module = GeMKRModule(model_config, train_config, len(tokenizer))
    data = GeMKRDataModule(
        prepared,
        data_root,
        tokenizer,
        data_config,
        module.model.vision,
        train_config.batch_size,
        seed=train_config.seed,
        num_workers=train_config.num_workers,
        limit_train=limit_train,
        drop_last=train_config.drop_last,
        iterations_per_epoch=train_config.iterations_per_epoch,
    )
    return module, data
