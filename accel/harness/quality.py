"""Quality of a generated set against the zoo classifier's real-data features (DESIGN.md §4).

``FeatureReference`` is what the harness needs from a feature extractor: ``extract(images) -> (feats,
logits)``, the real test-set statistics ``(mu, sigma)`` the FID is computed against, and real features for
precision/recall, KID and the real-vs-real floor at the same N. Metric names carry the extractor's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from accel.harness import metrics as M


@dataclass(frozen=True)
class FeatureReference:
    name: str  # e.g. "fmnist-cnn"; goes into every metric label
    extract: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # images [0,1] -> (feats (B,D), logits (B,C))
    ref_stats: tuple[np.ndarray, np.ndarray]  # (mu, sigma) of the real reference set
    real_feats: np.ndarray  # (M, D) real features for precision/recall, KID and the floor


def fid_statistic(ref: FeatureReference) -> Callable[[np.ndarray], float]:
    """FID of a feature array against ``ref``'s statistics: the same distance as ``M.fid``, via the eigenvalue
    form with the reference's square root computed once (fast enough for bootstrap replicates)."""
    mu_r, sigma_r = ref.ref_stats
    root_r = M.psd_sqrt(sigma_r)
    return lambda a: M.frechet_distance_eig(*M.feature_stats(a), mu_r, sigma_r, sqrt_sigma2=root_r)


def evaluate(feats: torch.Tensor, logits: torch.Tensor, cond: torch.Tensor, ref: FeatureReference, *,
             seed: int, n_boot: int = 100, k: int = 3) -> dict[str, Any]:
    """FID (with bootstrap interval and real floor at the same N), KID, precision/recall (k), class accuracy."""
    fake = feats.double().numpy()
    n = fake.shape[0]
    rng = np.random.default_rng(seed)
    fid = M.fid(fake, ref_stats=ref.ref_stats)
    # normal-approximation interval centred on the estimate (FID's resampling bias shifts percentile intervals)
    ci = M.bootstrap_interval(fid_statistic(ref), fake, rng=rng, n_boot=n_boot, method="normal") if n_boot else None
    real = ref.real_feats
    m = min(n, real.shape[0])
    real_n = real[rng.choice(real.shape[0], m, replace=False)]
    # floor: FID of N real rows against the statistics of the *other* real rows (disjoint, so not optimistic)
    floor = M.real_floor(real, n, rng=rng) if real.shape[0] >= n + 2 else None
    kid_mean, _ = M.kid(fake, real, rng=rng, n_subsets=50, subset_size=min(1000, n, real.shape[0]))
    precision, recall = M.precision_recall(real_n, fake, k=k)
    return {
        "fid": fid,
        "fid_ci": list(ci) if ci else None,
        "fid_floor": floor,
        "fid_feature": M.metric_name("FID", ref.name, n),
        "kid": kid_mean,
        "precision": precision,
        "recall": recall,
        "class_acc": M.class_consistency(logits, cond),
    }
