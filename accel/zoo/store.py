"""The zoo file format: one ``.safetensors`` per model, fp16 tensors, JSON metadata.

Metadata keys: ``kind`` (which builder rebuilds the module, see ``accel.zoo.BUILDERS``), ``config`` (JSON
of the builder's config) and free-form ``info`` (training step, recipe). fp16 halves the size; floating
tensors are restored to fp32 on load. Non-floating tensors (e.g. BatchNorm counters) keep their dtype.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


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
    save_file(out, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_zoo_file(path: str | Path) -> tuple[str, dict, dict, dict[str, torch.Tensor]]:
    """``(kind, config, info, tensors)`` of a zoo file; floating tensors as fp32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"zoo file not found: {path}")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        if "kind" not in meta or "config" not in meta:
            raise ValueError(f"{path} is not an accel zoo file (no kind/config metadata); "
                             "pass the family loader an official checkpoint instead")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return meta["kind"], json.loads(meta["config"]), json.loads(meta.get("info", "{}")), tensors
