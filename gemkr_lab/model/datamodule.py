"""The LightningDataModule: instruction rows + images + cached regions -> `Batch`es.

Region features are the frozen tower's CLS of each cached crop (gemkr_spec.md §2.2), computed once per
image when the data is set up and kept in memory. With `DataConfig.zero_region_features_at_test` the test
split gets none, reproducing the official bug. Training images get the official augmentation with
`DataConfig.augment_train_images`; the train loader drops the last incomplete batch with `drop_last`.
"""

import dataclasses
import warnings
import zlib
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2 as T

from gemkr_lab.config.data import DataConfig
from gemkr_lab.data.datasets import Dataset as Benchmark
from gemkr_lab.data.prepare import DAMAGED
from gemkr_lab.data.prompt import build_prompt
from gemkr_lab.data.queries import DataError
from gemkr_lab.data.regions import load_regions
from gemkr_lab.io import read_jsonl
from gemkr_lab.model.gemkr import Batch
from gemkr_lab.model.vision import PrefixedViT

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def image_transform(size: int) -> T.Compose:
    """The official eval transform: bicubic resize to size x size (no crop), CLIP normalisation."""
    return T.Compose(
        [
            T.ToImage(),
            T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def train_image_transform(size: int) -> T.Compose:
    """The official train transform: RandomResizedCrop(size, scale 0.5-1.0, bicubic), CLIP normalisation."""
    return T.Compose(
        [
            T.ToImage(),
            T.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


class EpochSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch), so that a resumed run sees the same order; one rank's share.

    Under DDP (`world_size` > 1) each global batch of `batch_size` x `world_size` consecutive samples of the
    epoch's order is split in contiguous slices, rank r taking the r-th `batch_size` samples, so the global batch
    of step k is the batch of step k of a single process with batch `batch_size` x `world_size`. An incomplete
    last global batch is split as evenly as possible (`np.array_split`); with `drop_last` it is dropped, and when
    it has fewer samples than ranks (one rank would get none) it is dropped with a warning.

    With `draws` (`TrainConfig.iterations_per_epoch` micro-batches of the global batch) an epoch is the first
    `draws` samples of its shuffle instead of a pass over all of them; when `draws` exceeds the rows, further
    shuffles of the same epoch follow (seeded by (seed, epoch, k)), so every row is drawn once before any twice.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        shuffle: bool = True,
        *,
        batch_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        draws: int | None = None,
    ) -> None:
        self.n, self.seed, self.shuffle, self.epoch, self.draws = n, seed, shuffle, 0, draws
        self.batch_size, self.rank, self.world_size, self.drop_last = batch_size, rank, world_size, drop_last
        self._resume: tuple[int, int] | None = None  # (epoch, samples of it already seen by all ranks together)

    @property
    def global_batch(self) -> int:
        """Samples in one micro-batch of all ranks together."""
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch start."""
        self.epoch = epoch

    def resume(self, epoch: int, seen: int) -> None:
        """The next pass over `epoch` starts after its first `seen` samples (all ranks together; mid-epoch)."""
        self._resume = (epoch, seen)

    def _order(self) -> np.ndarray:
        """The epoch's sample order: a shuffle of the rows by (seed, epoch), or its first `draws` samples."""
        if not self.shuffle:
            return np.arange(self.n)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        if self.draws is None or self.n == 0:
            return order
        more = [order]
        for k in range(1, -(-self.draws // self.n)):  # rows run out: another shuffle of them
            more.append(np.random.default_rng([self.seed, self.epoch, k]).permutation(self.n))
        return np.concatenate(more)[: self.draws]

    def __iter__(self):
        order = self._order()
        skip = 0
        if self._resume is not None:
            epoch, seen = self._resume
            self._resume = None
            skip = seen if epoch == self.epoch else 0
        return iter(self._share(order[skip:]).tolist())

    def _share(self, order: np.ndarray) -> np.ndarray:
        """This rank's samples of `order`, cut into global batches from its start."""
        if self.world_size == 1:
            return order  # the DataLoader batches it (and drops an incomplete last batch with drop_last)
        g, b, r = self.global_batch, self.batch_size, self.rank
        full = len(order) // g * g
        mine = order[:full].reshape(-1, self.world_size, b)[:, r].reshape(-1)
        tail = order[full:]
        if len(tail) == 0 or self.drop_last:
            return mine
        if len(tail) < self.world_size:
            warnings.warn(
                f"the epoch's last global batch has {len(tail)} samples for {self.world_size} ranks: dropped",
                stacklevel=2,
            )
            return mine
        return np.concatenate([mine, np.array_split(tail, self.world_size)[r]])

    def __len__(self) -> int:
        n = self.n if self.draws is None else self.draws
        return len(self._share(np.arange(n))) if self.world_size > 1 else n


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning checkpoints mid-epoch: its state is the epoch and the position in it.

    Lightning saves `state_dict()` with every checkpoint and calls `load_state_dict()` on resume, so a run
    killed anywhere continues with exactly the batches it had not seen (a plain DataLoader restarts the epoch).
    `consumed` is set by the data module: the batches the training loop has processed in this epoch. The
    position is global (`samples`: seen by all ranks together), so it means the same under DDP.
    """

    consumed: Any = None

    def state_dict(self) -> dict[str, int]:
        """Epoch, micro-batches consumed in it and the samples they held (all ranks together)."""
        epoch = getattr(self.sampler, "epoch", 0)
        batches = int(self.consumed()) if self.consumed else 0
        per_batch = getattr(self.sampler, "global_batch", self.batch_size)
        return {"epoch": epoch, "batches": batches, "samples": batches * per_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the consumed samples of the saved epoch on the next pass (older states: batches x batch size)."""
        if isinstance(self.sampler, EpochSampler):
            self.sampler.resume(state["epoch"], state.get("samples", state["batches"] * self.batch_size))


class _Rows(Dataset):
    def __init__(self, rows: list[dict], owner: "GeMKRDataModule", split: str) -> None:
        self.rows, self.owner, self.split = rows, owner, split

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.owner.item(self.rows[i], self.split, index=i)


class GeMKRDataModule(L.LightningDataModule):
    """Serves instruction rows (train) and queries (test) of a prepared dataset."""

    def __init__(
        self,
        prepared: str | Path,
        data_root: str | Path,
        tokenizer: Any,
        data_config: DataConfig,
        vision: PrefixedViT,
        batch_size: int,
        seed: int = 42,
        num_workers: int = 0,
        limit_train: int | None = None,
        drop_last: bool = False,
        iterations_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.prepared, self.tokenizer, self.config = Path(prepared), tokenizer, data_config
        self.benchmark = Benchmark(data_config.dataset, data_root)
        self.vision, self.batch_size, self.seed, self.num_workers = vision, batch_size, seed, num_workers
        self.limit_train, self.drop_last, self.iterations_per_epoch = limit_train, drop_last, iterations_per_epoch
        self.transform = image_transform(vision.spec.image_size)
        size = vision.spec.image_size
        self.train_transform = train_image_transform(size) if data_config.augment_train_images else self.transform
        self.shuffle_objects = data_config.object_order == "shuffled"
        self._features: dict[tuple[str, str], torch.Tensor] = {}
        self._train_sampler: EpochSampler | None = None
        self._images = None

    def setup(self, stage: str | None = None) -> None:
        """Read the prepared rows (files named in the errors if `prepare` has not run)."""
        rows = _read_jsonl(self.prepared / "instructions_train.jsonl")
        self.train_rows = rows_per_question(rows, self.config.max_rows_per_question)[: self.limit_train]
        self.test_rows = _read_jsonl(self.prepared / "queries_test.jsonl")
        self._images = self.benchmark.images()

    def eval_rows(self, split: str) -> list[dict]:
        """The queries of an evaluation split ("test", or "validation" when `prepare` held one out)."""
        if split == "test":
            return self.test_rows
        if split != "validation":
            raise ValueError(f"no evaluation split {split!r} (test or validation)")
        if not hasattr(self, "_validation_rows"):
            path = self.prepared / "queries_validation.jsonl"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: {self.prepared} has no validation split; prepare it with data.validation_size set"
                )
            self._validation_rows = _read_jsonl(path)
        return self._validation_rows

    def region_features(self, image_id: str, split: str) -> torch.Tensor:
        """[P, width] CLS features of the image's cached crops (zero rows for absent objects)."""
        key = (image_id, split)
        if key not in self._features:
            spec, p = self.vision.spec, self.vision.config.prefix_length
            out = torch.zeros(p, spec.width)
            zero_at_test = self.config.zero_region_features_at_test
            regions = load_regions(self.prepared / "regions", image_id, split, zero_at_test)
            if self.shuffle_objects:  # a fixed arbitrary order per image, as the official os.listdir order
                order = np.random.default_rng(zlib.crc32(image_id.encode())).permutation(len(regions))
                regions = [regions[i] for i in order]
            regions = regions[:p]
            if regions and self.config.detector != "none":
                crops = torch.stack([self.transform(crop) for _, crop in regions])
                tower = next(self.vision.tower.parameters())  # on the training device: CPU crops go there
                with torch.no_grad():
                    out[: len(regions)] = self.vision.encode_regions(crops.to(tower.device)).float().cpu()
            self._features[key] = out
        return self._features[key]

    def _image(self, image_id: str, transform, index: int) -> torch.Tensor:
        """The transformed image.

        Random augmentation draws from (seed, epoch, sample), not the global RNG, so that it is the same however
        the run was interrupted, resumed or split over loader workers.
        """
        image = self._images.load(image_id)
        if transform is self.transform:
            return transform(image)
        epoch = self._train_sampler.epoch if self._train_sampler is not None else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.default_rng([self.seed, epoch, index]).integers(2**62)))
            return transform(image)

    def cache_region_features(self, split: str) -> None:
        """Compute the region features of every image of `split` now, in this process, on the tower's device.

        Called when a loader is made (Lightning asks for it after moving the model to its device), so worker
        processes never touch the tower and a GPU tower never receives CPU crops.
        """
        rows = self.train_rows if split == "train" else self.eval_rows(split)
        for image_id in dict.fromkeys(r["image_id"] for r in rows):
            self.region_features(image_id, split)

    def item(self, row: dict, split: str, index: int = 0) -> dict[str, Any]:
        """One sample: image tensor, region features, tokenised prompt parts and (train) the clue."""
        before, after = build_prompt(row["question"], row.get("caption", ""), self.config.append_caption)
        tok = self.tokenizer
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        transform = self.train_transform if split == "train" else self.transform
        return {
            "qid": row["qid"],
            "image": self._image(row["image_id"], transform, index),
            "objects": self.region_features(row["image_id"], split),
            "before": bos + tok(before, add_special_tokens=False)["input_ids"],
            "after": tok(after, add_special_tokens=False)["input_ids"],
            "target": row.get("clue_tokens"),
        }

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch); with `drop_last` the last incomplete batch of each epoch is dropped.

        Under DDP this rank's share of every global batch (`EpochSampler`; the trainer is built with
        `use_distributed_sampler=False`, so Lightning does not wrap it in its own reshuffling sampler).
        """
        ds = _Rows(self.train_rows, self, "train")
        if self.drop_last and len(ds) < self.batch_size and self.iterations_per_epoch is None:
            raise ValueError(
                f"drop_last with {len(ds)} training rows and batch_size {self.batch_size} leaves no batch; "
                "use more rows (limit_train), a smaller batch or train.drop_last=false"
            )
        self.cache_region_features("train")  # on the tower's device, before any worker process starts
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        draws = None if self.iterations_per_epoch is None else self.iterations_per_epoch * self.batch_size * world
        sampler = EpochSampler(
            len(ds),
            self.seed,
            batch_size=self.batch_size,
            rank=rank,
            world_size=world,
            drop_last=self.drop_last,
            draws=draws,
        )
        loader = ResumableLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            drop_last=self.drop_last,
            # its own generator: making an iterator draws a seed, which must not shift the global RNG that
            # dropout uses (a resumed run makes its iterator at another moment than the uninterrupted one)
            generator=torch.Generator().manual_seed(self.seed),
        )
        if trainer is not None:  # under Lightning: the loop's own count of this epoch
            progress = trainer.fit_loop.epoch_loop.batch_progress.current
            loader.consumed = lambda: progress.processed
        self._train_sampler = loader.sampler
        return loader

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move a `Batch`'s two tensors; its token lists stay as they are.

        Lightning's default walks the whole collection, every int of the token lists included (~10 ms of CPU per
        tiny-cpu/full step of ~450: issue #26); the result is the same (non-blocking off the CPU, as Lightning's).
        """
        if not isinstance(batch, Batch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        blocking = torch.device(device).type in ("cpu", "mps")
        return dataclasses.replace(
            batch,
            images=batch.images.to(device, non_blocking=not blocking),
            objects=batch.objects.to(device, non_blocking=not blocking),
        )

    def test_dataloader(self) -> DataLoader:
        """Test queries in file order."""
        return self.eval_dataloader("test")

    def eval_dataloader(self, split: str, limit: int | None = None) -> DataLoader:
        """The queries of `split` (test or validation) in file order, the first `limit` of them if given.

        Validation queries get the test-time inputs (eval transform) but their real region features: only the
        test split reproduces the official zeroing bug (`zero_region_features_at_test`).
        """
        rows = self.eval_rows(split)[:limit]
        self.cache_region_features(split)
        return DataLoader(
            _Rows(rows, self, split),
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=collate,
            num_workers=self.num_workers,
        )


def rows_per_question(rows: list[dict], cap: int | None) -> list[dict]:
    """The training rows, at most `cap` per question (its first ones, in file order); all of them for None."""
    if cap is None:
        return rows
    taken: dict[str, int] = {}
    kept = []
    for row in rows:
        taken[row["qid"]] = taken.get(row["qid"], 0) + 1
        if taken[row["qid"]] <= cap:
            kept.append(row)
    return kept


def collate(items: list[dict[str, Any]]) -> Batch:
    """Stack images and region features; keep token lists per sample (padded by the model)."""
    targets = [it["target"] for it in items]
    return Batch(
        images=torch.stack([it["image"] for it in items]),
        objects=torch.stack([it["objects"] for it in items]),
        before=[it["before"] for it in items],
        after=items[0]["after"],
        targets=None if any(t is None for t in targets) else targets,
        qids=[it["qid"] for it in items],
    )


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: not prepared; run gemkr-lab prepare first")  # bad input: not retried
    return read_jsonl(path, fix=DAMAGED)
