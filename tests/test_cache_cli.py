"""``accel calibrate scalekv`` writes a budget JSON that rebuilds the same ScaleKV policy."""
import json

import torch

from accel.cache.scalekv import ScaleKV
from accel.cli import main
from accel.commands import calibrate as cmd
from accel.models.var import VARConfig, build_var
from accel.models.var_vqvae import VQVAEConfig

PATCH = (1, 2, 3, 4, 6)


def tiny(model, vae, device):
    torch.manual_seed(0)
    vcfg = VQVAEConfig(vocab_size=16, z_channels=4, ch=32, v_patch_nums=PATCH, ch_mult=(1, 1), num_res_blocks=1,
                       using_sa=False, using_mid_sa=False)
    vae_, var = build_var(VARConfig(num_classes=3, depth=2, embed_dim=16, num_heads=2, patch_nums=PATCH), vcfg)
    return var.init_weights(init_adaln_gamma=1.0, generator=torch.Generator().manual_seed(0)), vae_.eval()


def test_calibrate_cli_writes_budgets(tmp_path, monkeypatch):
    monkeypatch.setattr(cmd, "load_var_pair", tiny)
    out = tmp_path / "b.json"
    assert main(["calibrate", "scalekv", "--n-images", "2", "--batch-size", "2", "--window", "1",
                 "--fractions", "0.1", "0.2", "--drafter-fraction", "0.25", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert set(d["budgets"]) == {"0.1", "0.2"} and d["depth"] == 2 and d["asi"][0] is None
    for f in (0.1, 0.2):
        for split in ("paper", "code"):
            pol = ScaleKV.from_calibration(d, f, split=split, window=1, drafter_fraction=0.25)
            assert pol.budget.to_dict()["tokens"] == d["budgets"][f"{f:g}"][split]["tokens"]
