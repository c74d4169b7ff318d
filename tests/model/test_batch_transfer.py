"""The data module's batch transfer (#26): the batch Lightning's default makes, without walking the token lists."""

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from gemkr_lab.model.datamodule import GeMKRDataModule
from gemkr_lab.model.gemkr import Batch


def test_transfer_moves_the_tensors_and_keeps_the_token_lists():
    data = GeMKRDataModule.__new__(GeMKRDataModule)  # the hook reads nothing of the instance
    batch = Batch(
        images=torch.randn(2, 3, 8, 8),
        objects=torch.randn(2, 4, 16),
        before=[[1, 5, 6], [1, 7]],
        after=[8, 9],
        targets=[[10, 11], [12]],
        qids=["a", "b"],
    )
    for device in (torch.device("cpu"), torch.device("meta")):
        ours = data.transfer_batch_to_device(batch, device, 0)
        default = move_data_to_device(batch, device)
        assert isinstance(ours, Batch)
        assert ours.images.device == default.images.device == device
        assert ours.objects.device == default.objects.device == device
        if device.type == "cpu":
            assert torch.equal(ours.images, batch.images) and torch.equal(ours.objects, batch.objects)
        for field in ("before", "after", "targets", "qids"):
            assert getattr(ours, field) == getattr(default, field) == getattr(batch, field)
    assert data.transfer_batch_to_device({"x": torch.ones(1)}, torch.device("meta"), 0)["x"].is_meta  # other types
