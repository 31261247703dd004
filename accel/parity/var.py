"""``accel parity var DIR``: accel's VAR + multi-scale VQVAE against outputs of the official code.

Folder format: shared/fixtures/var/README.md (config.json, manifest.json, two state dicts, three output
files). Every tensor of every output file is either an input we feed or an output we check; anything
else is reported as unknown (a failure). Indices must match exactly; floats use the README's
``allclose(atol, rtol)`` (default 1e-4 / 1e-4).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from accel.checkpoint import CheckpointMismatch, load_strict
from accel.models.var import VAR, build_var, configs_from_official_json
from accel.models.var_vqvae import VQVAE
from accel.parity.report import Check, Report, Tracker, close, exact, load_json, load_tensors

STATE_FILES = {"vqvae": "vqvae_state_dict.safetensors", "var": "var_state_dict.safetensors"}
IO_FILES = ("vqvae_io.safetensors", "var_teacher_forcing.safetensors", "var_autoregressive_infer.safetensors")


REQUIRED = ("config.json", "vqvae_state_dict.safetensors", "var_state_dict.safetensors")  # checked by `accel parity`
def readme_tolerance(folder: Path) -> tuple[float, float]:
    """(atol, rtol) from the README's suggested assertion ``allclose(atol=..., rtol=...)``, else 1e-4 each."""
    readme = folder / "README.md"
    if readme.is_file():
        m = re.search(r"allclose\(atol=([0-9.eE+-]+),\s*rtol=([0-9.eE+-]+)\)", readme.read_text())
        if m:
            return float(m.group(1)), float(m.group(2))
    return 1e-4, 1e-4


class Checker:
    def __init__(self, report: Report, atol: float, rtol: float):
        self.report, self.atol, self.rtol = report, atol, rtol

    def floats(self, name: str, got: torch.Tensor, want: torch.Tensor) -> None:
        c = close(name, got, want, self.atol)
        if c.max_err != float("inf"):  # same shape: apply allclose semantics |g - w| <= atol + rtol |w|
            c.ok = bool(torch.allclose(got.double(), want.double(), atol=self.atol, rtol=self.rtol))
            c.note = f"allclose rtol={self.rtol:g}"
        self.report.add(c)

    def ints(self, name: str, got: torch.Tensor, want: torch.Tensor) -> None:
        self.report.add(exact(name, got, want))


def _scales(t: Tracker, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"\.(\d+)$")
    return sorted(int(m.group(1)) for k in t.keys() if (m := pat.match(k)))


def check_manifest(folder: Path, manifest: dict, report: Report) -> None:
    for fname, entry in manifest.items():
        path = folder / fname
        if not path.is_file():
            report.add(Check(f"manifest:{fname}", float("inf"), 0, False, "file listed in manifest.json is missing"))
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        ok = digest == entry.get("sha256")
        report.add(Check(f"manifest:{fname}:sha256", 0.0 if ok else 1.0, 0, ok, "" if ok else "sha256 differs"))


def check_vqvae(vae: VQVAE, t: Tracker, ck: Checker) -> None:
    img = t["img_B3HW"]
    f = vae.img_to_f(img)
    if "f_BChw_encoder_quantconv" in t:
        ck.floats("vqvae: f = quant_conv(encoder(img))", f, t["f_BChw_encoder_quantconv"])
    idx = vae.quantize.f_to_idxBl_or_fhat(f, to_fhat=False)
    for si in _scales(t, "idx_Bl"):
        ck.ints(f"vqvae: idx_Bl.{si}", idx[si] if si < len(idx) else torch.empty(0), t[f"idx_Bl.{si}"])
    fhats = vae.quantize.f_to_idxBl_or_fhat(f, to_fhat=True)
    for si in _scales(t, "f_hat_after_scale"):
        ck.floats(f"vqvae: f_hat_after_scale.{si}", fhats[si] if si < len(fhats) else torch.empty(0),
                  t[f"f_hat_after_scale.{si}"])
    if "rec_img_last" in t:
        ck.floats("vqvae: idxBl_to_img(last_one)", vae.idxBl_to_img(idx, last_one=True), t["rec_img_last"])
    recs = vae.idxBl_to_img(idx, last_one=False)
    for si in _scales(t, "rec_img_upto_scale"):
        ck.floats(f"vqvae: rec_img_upto_scale.{si}", recs[si] if si < len(recs) else torch.empty(0),
                  t[f"rec_img_upto_scale.{si}"])
    if "rec_img_direct" in t:
        ck.floats("vqvae: img_to_reconstructed_img", vae.img_to_reconstructed_img(img), t["rec_img_direct"])
    if "idxBl_to_var_input" in t:
        ck.floats("vqvae: idxBl_to_var_input", vae.quantize.idxBl_to_var_input(idx), t["idxBl_to_var_input"])


