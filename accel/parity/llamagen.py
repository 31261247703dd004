"""Parity of accel's LlamaGen with a fixture folder in the format of ``shared/fixtures/llamagen/``.

Configs come from the folder's JSON files. The ``generate()`` runs are keyed ``{run}_tokens`` (plus
optional ``{run}_step_logits``, ``{run}_raw_model_logits``, ``{run}_step_probs``); each run's settings
are read from its line in the folder's README (``- `run`: cond=..., cfg_scale=..., ...``, seed from
``torch.manual_seed(N)`` on that line), falling back to the public fixture's documented settings.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from accel.models.llamagen import GPTConfig, load_gpt
from accel.models.llamagen_generate import SamplingConfig, generate
from accel.models.llamagen_vq import VQConfig, load_vq
from accel.parity.report import Report, Tracker, close, exact, load_tensors

TOL = dict(logits=1e-4, image=1e-4, probs=1e-4, latent=1e-4, loss=1e-5, rope=1e-6)

# The public fixture's documented runs (README "generate() runs"), used when a README line is missing.
DEFAULT_RUNS = {
    "greedy_nocfg": dict(cfg_scale=1.0, cfg_interval=-1, temperature=1.0, top_k=0, top_p=1.0, sample_logits=False),
    "greedy_cfg": dict(cfg_scale=4.0, cfg_interval=-1, temperature=1.0, top_k=0, top_p=1.0, sample_logits=False),
    "greedy_cfg_interval": dict(cfg_scale=4.0, cfg_interval=5, temperature=1.0, top_k=0, top_p=1.0,
                                sample_logits=False),
    "sample_cfg": dict(cfg_scale=4.0, cfg_interval=-1, temperature=1.0, top_k=16, top_p=0.9, sample_logits=True,
                       seed=1234),
}
RUN_SUFFIXES = ("_tokens", "_step_logits", "_raw_model_logits", "_step_probs")
FIELDS = {"cfg_scale": float, "cfg_interval": int, "temperature": float, "top_k": int, "top_p": float,
          "sample_logits": lambda s: s == "True", "max_new_tokens": int}


REQUIRED = ("gpt_c2i_config.json", "gpt_c2i.safetensors", "gpt_c2i_io.safetensors", "vq_config.json", "vq.safetensors",
            "vq_io.safetensors")  # checked by `accel parity` before any work
def parse_runs(readme: str) -> dict[str, dict]:
    """Run settings from README lines like ``- `name`: cond=[1, 2], cfg_scale=4.0, ...``."""
    runs = {}
    for m in re.finditer(r"^- `(\w+)`: (.*)$", readme, flags=re.M):
        name, rest = m.groups()
        kv = dict(re.findall(r"(\w+)=([^,;\s]+)", rest))
        if "cfg_scale" not in kv:
            continue
        run = {k: FIELDS[k](kv[k]) for k in FIELDS if k in kv}
        seed = re.search(r"manual_seed\((\d+)\)", rest)
        if seed:
            run["seed"] = int(seed.group(1))
        runs[name] = run
    return runs


def check_gpt(d: Path, report: Report, runs: dict) -> tuple[Tracker, GPTConfig]:
    cfg = GPTConfig.from_json(d / "gpt_c2i_config.json")
    model = load_gpt(d / "gpt_c2i.safetensors", cfg)
    io = Tracker(load_tensors(d / "gpt_c2i_io.safetensors"), "gpt_c2i_io")
    with torch.no_grad():
        report.add(close("gpt.freqs_cis", model.freqs_cis, io["freqs_cis"], TOL["rope"]))
        tok, lab = io["tf_tokens"], io["tf_class_labels"]
        logits = model(tok[:, :-1], lab, input_pos=io["tf_input_pos"])
        report.add(close("gpt.tf_logits", logits, io["tf_logits"], TOL["logits"]))
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tok.reshape(-1))
        report.add(close("gpt.tf_loss", loss.reshape(1), io["tf_loss"], TOL["loss"]))
    names = sorted({k[: -len(s)] for k in io.keys() for s in RUN_SUFFIXES if k.endswith(s)})
    for name in names:
        if f"{name}_tokens" not in io:
            continue
        settings = {**DEFAULT_RUNS.get(name, {}), **runs.get(name, {})}
        if "cfg_scale" not in settings:
            continue  # unknown run: its tensors stay unused and are reported as failures
        seed = settings.pop("seed", None)
        n = settings.pop("max_new_tokens", io.tensors[f"{name}_tokens"].size(1))
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        trace = {}
        toks = generate(model, io["gen_class_labels"], n, SamplingConfig(**settings), generator=gen, trace=trace)
        report.add(exact(f"gpt.{name}.tokens", toks, io[f"{name}_tokens"]))
        for suffix, key, tol in (("_step_logits", "logits", TOL["logits"]), ("_step_probs", "probs", TOL["probs"]),
                                 ("_raw_model_logits", "raw", TOL["logits"])):
            if f"{name}{suffix}" in io:
                got = torch.stack(trace[key], 1)  # (B or 2B, T, V)
                report.add(close(f"gpt.{name}{suffix}", got, io[f"{name}{suffix}"], tol))
    return io, cfg


def check_vq(d: Path, report: Report, gpt_cfg: GPTConfig | None) -> Tracker:
    cfg = VQConfig.from_json(d / "vq_config.json")
    vq = load_vq(d / "vq.safetensors", cfg)
    io = Tracker(load_tensors(d / "vq_io.safetensors"), "vq_io")
    with torch.no_grad():
        img = io["image"]
        pre = vq.encode_pre_quant(img)
        zq, idx = vq.encode(img)
        report.add(close("vq.encode_pre_quant", pre, io["encode_pre_quant"], TOL["latent"]))
        report.add(close("vq.encode_quant", zq, io["encode_quant"], TOL["latent"]))
        report.add(exact("vq.encode_indices", idx, io["encode_indices"]))
        report.add(close("vq.codebook_normalized", vq.quantize.codebook(), io["codebook_normalized"], TOL["latent"]))
        want_idx = io.tensors["encode_indices"]
        report.add(close("vq.decode_code_image", vq.decode_code(want_idx), io["decode_code_image"], TOL["image"]))
        report.add(close("vq.decode_from_encode_quant", vq.decode(io.tensors["encode_quant"]),
                         io["decode_from_encode_quant"], TOL["image"]))
        if "e2e_gpt_greedy_cfg_tokens" in io and gpt_cfg is not None:
            g = gpt_cfg.grid_size
            e2e = vq.decode_code(io["e2e_gpt_greedy_cfg_tokens"], (g, g))
            report.add(close("vq.e2e_decode_code_image", e2e, io["e2e_decode_code_image"], TOL["image"]))
    return io


def run(d: Path) -> Report:
    d = Path(d)
    report = Report()
    readme = (d / "README.md").read_text() if (d / "README.md").exists() else ""
    runs = parse_runs(readme)
    gpt_io, gpt_cfg = check_gpt(d, report, runs)
    report.unknown += gpt_io.unused()
    vq_io = check_vq(d, report, gpt_cfg)
    report.unknown += vq_io.unused()
    known = {"README.md", "gpt_c2i_config.json", "gpt_c2i.safetensors", "gpt_c2i_io.safetensors",
             "vq_config.json", "vq.safetensors", "vq_io.safetensors"}
    report.unknown += [f"{p.name} (unknown file)" for p in sorted(d.iterdir()) if p.name not in known]
    return report
