"""Model cards: measured facts about each zoo model, written next to its weights (``cards/NAME.md``).

Every number in a card is produced by ``accel train NAME --card`` (this module), which states the command
at the top of the card: config and recipe from the run checkpoint, steps/wall time/final losses from the
run log, quality and batch-1 latency measured here.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from accel import zoo
from accel.checkpoint import read_checkpoint
from accel.harness.quality import evaluate, FeatureReference
from accel.zoo.sample import class_grid_labels, ZooSampler
from accel.zoo.store import IMAGE_DATA, read_zoo_file
from accel.zoo.sample import DEFAULTS


def feature_reference(device="cpu"):
    """The harness ``FeatureReference`` of the zoo classifier (test-set statistics shipped with it)."""
    clf = zoo.classifier(device=device)
    ref = zoo.reference_stats()
    return FeatureReference(
        name="fmnist-cnn",
        extract=lambda images: clf.features_logits(images.to(device)),
        ref_stats=(ref["ref_mean"].double().numpy(), ref["ref_cov"].double().numpy()),
        real_feats=ref["ref_bank"].double().numpy())


@torch.no_grad()
def generator_quality(name: str, *, per_class: int = 100, seed: int = 0, batch: int = 250, device="cpu",
                      **settings) -> dict:
    """Quality of ``per_class * 10`` samples of a zoo generator with its default (or given) settings."""
    sampler = ZooSampler(name, device, **settings)
    ref = feature_reference(device)
    labels = class_grid_labels(per_class)
    gen = torch.Generator(device=device).manual_seed(seed)
    feats, logits = [], []
    t0 = time.perf_counter()
    for chunk in labels.split(batch):
        f, lg = ref.extract(sampler(chunk, generator=gen))
        feats.append(f.cpu())
        logits.append(lg.cpu())
    wall = time.perf_counter() - t0
    q = evaluate(torch.cat(feats), torch.cat(logits), labels, ref, seed=seed, n_boot=50)
    return {**q, "n": len(labels), "settings": sampler.settings, "seed": seed, "sampling_wall_s": round(wall, 1)}


def median_latency(fn, *, warmup: int = 5, repeats: int = 30) -> float:
    """Median wall seconds of ``fn()`` after warm-up (single process, CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def forward_latency(name: str, device="cpu") -> dict:
    """Batch-1 forward latency of a zoo model: one KV-cached decode step (mid-sequence) for a GPT, one
    decode / encode for a tokenizer, one image for the classifier."""
    model, info = zoo.load_with_info(name, device=device)
    kind = info["kind"]
    out = {"threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}
    if kind == "llamagen-gpt":
        cfg = model.config
        cache = model.new_cache(1)
        half = cfg.block_size // 2
        toks = torch.zeros(1, half, dtype=torch.long, device=device)
        model(toks, torch.zeros(1, dtype=torch.long, device=device), input_pos=torch.arange(half + 1, device=device),
              cache=cache)
        x, pos = toks[:, :1], torch.tensor([half + 1], device=device)
        out["decode_step_s"] = median_latency(lambda: model(x, input_pos=pos, cache=cache))
    elif kind == "llamagen-vq":
        g = 32 // model.config.downsample
        idx = torch.zeros(1, g, g, dtype=torch.long, device=device)
        img = torch.zeros(1, 3, 32, 32, device=device)
        out["decode_s"] = median_latency(lambda: model.decode_code(idx))
        out["encode_s"] = median_latency(lambda: model.encode(img))
    elif kind == "fmnist-cnn":
        img = torch.zeros(1, 3, 32, 32, device=device)
        out["forward_s"] = median_latency(lambda: model(img))
    elif kind == "mar-vae":
        img = torch.zeros(1, 3, 32, 32, device=device)
        z = model.encode(img).mean
        out["decode_s"] = median_latency(lambda: model.decode(z))
        out["encode_s"] = median_latency(lambda: model.encode(img))
    elif kind == "var":

        vae = zoo.load(zoo.TOKENIZER[name], device=device)
        lab = torch.zeros(1, dtype=torch.long, device=device)
        g = torch.Generator(device=device).manual_seed(0)
        kw = DEFAULTS.get(name, {})  # the card's sampling settings (cfg, top-k/p)
        out["generate_s"] = median_latency(lambda: model.autoregressive_infer_cfg(vae, 1, lab, generator=g, **kw),
                                           warmup=2, repeats=10)  # every scale, batched CFG, VQVAE decode included
    elif kind == "var-vqvae":
        img = torch.zeros(1, 3, 32, 32, device=device)
        idx = model.img_to_idxBl(img)
        out["decode_s"] = median_latency(lambda: model.idxBl_to_img(idx))
        out["encode_s"] = median_latency(lambda: model.img_to_idxBl(img))
    elif kind == "mar":
        c = model.cfg
        toks = torch.zeros(1, c.seq_len, c.token_embed_dim, device=device)
        mask = torch.zeros(1, c.seq_len, device=device)
        mask[:, c.seq_len // 2:] = 1  # half known
        lab = torch.zeros(1, dtype=torch.long, device=device)
        z = model.condition(toks, mask, lab)
        t = torch.tensor([500], device=device)
        x = torch.zeros(1, c.token_embed_dim, device=device)
        out["condition_s"] = median_latency(lambda: model.condition(toks, mask, lab))  # encoder + decoder pass
        out["head_net_s"] = median_latency(lambda: model.diffloss.net(x, t, z[0, :1]))  # one diffusion step, 1 token
    else:
        out["note"] = f"no latency probe for kind {kind!r}"
        return out
    out["params"] = sum(p.numel() for p in model.parameters())
    return out


def run_summary(run_dir: Path) -> dict:
    """Steps, total wall time over sessions, last training losses and last eval, from the run log."""
    log = [json.loads(x) for x in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    wall, prev = 0.0, 0.0
    for r in log:
        if r["time"] < prev:
            wall += prev
        prev = r["time"]
    notes = [f"step {r['step']}: {r['note']}" for r in log if "note" in r]
    train = [r for r in log if "loss" in r]
    evals = [r for r in log if "eval" in r]
    return {"steps": train[-1]["step"] if train else 0, "wall_s": round(wall + prev, 1),
            "last_train": {k: v for k, v in train[-1].items() if k not in ("time",)} if train else {},
            "last_eval": evals[-1]["eval"] if evals else {}, "notes": notes, "sessions": 1 + sum(
                1 for a, b in zip(log, log[1:]) if b["time"] < a["time"])}


def _fmt(d: dict) -> str:
    return "\n".join(f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |" for k, v in d.items())


def write_card(name: str, run_dir: Path, *, command: str, quality: dict | None, latency: dict | None,
               notes: str = "", data: str = IMAGE_DATA, out_dir: Path | None = None) -> Path:
    """Write ``cards/NAME.md`` from the run checkpoint/log plus measured quality and latency. Without the run
    folder (``runs/`` is not versioned), the training facts come from the shipped file's ``info`` and the
    card says that the log is not available. A shipped file whose ``info`` has ``made_by`` (the commands that
    made it, oldest first: a model made outside one ``accel train`` run) lists those commands instead of
    ``accel train NAME`` and takes every training fact from its ``info``. ``data``: the card's data line (the
    recipe's ``card_data``: the Fashion-MNIST images, or what a distilled model was trained on instead)."""
    role = zoo.ZOO[name]
    wpath = zoo.weights_path(name)
    info = read_zoo_file(wpath)[2] if wpath.is_file() else None  # read (decompressed) once
    made_by = (info or {}).get("made_by")  # a file made outside `accel train` records its own commands
    if made_by is None and (Path(run_dir) / "last.pt").is_file():
        state = read_checkpoint(Path(run_dir) / "last.pt", required=("recipe",))
        run = run_summary(run_dir)
    else:
        if info is None:
            raise FileNotFoundError(f"neither the run folder {run_dir} nor the shipped file {wpath} exists")
        state = {"recipe": info.get("recipe", {}), "ema": info.get("weights") == "ema"}
        missing = (f"the run folder {run_dir} is not in this checkout" if made_by is None else
                   "made by the commands above, not by one `accel train` run") + "; facts from the shipped file's info"
        run = {"steps": info.get("step"), "wall_s": info.get("wall_s"), "sessions": "-", "notes": [missing],
               "last_train": {"note": missing}, "last_eval": info.get("eval", {"note": missing})}
    # the export may ship either weight set: the file's record wins over what the run keeps
    kept = (info or {}).get("weights")
    kept = kept if kept in ("ema", "raw") else ("ema" if state.get("ema") else "raw")
    weights = {"ema": "EMA", "raw": "raw"}[kept]
    shipped = "-" if info is None else f"{wpath.name} ({wpath.stat().st_size / 1e6:.2f} MB, fp16 safetensors, xz)"
    lines = [f"# {name}", "", f"{role[2]} (family `{role[0]}`, role `{role[1]}`).", "",
             "Made by (from the repository root):", "", "```", *(made_by or [f"accel train {name}"]), command, "```",
             "",
             data, "",
             "## Training", "", "| field | value |", "|---|---|",
             _fmt({"steps": run["steps"], "total steps planned": state.get("total_steps"),
                   "wall time (s, all sessions)": run["wall_s"], "sessions": run["sessions"],
                   "machine": "shared 2-core CPU (training threads are not recorded; the notes give them where known)",
                   "run log notes": "; ".join(run["notes"]) or "-", "weights": weights,
                   "shipped file": shipped}),
             "", "Recipe (exact, from the checkpoint):", "", "```json", json.dumps(state["recipe"], indent=1), "```", "",
             "Final training log row:", "", "```json", json.dumps(run["last_train"]), "```", "",
             "Last evaluation:", "", "```json", json.dumps(run["last_eval"]), "```", ""]
    if quality:
        lines += ["## Quality", "", "| metric | value |", "|---|---|", _fmt(quality), ""]
    if latency:
        lines += ["## Batch-1 latency (median, warm-up excluded)", "", "| field | value |", "|---|---|",
                  _fmt(latency), ""]
    if notes:
        lines += ["## Notes", "", notes, ""]
    out = (out_dir or zoo.CARDS_DIR) / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
