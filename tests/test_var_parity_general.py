"""`accel parity var` is not specialised to the public fixture: a folder in the same format with another
config (6 scales, other V/Cvae/depth/width/heads/classes, 3 encoder levels with a width change, 3 partially shared phis,
shared AdaLN) is read and checked end to end. The expected tensors here come from accel itself, so this
proves the harness's generality (every tensor found, consumed and compared), not numerical parity; the
public fixture (test_var_parity.py) proves parity with the official code."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from accel.cli import main
from accel.models.var import build_var, configs_from_official_json

CONFIG = {
    "VQVAE_kwargs": {"vocab_size": 24, "z_channels": 6, "ch": 32, "dropout": 0.0, "beta": 0.25, "using_znorm": False,
                     "quant_conv_ks": 3, "quant_resi": 0.5, "share_quant_resi": 3, "default_qresi_counts": 0,
                     "test_mode": True, "v_patch_nums": [1, 2, 3, 4, 5, 6]},
    "VQVAE_encoder_decoder_ddconfig_override": {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "dropout": 0.0,
                                                "in_channels": 3, "z_channels": 6, "using_sa": True, "using_mid_sa": True},
    "VAR_kwargs": {"num_classes": 7, "depth": 3, "embed_dim": 48, "num_heads": 3, "mlp_ratio": 4.0, "drop_rate": 0.0,
                   "attn_drop_rate": 0.0, "drop_path_rate": 0.0, "norm_eps": 1e-6, "shared_aln": True,
                   "cond_drop_rate": 0.1, "attn_l2_norm": True, "flash_if_available": False,
                   "fused_if_available": False, "patch_nums": [1, 2, 3, 4, 5, 6]},
    "autoregressive_infer_cfg_runs": [{"name": "run_a", "B": 2, "label_B": [6, 0], "g_seed": 5, "cfg": 2.0,
                                       "top_k": 10, "top_p": 0.8, "more_smooth": False}],
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@torch.no_grad()
def write_folder(folder):
    vae, var = build_var(*reversed(configs_from_official_json(CONFIG)))
    g = torch.Generator().manual_seed(0)
    for m in (vae, var):
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    img = torch.rand(2, 3, 24, 24, generator=g) * 2 - 1
    f = vae.img_to_f(img)
    idx = vae.img_to_idxBl(img)
    io = {"img_B3HW": img, "f_BChw_encoder_quantconv": f, "rec_img_last": vae.idxBl_to_img(idx),
          "rec_img_direct": vae.img_to_reconstructed_img(img), "idxBl_to_var_input": vae.quantize.idxBl_to_var_input(idx)}
    for si, (i, fh, r) in enumerate(zip(idx, vae.quantize.f_to_idxBl_or_fhat(f, True), vae.idxBl_to_img(idx, False))):
        io.update({f"idx_Bl.{si}": i, f"f_hat_after_scale.{si}": fh, f"rec_img_upto_scale.{si}": r})
    gt = [torch.randint(0, 24, (3, p * p), generator=g) for p in var.patch_nums]
    label = torch.tensor([1, 7, 3])
    x = vae.quantize.idxBl_to_var_input(gt)
    tf = {"label_B": label, "x_BLCv_wo_first_l": x, "logits_BLV": var(label, x)}
    h, cond = var.embed(label, x)
    tf["debug.block0_in_x_BLC"] = h
    for i, b in enumerate(var.blocks):
        h = tf[f"debug.block_out.{i}"] = b(h, var.shared_ada_lin(cond), var.attn_bias_for_masking)
    tf.update({f"gt_idx_Bl.{si}": t for si, t in enumerate(gt)})
    r = CONFIG["autoregressive_infer_cfg_runs"][0]
    s = var.autoregressive_infer_cfg(vae, 2, torch.tensor(r["label_B"]), generator=torch.Generator().manual_seed(5),
                                     cfg=2.0, top_k=10, top_p=0.8, keep_logits=True)
    ar = {"run_a.img_B3HW": s.images, "run_a.f_hat_final": s.f_hat}
    for si, (i, lg) in enumerate(zip(s.idx_Bl, s.logits_BlV)):
        ar.update({f"run_a.idx_Bl.{si}": i, f"run_a.guided_logits_BlV.{si}": lg})
    files = {"vqvae_state_dict.safetensors": vae.state_dict(), "var_state_dict.safetensors": var.state_dict(),
             "vqvae_io.safetensors": io, "var_teacher_forcing.safetensors": tf,
             "var_autoregressive_infer.safetensors": ar}
    manifest = {}
    for name, tensors in files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / name))
        manifest[name] = {"sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return len(io) + len(tf) + len(ar)


def test_parity_reads_another_config(tmp_path, capsys):
    n_tensors = write_folder(tmp_path)
    assert main(["parity", "var", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ar[run_a]: idx_Bl.5" in out and "tf: debug.block_out.2" in out
    # every output tensor was compared (inputs img/gt_idx/label are consumed, not compared)
    n_checks = sum(line.startswith("ok   ") and not line.startswith(("ok   manifest", "ok   load")) for line in out.splitlines())
    assert n_checks == n_tensors - 1 - 6 - 1
