"""Cache policies inside VAR's decode loop: identity == no policy (bitwise), exact kept bytes, calibration."""
import json

import pytest
import torch

from accel.models.kv_cache import KeepAll
from accel.cache.budgets import map_sizes
from accel.cache.calibrate import calibrate_var
from accel.cache.method import CompressedVAR
from accel.cache.registry import POLICIES, build_policy
from accel.models.var import VARConfig, build_var
from accel.models.var_vqvae import VQVAEConfig

PATCH = (1, 2, 3, 4, 6, 8)
WIN = 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)  # module init only; decoding below uses explicit generators
    vae_cfg = VQVAEConfig(vocab_size=32, z_channels=8, ch=32, v_patch_nums=PATCH, ch_mult=(1, 1), num_res_blocks=1,
                          using_sa=False, using_mid_sa=False)
    var_cfg = VARConfig(num_classes=4, depth=3, embed_dim=32, num_heads=2, patch_nums=PATCH, drop_path_rate=0.0)
    vae, var = build_var(var_cfg, vae_cfg)
    # gamma 1 and head 1 (not the training init) so attention, hence the cache, really shapes the tokens
    var.init_weights(init_adaln_gamma=1.0, init_head=1.0, generator=torch.Generator().manual_seed(1))
    return vae.eval(), var.eval()


@pytest.fixture(scope="module")
def calib(model):
    vae, var = model
    return calibrate_var(var, vae, n_images=2, batch_size=1, seed=3)


@pytest.fixture(scope="module")
def reference(model):
    return run(model, None)


def run(model, policy, seed=7):
    vae, var = model
    return CompressedVAR(var, vae, policy).generate(torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(seed))


def test_calibration_is_deterministic(model, calib):
    vae, var = model
    again = calibrate_var(var, vae, n_images=2, batch_size=1, seed=3)
    assert json.dumps(again) == json.dumps(calib)
    assert calib["asi"][0] is None and all(len(r) == 3 for r in calib["asi"][1:])
    assert all(0.0 <= a <= 1.0 for r in calib["asi"][1:] for a in r)
    other = calibrate_var(var, vae, n_images=2, batch_size=1, seed=4)
    assert other["asi"] != calib["asi"], "ASI must depend on the calibration decodes"


@pytest.mark.parametrize("name", POLICIES)
def test_full_budget_bitwise_equals_no_policy(model, calib, reference, name):
    ref = reference
    out = run(model, KeepAll() if name == "full" else build_policy(name, PATCH, 3, 1.0, window=WIN, calib=calib))
    assert torch.equal(out.images, ref.images) and torch.equal(out.stats["tokens"], ref.stats["tokens"])
    assert out.stats["kv_kept_table"] == ref.stats["kv_kept_table"]


@pytest.mark.parametrize("name", [p for p in POLICIES if p != "full"])
def test_kept_bytes_are_exactly_the_budget(model, calib, reference, name):
    vae, var = model
    policy = build_policy(name, PATCH, 3, 0.2, window=WIN, calib=calib)
    out = run(model, policy)
    per_token = 2 * 6 * 32 * 4  # k and v, 2B = 6 rows, C = H * D = 32 channels, fp32
    assert policy.budget.compressed_scales
    for l in range(3):
        L = 0
        for k, (h, w) in enumerate(map_sizes(PATCH)):
            L += h * w  # attended: what was kept + this scale's fresh entries
            assert out.stats["kv_attended_table"][k][l] == per_token * L
            b = policy.budget.keep(l, k)
            L = L if b is None or b >= L else b
            assert out.stats["kv_kept_table"][k][l] == per_token * L
            if b is not None:
                assert L == b  # the compressed scales keep exactly their budget
    full = reference
    assert out.stats["kv_bytes"] < full.stats["kv_bytes"]
    assert out.images.shape == full.images.shape and torch.isfinite(out.images).all()


def test_fidelity_grid_same_noise(model, calib):
    """A full-budget policy reproduces the full cache exactly (same noise): PSNR inf, agreement 1, FID 0;
    a compressed one is measured against the same decodes."""
    from accel.harness.cache_fidelity import fidelity_grid
    from accel.cache.report import fidelity_table, goal_check

    vae, var = model
    pols = {("sliding", 1.0): build_policy("sliding", PATCH, 3, 1.0, window=WIN),
            ("scalekv", 0.1): build_policy("scalekv", PATCH, 3, 0.2, window=WIN, calib=calib)}
    extract = lambda x: (x.flatten(1)[:, :6].double(), None)  # noqa: E731 - tiny stand-in feature extractor
    res = fidelity_grid(var, vae, pols, n_images=12, batch_size=6, seed=0, extract=extract, progress=False)
    same, comp = res[("sliding", 1.0)], res[("scalekv", 0.1)]
    assert same["psnr"] == float("inf") and same["token_agreement"] == 1.0 and same["ssim"] == pytest.approx(1.0)
    assert same["fid_vs_full"] == pytest.approx(0.0, abs=1e-6) and same["kv_peak_attended_ratio"] == 1.0
    assert comp["token_agreement"] < 1.0 and comp["kv_kept_ratio"] <= 0.2 and comp["kv_max_kept_ratio"] <= 0.2
    rows = [{"experiment": "scalekv", "method": m, "params": {"budget": f}, "psnr": r["psnr"], "ssim": r["ssim"],
             "token_agreement": r["token_agreement"], "fid": r.get("fid_vs_full"), "detail": r, "fid_feature": None}
            for (m, f), r in res.items()]
    assert "scalekv" in fidelity_table(rows) and "kept bytes" in goal_check(rows)
