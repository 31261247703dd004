"""The zoo file format: one safetensors file per model, fp16 tensors, JSON metadata, xz-compressed.

Metadata keys: ``kind`` (which builder rebuilds the module, see ``accel.zoo.BUILDERS``), ``config`` (JSON
of the builder's config) and free-form ``info`` (training step, recipe). fp16 halves the size; floating
tensors are restored to fp32 on load. Non-floating tensors (e.g. BatchNorm counters) keep their dtype.

The package ships ``NAME.safetensors.xz`` (``zoo_file``): the safetensors bytes, xz-compressed, which saves
~12 % of the fp16 bytes (the exponent bits compress) and keeps the whole zoo under its size budget (50 MB, tests/test_zoo.py);
decompressing takes tens of ms per model. Plain ``.safetensors`` zoo files are read and written as well.
"""
from __future__ import annotations

import json
import lzma
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from safetensors.torch import save_file

from accel.checkpoint import CheckpointError

SUFFIX = ".safetensors.xz"


# the data line of a model card trained on the zoo's images (``Recipe.card_data``'s default)
IMAGE_DATA = ("Data: Fashion-MNIST train split (55,000 images; 5,000 held out for validation, accel/data.py), "
              "padded to 32x32, 3 channels, [-1, 1].")


def zoo_file(directory: str | Path, name: str) -> Path:
    """Where the zoo file of ``name`` lives in ``directory`` (the shipped, compressed form)."""
    return Path(directory) / f"{name}{SUFFIX}"


def is_zoo_path(path: str | Path) -> bool:
    """Whether ``path`` names a zoo file (compressed or plain safetensors) rather than a training checkpoint."""
    return Path(path).name.endswith((SUFFIX, ".safetensors"))


def bf16_rounded(tensors: dict[str, torch.Tensor], exact: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], str]:
    """Floating tensors rounded to bf16 precision (8-bit mantissa) before ``save_zoo_file``'s fp16 cast, which
    makes the file xz-compress ~20% smaller (the zoo's size budget); ``exact``: names kept as they are. Returns the
    tensors and the ``precision`` line for the file's info."""
    out = {k: (v.bfloat16() if v.is_floating_point() and k not in exact else v) for k, v in tensors.items()}
    return out, "bf16-rounded, stored as fp16" + (f" ({', '.join(exact)} exact)" if exact else "")


def save_zoo_file(path: str | Path, tensors: dict[str, torch.Tensor], *, kind: str, config: dict,
                  info: dict | None = None, dtype: torch.dtype | None = torch.float16) -> Path:
    """Write ``tensors`` (floating ones cast to ``dtype``; ``None`` keeps each dtype) with kind/config
    metadata, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, v in tensors.items():
        v = v.detach().cpu()
        out[k] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
    meta = {"kind": kind, "config": json.dumps(config), "info": json.dumps(info or {})}
    tmp = path.with_name(f".{path.name}.tmp")
    if path.name.endswith(".xz"):
        tmp.write_bytes(lzma.compress(save_bytes(out, metadata=meta), preset=9 | lzma.PRESET_EXTREME))
    else:
        save_file(out, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_zoo_file(path: str | Path) -> tuple[str, dict, dict, dict[str, torch.Tensor]]:
    """``(kind, config, info, tensors)`` of a zoo file; floating tensors as fp32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"zoo file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes)")
    try:
        return _read_zoo_file(path)
    except CheckpointError:
        raise
    except Exception as e:  # LZMAError, SafetensorError, JSON or header errors: truncated or another format
        msg = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{path}: not a readable zoo file (truncated or another format): "
                              f"{type(e).__name__}: {msg}") from e


def _read_zoo_file(path: Path) -> tuple[str, dict, dict, dict[str, torch.Tensor]]:
    if path.name.endswith(".xz"):
        data = lzma.decompress(path.read_bytes())
        n = int.from_bytes(data[:8], "little")  # safetensors: u64 header length, JSON header, tensor bytes
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
        _check_meta(path, meta)
        tensors = load_bytes(data)
    else:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            _check_meta(path, meta)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return meta["kind"], json.loads(meta["config"]), json.loads(meta.get("info", "{}")), tensors


def _check_meta(path: Path, meta: dict) -> None:
    if "kind" not in meta or "config" not in meta:
        raise CheckpointError(f"{path} is not an accel zoo file (no kind/config metadata); "
                         "pass the family loader an official checkpoint instead")
