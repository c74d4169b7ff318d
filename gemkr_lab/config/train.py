"""Optimisation and trainer settings (gemkr_spec.md §3.4)."""

from dataclasses import dataclass
from typing import Annotated, Literal

from gemkr_lab.config.checks import POSITIVE, AtLeast, check_fields


@dataclass(frozen=True)
class TrainConfig:
    """Training. Defaults are the official run's (AdamW, warmup to 6e-5, cosine to 1e-5, batch 12 x 2)."""

    lr: Annotated[float, POSITIVE] = 6e-5
    """Peak learning rate."""
    min_lr: Annotated[float, AtLeast(0)] = 1e-5
    """Cosine floor."""
    warmup_start_lr: Annotated[float, AtLeast(0)] = 1e-6
    """Learning rate at step 0 of the linear warmup."""
    warmup_steps: Annotated[int, AtLeast(0)] = 200
    """Warmup length, counted in `warmup_unit`s (official: 200 iterations, i.e. micro-batches)."""
    warmup_unit: Literal["optimizer_steps", "micro_batches"] = "optimizer_steps"
    """Deviation "warmup unit": what the schedule counts. optimizer_steps = warmup over `warmup_steps` optimizer
    steps, cosine over `max_steps`; micro_batches = the official runner's iterations: the schedule is stepped per
    micro-batch, so warmup spans `warmup_steps` micro-batches (100 optimizer steps at accumulation 2) and the
    cosine `max_steps` x `accumulate_grad_batches` micro-batches, each optimizer step taking the rate of its last
    micro-batch (paper presets: micro_batches)."""
    max_steps: Annotated[int, AtLeast(1)] = 6000
    """Optimizer steps in total (official: 5 x 2400 micro-batches / 2 accumulation)."""
    batch_size: Annotated[int, AtLeast(1)] = 12
    """Samples per micro-batch on each device (each DDP process). An optimizer step trains on batch_size x
    devices (x nodes) x `accumulate_grad_batches` samples: the paper's 12 x 2 is that of ONE GPU (24 samples);
    to keep 24 on 2 GPUs use batch_size 12 with accumulate_grad_batches 1 (or 6 x 2). Under DDP the global
    micro-batch of step k is exactly the micro-batch of step k of one process with batch_size x devices (the
    same examples, rank r taking the r-th contiguous slice), and the loss is its token mean, so the run equals
    that single-process run up to floating-point summation order."""
    accumulate_grad_batches: Annotated[int, AtLeast(1)] = 2
    """Micro-batches per optimizer step (official runner default)."""
    weight_decay: Annotated[float, AtLeast(0)] = 0.05
    """AdamW decay on parameters with >= 2 dimensions; none on biases and 1-D parameters."""
    gradient_clip_val: Annotated[float, POSITIVE] | None = 1.0
    """Deviation "gradient clipping": clip the gradient norm at this value; None = off, as the official code
    (paper presets: None; tiny CPU runs keep 1.0)."""
    drop_last: bool = False
    """Deviation "drop_last": drop each epoch's last incomplete micro-batch, as the official DataLoader does
    (paper presets: on); off = train on it too."""
    iterations_per_epoch: Annotated[int, AtLeast(1)] | None = None
    """Ablation "training-set shape": an epoch is this many micro-batches drawn from a fresh shuffle of the rows,
    as the official loop's `iters_per_epoch` (2400 micro-batches of 12); when the rows run out within an epoch the
    draw goes on in another shuffle (the official loop would stop with StopIteration). None = an epoch is one pass
    over the rows."""
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    """Lightning precision (official: fp16 autocast)."""
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp"] = "auto"
    """Lightning strategy."""
    devices: Annotated[int, AtLeast(1)] | Literal["auto"] = "auto"
    """Devices per node."""
    seed: Annotated[int, AtLeast(0)] = 42
    """Seed of everything (official: 42)."""
    deterministic: bool = False
    """torch deterministic algorithms (the resume test uses them on CPU)."""
    portable_cpu_numerics: bool = False
    """Hold torch's CPU kernels, MKL and oneDNN to AVX2 so CPU runs train the same tensors on any x86-64 with AVX2
    (`gemkr_lab.numerics`; reproducibility, not an ablation: tiny-cpu presets on, paper GPU presets off)."""
    checkpoint_every_n_steps: Annotated[int, AtLeast(1)] = 200
    """Checkpoint (trained parameters, optimizer, schedule, RNG and data position) every N optimizer steps and
    at the end; a killed run resumes exactly from the last one, losing at most N steps."""
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    """Where training and decoding run: the GPU when there is one ("auto"), or the named kind."""
    num_workers: Annotated[int, AtLeast(0)] = 0
    """DataLoader workers."""

    def __post_init__(self) -> None:
        check_fields(self)  # min_lr > lr is allowed: a search over lr must not trip over the preset's floor
