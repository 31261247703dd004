"""Reading official checkpoint files and loading them strictly.

Official files come in several layouts: ``{"model": sd}`` (LlamaGen DDP, MAR ``checkpoint-last.pth`` with
``model``/``model_ema``, VAE ``kl16.ckpt``), raw state dicts (LlamaGen FSDP files), ``.safetensors``.
Some pickle an ``argparse.Namespace`` (``"args"``); we read tensors with ``weights_only=True`` and allow-list
only that class, so untrusted pickles cannot run code. Nothing is ever downloaded.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)

# Keys under which official files nest their state dict, in the order we look for them.
NESTED_KEYS = ("model", "module", "state_dict")


class CheckpointMismatch(ValueError):
    """A state dict that does not fit the module exactly (raised instead of a partial load)."""


class CheckpointError(ValueError):
    """A file that cannot be read as a checkpoint: empty, truncated, wrong format or unsafe. Names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that holds Python objects beyond tensors and plain containers; accel never unpickles code."""


# The only non-container classes a checkpoint may hold: official files pickle their training arguments as an
# ``argparse.Namespace`` (rebuilt without calling any of its code: ``__new__`` plus a ``__dict__`` update, and
# its values must themselves be allowed). accel's own training checkpoints hold only tensors, numbers,
# strings, lists and dicts, so they need nothing here.
SAFE_GLOBALS = [argparse.Namespace]


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that readers only ever see a complete file (temp file, fsync, rename).
    What accel writes holds tensors and plain types only, so ``read_file`` reads it back without unpickling code."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_file(path: str | Path) -> dict:
    """Load a ``.safetensors``/``.pt``/``.pth``/``.ckpt``/``.bin`` file as a dict, tensors on CPU.

    Pickles are read with ``torch.load(weights_only=True)`` and the ``SAFE_GLOBALS`` allow-list, never with
    the full unpickler. Every failure names the file: ``FileNotFoundError`` (missing),
    ``UnsafeCheckpointError`` (code or unknown classes in the pickle), ``CheckpointError`` (empty,
    truncated, not a checkpoint, top level not a dict).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (accel never downloads; give a local path)")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (a checkpoint file is expected)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); was its download or save interrupted?")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = dict(load_file(str(path), device="cpu"))
        except Exception as e:  # SafetensorError, OSError: truncated or not safetensors
            raise CheckpointError(f"{path}: not a readable .safetensors file (truncated or another format): "
                                  f"{_first_line(e)}") from e
    else:
        obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors at the top level, found {type(obj).__name__}")
    return dict(obj)


def _torch_load(path: Path):
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = _first_line(e)
        if "weights_only" in str(e) or "global" in str(e).lower():
            raise UnsafeCheckpointError(
                f"{path}: refused to load: the pickle holds Python objects that could run code ({msg}); accel "
                "reads only tensors and plain containers. Convert a trusted file to .safetensors first") from e
        raise CheckpointError(f"{path}: not a torch checkpoint or truncated ({msg})") from e
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError, IndexError,
            KeyError, ImportError) as e:
        raise CheckpointError(f"{path}: not a torch checkpoint or truncated ({type(e).__name__}: "
                              f"{_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def read_checkpoint(path: str | Path, *, required: Iterable[str] = ()) -> dict:
    """A training checkpoint (``read_file``) that must hold the ``required`` top-level entries."""
    obj = read_file(path)
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: not an accel training checkpoint (missing entries {missing}; "
                              f"found {sorted(obj)[:20]})")
    return obj


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint file.

    ``key`` picks a nested entry (``"model"``, ``"model_ema"``, ...). Without it, the first of
    ``NESTED_KEYS`` present is used, else the file itself is taken as the state dict.
    """
    obj = read_file(path)
    if key is not None:
        if key not in obj:
            raise KeyError(f"{path}: no entry {key!r}; top-level entries are {sorted(obj)[:20]}")
        obj = obj[key]
    else:
        for k in NESTED_KEYS:
            if k in obj and isinstance(obj[k], Mapping):
                obj = obj[k]
                break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointMismatch(f"{path}: no tensors found (entries: {sorted(obj)[:20]})")
    return strip_prefix(sd)


def strip_prefix(sd: dict[str, torch.Tensor], prefixes: Iterable[str] = ("_orig_mod.", "module.")) -> dict:
    """Drop wrapper prefixes (torch.compile, DDP) that some saved files carry on every key."""
    for p in prefixes:
        if sd and all(k.startswith(p) for k in sd):
            sd = {k[len(p):]: v for k, v in sd.items()}
    return sd


@dataclass
class Mismatch:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    def describe(self, limit: int = 12) -> str:
        parts = []
        for name, items in (("missing keys", self.missing), ("unexpected keys", self.unexpected),
                            ("shape mismatches", self.shapes)):
            if items:
                more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
                parts.append(f"{len(items)} {name}: " + ", ".join(items[:limit]) + more)
        return "; ".join(parts)


def diff_state_dict(module: nn.Module, sd: Mapping[str, torch.Tensor]) -> Mismatch:
    """What keeps ``sd`` from loading strictly into ``module`` (persistent buffers included)."""
    own = module.state_dict()
    m = Mismatch(missing=sorted(set(own) - set(sd)), unexpected=sorted(set(sd) - set(own)))
    for k in sorted(set(own) & set(sd)):
        if tuple(own[k].shape) != tuple(sd[k].shape):
            m.shapes.append(f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}")
    return m


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], *, ignore: Iterable[str] = (),
                what: str = "checkpoint") -> nn.Module:
    """Load ``sd`` into ``module`` with every key and shape matching, else raise ``CheckpointMismatch``.

    ``ignore`` lists key prefixes that official files carry but inference never uses (e.g. ``"loss."`` in
    the MAR VAE); how many keys were ignored is logged, never silent.
    """
    ignore = tuple(ignore)
    if ignore:
        dropped = [k for k in sd if k.startswith(ignore)]
        if dropped:
            log.info("%s: ignoring %d keys with prefixes %s", what, len(dropped), ignore)
        sd = {k: v for k, v in sd.items() if not k.startswith(ignore)}
    m = diff_state_dict(module, sd)
    if m:
        raise CheckpointMismatch(f"{what} does not match {type(module).__name__}: {m.describe()}")
    module.load_state_dict(sd, strict=True)
    return module
