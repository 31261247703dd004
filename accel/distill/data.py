"""DD1 training data: (noise, token-sequence) pairs from a teacher, in resumable shards.

The paper's data-generation code is unreleased (research/dd_var_scalekv.md §2.1); accel's choices:

- noise for pair ``i`` is drawn from a generator seeded by ``(seed, i)``, the class label is ``i % C``,
  so any shard can be (re)made by any process and 1 or N processes write identical files;
- shard ``s`` holds pairs ``[s*S, (s+1)*S)`` and is written atomically (temp file + ``os.replace``); a
  shard already on disk is skipped, so an interrupted run resumes where it stopped, and rerunning with a
  larger ``n_pairs`` extends the set (a partial last shard is remade);
- with several processes (``accelerate launch``), shard ``s`` belongs to process ``s % world``.

Each shard is a dict ``{"noise": (S, n, d) fp32, "tokens": (S, n) int16/32, "labels": (S,) long,
"index": (S,) long, "meta": {...}}``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from tqdm import tqdm

from accel.checkpoint import atomic_save

# noise (B, n, d), labels (B,) -> token ids (B, n): the teacher's deterministic noise -> tokens map.
NoiseMap = Callable[[Tensor, Tensor], Tensor]


# the model-card data line of a student trained on these pairs (``Recipe.card_data``)
CARD_DATA = "Data: teacher (noise, token-sequence) pairs of the DD1 map, not images; the notes at the end say which."


@dataclass(frozen=True)
class PairSpec:
    n_pairs: int
    shard_size: int
    seq_len: int  # tokens per sequence
    token_dim: int  # dimension of a noise token (= code dimension)
    num_classes: int
    seed: int = 0

    @property
    def n_shards(self) -> int:
        return -(-self.n_pairs // self.shard_size)


def pair_noise(spec: PairSpec, index: Tensor) -> Tensor:
    """Noise (len(index), n, d) for global pair indices, each from its own seeded generator."""
    out = torch.empty(len(index), spec.seq_len, spec.token_dim)
    for j, i in enumerate(index.tolist()):
        g = torch.Generator().manual_seed(spec.seed * 1_000_003 + i)
        out[j] = torch.randn(spec.seq_len, spec.token_dim, generator=g)
    return out


def shard_path(out_dir: Path, s: int) -> Path:
    return Path(out_dir) / f"shard_{s:05d}.pt"


def _complete(out_dir: Path, s: int, spec: PairSpec) -> bool:
    """Shard ``s`` is on disk with every pair it should hold (a last shard grows with ``n_pairs``)."""
    path = shard_path(out_dir, s)
    if not path.exists():
        return False
    want = min((s + 1) * spec.shard_size, spec.n_pairs) - s * spec.shard_size
    return len(torch.load(path, weights_only=True)["index"]) == want


def generate_pairs(noise_map: NoiseMap, spec: PairSpec, out_dir: str | Path, *, rank: int = 0, world: int = 1,
                   batch_size: int = 64, meta: dict | None = None, progress: bool = True) -> list[Path]:
    """Write this process's missing shards; returns the shard paths it wrote."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_file = out_dir / "spec.json"
    info = {"spec": asdict(spec), "meta": meta or {}}
    if spec_file.exists():
        # Shard contents depend on everything but n_pairs: a run may grow (or shrink) the pair count.
        old = json.loads(spec_file.read_text())
        strip = lambda d: {k: v for k, v in d["spec"].items() if k != "n_pairs"}  # noqa: E731
        if strip(old) != strip(info) or old.get("meta", {}) != info["meta"]:
            raise ValueError(f"{out_dir} holds pairs of another spec or teacher ({spec_file}); use a new folder")
    if rank == 0:
        spec_file.write_text(json.dumps(info, indent=1))
    mine = [s for s in range(spec.n_shards) if s % world == rank and not _complete(out_dir, s, spec)]
    written = []
    for s in tqdm(mine, desc=f"distill pairs (rank {rank})", disable=not progress):
        index = torch.arange(s * spec.shard_size, min((s + 1) * spec.shard_size, spec.n_pairs))
        labels = index % spec.num_classes
        noise = pair_noise(spec, index)
        tokens = torch.cat([noise_map(noise[i: i + batch_size], labels[i: i + batch_size])
                            for i in range(0, len(index), batch_size)])
        atomic_save({"noise": noise, "tokens": tokens.to(torch.int32), "labels": labels, "index": index,
                     "meta": info["meta"]}, shard_path(out_dir, s))
        written.append(shard_path(out_dir, s))
    return written


def load_pairs(out_dir: str | Path) -> dict[str, Tensor]:
    """All shards concatenated in index order; raises if any shard is missing."""
    out_dir = Path(out_dir)
    spec = PairSpec(**json.loads((out_dir / "spec.json").read_text())["spec"])
    missing = [s for s in range(spec.n_shards) if not shard_path(out_dir, s).exists()]
    if missing:
        raise FileNotFoundError(f"{out_dir}: {len(missing)} shards missing (first {missing[:5]}); rerun generation")
    shards = [torch.load(shard_path(out_dir, s), weights_only=True) for s in range(spec.n_shards)]
    return {k: torch.cat([sh[k] for sh in shards]) for k in ("noise", "tokens", "labels", "index")}