def check_teacher_forcing(vae: VQVAE, var: VAR, t: Tracker, ck: Checker) -> None:
    idx = [t[f"gt_idx_Bl.{si}"] for si in _scales(t, "gt_idx_Bl")]
    label_B = t["label_B"]
    x_in = vae.quantize.idxBl_to_var_input(idx)
    if "x_BLCv_wo_first_l" in t:
        ck.floats("tf: idxBl_to_var_input(gt_idx)", x_in, t["x_BLCv_wo_first_l"])
    ck.floats("tf: VAR.forward logits_BLV", var(label_B, x_in), t["logits_BLV"])
    x, cond_BD = var.embed(label_B, x_in)  # block by block, for the debug tensors
    if "debug.block0_in_x_BLC" in t:
        ck.floats("tf: debug.block0_in_x_BLC", x, t["debug.block0_in_x_BLC"])
    cond = var.shared_ada_lin(cond_BD)
    outs = _scales(t, "debug.block_out")
    for i, b in enumerate(var.blocks):
        x = b(x, cond, var.attn_bias_for_masking)
        if i in outs:
            ck.floats(f"tf: debug.block_out.{i}", x, t[f"debug.block_out.{i}"])
    for i in outs:
        if i >= len(var.blocks):
            ck.floats(f"tf: debug.block_out.{i}", torch.empty(0), t[f"debug.block_out.{i}"])


def check_inference(vae: VQVAE, var: VAR, runs: list[dict], t: Tracker, ck: Checker) -> None:
    for r in runs:
        name = r["name"]
        if not any(k.startswith(name + ".") for k in t.keys()):
            ck.report.add(Check(f"ar[{name}]", float("inf"), 0, False, "run listed in config.json has no tensors"))
            continue
        label = r.get("label_B")
        label = torch.tensor(label) if isinstance(label, list) else label
        # g_seed None: the official code samples from the global RNG, which cannot be replayed (only
        # top_k=1 runs are then checkable); we pass no generator either
        g = None if r.get("g_seed") is None else torch.Generator(device="cpu").manual_seed(int(r["g_seed"]))
        s = var.autoregressive_infer_cfg(vae, int(r["B"]), label, generator=g, cfg=float(r["cfg"]),
                                         top_k=int(r["top_k"]), top_p=float(r["top_p"]),
                                         more_smooth=bool(r.get("more_smooth", False)), keep_logits=True)
        for si in _scales(t, f"{name}.idx_Bl"):
            ck.ints(f"ar[{name}]: idx_Bl.{si}", s.idx_Bl[si] if si < len(s.idx_Bl) else torch.empty(0),
                    t[f"{name}.idx_Bl.{si}"])
        for si in _scales(t, f"{name}.guided_logits_BlV"):
            ck.floats(f"ar[{name}]: guided_logits_BlV.{si}",
                      s.logits_BlV[si] if si < len(s.logits_BlV) else torch.empty(0),
                      t[f"{name}.guided_logits_BlV.{si}"])
        if f"{name}.f_hat_final" in t:
            ck.floats(f"ar[{name}]: f_hat_final", s.f_hat, t[f"{name}.f_hat_final"])
        if f"{name}.img_B3HW" in t:
            ck.floats(f"ar[{name}]: img_B3HW", s.images, t[f"{name}.img_B3HW"])


def _load(report: Report, module, path: Path, what: str) -> bool:
    try:
        load_strict(module, load_tensors(path), what=what)
    except (CheckpointMismatch, OSError, RuntimeError) as e:
        report.add(Check(f"load {what}", float("inf"), 0, False, str(e)[:300]))
        return False
    report.add(Check(f"load {what} (strict, {len(module.state_dict())} tensors)", 0.0, 0, True))
    return True


@torch.no_grad()
def run(folder: Path) -> Report:
    folder = Path(folder)
    report = Report()
    cfg = load_json(folder / "config.json")
    if (folder / "manifest.json").is_file():
        check_manifest(folder, load_json(folder / "manifest.json"), report)
    atol, rtol = readme_tolerance(folder)
    ck = Checker(report, atol, rtol)
    vae_cfg, var_cfg = configs_from_official_json(cfg)
    vae, var = build_var(var_cfg, vae_cfg)
    ok = _load(report, vae, folder / STATE_FILES["vqvae"], "VQVAE state dict")
    ok = _load(report, var, folder / STATE_FILES["var"], "VAR state dict") and ok
    known = set(STATE_FILES.values()) | set(IO_FILES)
    report.unknown += [f"{p.name} (unknown file)" for p in sorted(folder.glob("*.safetensors")) if p.name not in known]
    if not ok:
        return report
    steps = (("vqvae_io.safetensors", lambda t: check_vqvae(vae, t, ck)),
             ("var_teacher_forcing.safetensors", lambda t: check_teacher_forcing(vae, var, t, ck)),
             ("var_autoregressive_infer.safetensors",
              lambda t: check_inference(vae, var, cfg.get("autoregressive_infer_cfg_runs", []), t, ck)))
    for fname, step in steps:
        if not (folder / fname).is_file():
            report.add(Check(fname, float("inf"), 0, False, "file missing"))
            continue
        t = Tracker(load_tensors(folder / fname), fname)
        step(t)
        report.unknown += t.unused()
    return report
