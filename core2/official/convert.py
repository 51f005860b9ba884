"""Convert a released CoRe² weak-model `.pth` into safetensors (loads without pickle, memory-maps, smaller in bf16).

    python -m core2.official.convert sdxl_noise_model.pth sdxl_noise_model.safetensors [--dtype bf16|fp16|fp32|keep]

The input is read with torch.load(weights_only=True) and checked strictly (every key and shape) before anything is
written. Metadata: format "core2-official", variant, rank, n_lora, dtype, source file name and its sha256.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from pathlib import Path

import torch

from ..files import atomic_write_via
from .loader import FORMAT, OfficialWeightsError, build_net, read_state_dict

log = logging.getLogger(__name__)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "keep": None}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "bf16") -> dict:
    """Write `dst` (safetensors) from the official `src`; returns the metadata written."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {list(DTYPES)}")
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"output must end in .safetensors, got {dst.name}")
    if dst.resolve() == src.resolve():
        raise ValueError("output would overwrite the input")
    sd, _ = read_state_dict(src)
    net = build_net(sd)  # strict check (raises with the missing/unexpected keys); tensors are shared, not copied
    cfg = net.cfg
    del net
    target = DTYPES[dtype]
    out = {}
    for k in list(sd):
        t = sd.pop(k)
        if target is not None and t.is_floating_point():
            t = t.to(target)
        out[k] = t.contiguous()
    meta = {"format": FORMAT, "variant": cfg.variant, "rank": str(cfg.lora_rank), "n_lora": str(cfg.n_lora),
            "dtype": dtype if target is not None else str(next(iter(out.values())).dtype).replace("torch.", ""),
            "source": src.name, "source_sha256": sha256_file(src)}
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_via(dst, lambda tmp: save_file(out, tmp, metadata=meta))
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core2.official.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="official .pth (sdxl_noise_model.pth or sd35_noise_model.pth)")
    p.add_argument("dst", help="output .safetensors")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16",
                   help="dtype of the floating tensors written (default bf16, what the official code runs in)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        meta = convert(a.src, a.dst, a.dtype)
    except (OfficialWeightsError, ValueError, FileNotFoundError) as e:
        log.error("error: %s", e)
        return 2
    log.info("wrote %s: %s", a.dst, ", ".join(f"{k}={v}" for k, v in meta.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
