"""Chain/tree size per device: measure the verify cost curve, pick the size with the most tokens per second.

A speculative round with T = (drafted tokens + 1) verify tokens costs

    t_round(T) = t_draft(T) + t_verify(T) + t_loop                       (seconds)

and emits E(T) tokens: for a chain of γ drafts with conditional per-position acceptance a_1, a_2, ...
(``SpecStats.as_dict()['accept_at_position']``, measured),

    E(γ) = 1 + sum_{i=1..γ} prod_{j<=i} a_j                            (Leviathan et al. 2023, Eq. 1 for i.i.d. a)

``verify_cost_curve`` measures t_verify(T) for T = 1..16 tokens on the device at hand (a memory-bound GPU keeps
the curve nearly flat, a CPU grows with T), and ``choose_budget`` returns the candidate maximising
E / t_round. For an EAGLE-2 dynamic tree with node budget N, T = N + 1 and E(N) comes from one run at a larger
budget (``expected_tree_tokens``; ``tree_sizing.py`` measures and chooses N, ``chain_sizing.py`` γ).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


def device_sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def verify_cost_curve(model, *, max_tokens: int = 16, prefix: int | None = None, cfg: bool = True,
                      repeats: int = 15, warmup: int = 2, batch: int = 1) -> dict[int, float]:
    """Median seconds of one target forward over T = 1..``max_tokens`` new tokens at ``batch`` images (2 rows
    each with ``cfg``), reading a cache of ``prefix`` committed tokens (default: half the image, less where the
    ``max_tokens`` would not fit after it), as the verify
    step does. Clocks are read after a device synchronisation; ``warmup`` calls per T are discarded."""
    cfg_m = model.config
    if not 1 <= max_tokens < cfg_m.block_size:
        raise ValueError(f"max_tokens={max_tokens}: must be in [1, {cfg_m.block_size - 1}]")
    if prefix is None:
        prefix = max(1, min(cfg_m.block_size // 2, cfg_m.block_size - max_tokens))
    if not 1 <= prefix <= cfg_m.block_size - max_tokens:
        raise ValueError(f"prefix={prefix}: must be in [1, {cfg_m.block_size - max_tokens}]")
    dev = model.tok_embeddings.weight.device
    if batch < 1:
        raise ValueError(f"batch={batch}: must be >= 1")
    R = (2 if cfg else 1) * batch
    labels = torch.zeros(R, dtype=torch.long, device=dev)
    g = torch.Generator(device="cpu").manual_seed(0)
    toks = torch.randint(0, cfg_m.vocab_size, (R, prefix + max_tokens), generator=g).to(dev)
    cache = model.new_cache(R, prefix + max_tokens + 1)
    model(toks[:, : prefix - 1], labels, input_pos=torch.arange(prefix, device=dev), cache=cache)  # class + prefix
    times: dict[int, list[float]] = {T: [] for T in range(1, max_tokens + 1)}
    for r in range(warmup + repeats):  # sizes interleaved within each repeat, so load drift hits all alike
        for T in times:
            pos = (prefix + torch.arange(T, device=dev)).expand(R, T)
            device_sync(dev)
            t = time.perf_counter()
            model(toks[:, prefix : prefix + T], input_pos=pos, cache=cache, kv_len=prefix + T)
            device_sync(dev)
            if r >= warmup:
                times[T].append(time.perf_counter() - t)
    out = {T: statistics.median(v) for T, v in times.items()}
    return out


def expected_chain_tokens(accept_at: list[float], gamma: int) -> float:
    """E(γ) = 1 + sum_i prod_{j<=i} a_j; positions past the measured profile repeat its last value."""
    if gamma < 0:
        raise ValueError(f"gamma={gamma}: must be >= 0")
    if gamma and not accept_at:
        raise ValueError("accept_at: need at least one measured acceptance rate")
    e, run = 1.0, 1.0
    for i in range(gamma):
        run *= accept_at[min(i, len(accept_at) - 1)]
        e += run
    return e


@dataclass(frozen=True)
class Budget:
    """A chosen size: ``tokens`` verified per round (γ + 1 or nodes + 1), expected tokens per round, rate."""

    name: str
    tokens: int
    expected_tokens: float
    seconds_per_round: float

    @property
    def tokens_per_second(self) -> float:
        return self.expected_tokens / self.seconds_per_round


def choose_budget(verify_s: dict[int, float], candidates: dict[str, tuple[int, float, float]],
                  loop_s: float = 0.0) -> tuple[Budget, list[Budget]]:
    """Best candidate and all of them, ranked. ``candidates[name] = (verify tokens T, expected tokens E,
    draft seconds per round)``; T must be a measured point of ``verify_s``."""
    ranked = []
    for name, (T, E, draft_s) in candidates.items():
        if T not in verify_s:
            raise ValueError(f"candidate {name!r}: verify cost of {T} tokens not measured (have {sorted(verify_s)})")
        ranked.append(Budget(name, T, E, draft_s + verify_s[T] + loop_s))
    if not ranked:
        raise ValueError("candidates: need at least one")
    ranked.sort(key=lambda b: -b.tokens_per_second)
    return ranked[0], ranked


def choose_chain(verify_s: dict[int, float], accept_at: list[float], draft_step_s: float, loop_s: float = 0.0,
                 max_gamma: int | None = None) -> tuple[Budget, list[Budget]]:
    """γ maximising E(γ) / (γ·t_draft_step + t_verify(γ + 1) + t_loop) over the measured curve."""
    top = max(verify_s) - 1 if max_gamma is None else min(max_gamma, max(verify_s) - 1)
    cands = {f"chain{g}": (g + 1, expected_chain_tokens(accept_at, g), g * draft_step_s) for g in range(0, top + 1)}
    return choose_budget(verify_s, cands, loop_s)


def expected_tree_tokens(path_rank_counts: list[int], rounds: int, budget: int) -> float:
    """E(N) of an EAGLE-2 dynamic tree with node budget N, from one run at a budget >= N:
    ``1 + sum_{r<=N} path_rank_counts[r] / rounds`` (``dynamic_tree.py``: a smaller budget keeps the best-ranked
    nodes and its walk stops at the first path node ranked past it)."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: must be >= 1")
    if not 0 <= budget < len(path_rank_counts):
        raise ValueError(f"budget={budget}: must be in [0, {len(path_rank_counts) - 1}] (the measured run's budget)")
    return 1.0 + sum(path_rank_counts[1: budget + 1]) / rounds
