"""Fidelity and memory of cache policies against the full-cache output of the same VAR, same noise.

For every batch the full-cache decode and every policy's decode use the same labels and the same seeded
``torch.Generator``; differences come only from the cache. Per policy:

* ``psnr``: 10 log10(1 / MSE) with the MSE pooled over all images (torchmetrics' default reduction, as the
  ScaleKV evaluation), from the harness's per-image PSNR; ``psnr_median``: median per-image PSNR (inf if
  identical); ``ssim``: mean per-image SSIM; ``token_agreement``: fraction of equal token ids;
* ``fid_vs_full``: FID between the policy's and the full cache's images on the ``fmnist-cnn`` features
  (``FID[fmnist-cnn, N=n]``), when a feature extractor is given;
* memory from the exact ``KVCache`` byte tables of the first batch (``meter.memory_summary``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from accel.cache.method import CompressedVAR
from accel.cache.meter import memory_summary
from accel.harness import metrics as M


@torch.no_grad()
def fidelity_grid(var, vae, policies: dict, *, n_images: int, batch_size: int, seed: int, cfg: float = 1.5,
                  top_k: int = 0, top_p: float = 0.0, extract=None, progress: bool = True) -> dict[str, dict]:
    """Metrics of every ``policies[name]`` against the full cache (``None`` entries are not allowed)."""
    dev = next(var.parameters()).device
    full = CompressedVAR(var, vae, None, cfg=cfg, top_k=top_k, top_p=top_p)
    meth = {n: CompressedVAR(var, vae, p, name=str(n), cfg=cfg, top_k=top_k, top_p=top_p) for n, p in policies.items()}
    acc = {n: {"mse": [], "psnr_img": [], "ssim": [], "agree": 0, "tokens": 0, "feats": [], "mem": None} for n in meth}
    full_feats, full_first = [], None
    starts = list(range(0, n_images, batch_size))
    for j, s in enumerate(tqdm(starts, desc="scalekv fidelity", disable=not progress)):
        labels = torch.arange(s, min(s + batch_size, n_images), device=dev) % var.num_classes
        ref = full.generate(labels, generator=torch.Generator(device=dev).manual_seed(seed + j))
        full_first = full_first or ref.stats
        if extract is not None:
            full_feats.append(extract(ref.images)[0].cpu())
        for n, m in meth.items():
            out = m.generate(labels, generator=torch.Generator(device=dev).manual_seed(seed + j))
            a = acc[n]
            p = M.psnr(out.images.float().cpu(), ref.images.float().cpu())
            a["psnr_img"] += p.tolist()
            a["mse"] += [0.0 if math.isinf(x) else 10 ** (-x / 10) for x in p.tolist()]
            a["ssim"] += M.ssim(out.images.float().cpu(), ref.images.float().cpu()).tolist()
            t_out, t_ref = out.stats["tokens"], ref.stats["tokens"]
            a["agree"] += int((t_out == t_ref).sum())
            a["tokens"] += t_ref.numel()
            if extract is not None:
                a["feats"].append(extract(out.images)[0].cpu())
            if a["mem"] is None:
                S = getattr(policies[n], "budget", None)
                a["mem"] = memory_summary(out.stats["kv_kept_table"], out.stats["kv_attended_table"],
                                          full_first["kv_kept_table"], full_first["kv_attended_table"],
                                          S.compressed_scales if S is not None else ())
                a["mem"]["kv_kept_per_scale"] = out.stats["kv_kept_bytes"]
                a["mem"]["kv_full_kept_per_scale"] = full_first["kv_kept_bytes"]
    res = {}
    ff = torch.cat(full_feats).double().numpy() if full_feats else None
    for n, a in acc.items():
        mse = float(np.mean(a["mse"]))
        r = {"psnr": math.inf if mse == 0 else 10 * math.log10(1 / mse), "psnr_median": float(np.median(a["psnr_img"])),
             "ssim": float(np.mean(a["ssim"])), "token_agreement": a["agree"] / a["tokens"], "n_images": n_images,
             **a["mem"]}
        if ff is not None:
            r["fid_feature"] = M.metric_name("FID", "fmnist-cnn", n_images) + " vs full cache"
            try:  # N below the feature dimension gives singular covariances the harness refuses: recorded
                r["fid_vs_full"] = M.fid(torch.cat(a["feats"]).double().numpy(), ff)
            except ValueError as e:
                r["fid_vs_full"], r["fid_error"] = None, str(e)
        budget = getattr(policies[n], "budget", None)
        r["budget_kept_fraction"] = budget.kept_fraction() if budget is not None else 1.0
        res[n] = r
    return res
