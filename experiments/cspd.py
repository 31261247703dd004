"""CSpD (arXiv 2411.11925) on the zoo MARs: target-only vs CSpD over gamma, alignment, pre-filling, verification.

    python experiments/cspd.py --quick                 # < 7 minutes on 2 shared CPU cores (gamma 8, batch 1, no FID)
    python experiments/cspd.py                          # the grid (gamma 4/8/16, batch 1 and 16, N=200)
    python experiments/cspd.py --random --quick         # no zoo MARs: small RANDOM configs, speed only
    python experiments/cspd.py --acceptance             # acceptance per position / sigma-gap, zoo and aligned draft
    python experiments/cspd.py --acceptance --random --quick   # acceptance vs alignment on perturbed-copy drafts
    python experiments/cspd.py --acceptance --loops released --cfgs 1 2 3 5   # acceptance / sigma-gap per CFG scale
    python experiments/cspd.py --chain-gap --cfgs 1 2 3 5  # where the sigma-gap is made: per head step, hand-off
    python experiments/cspd.py --quick --disa linear:50:5   # + CSpD composed with a DiSA step schedule
    python experiments/cspd.py --quality-only --n-images 200 --methods cspd-released-T42-aligned-g8   # FID, no timing

Baseline: the target MAR alone, one token per AR step (``cspd-target-only``), timed interleaved with every
CSpD variant in the same run (accel.harness.runner), at the zoo card's settings (cfg 5.0 constant, 50 head steps,
950 clip). Every row names the law it samples (params["law"], ``accel.presets.cspd.law``) and the grid holds
the draft-free control of each law (``grid``). After timing, one extra profiled call per method and batch size
gives the cost split (draft, verify MAR pass, verify head, residual) and the acceptance / sigma-gap per window
position (``cspd_cost_split.jsonl``): read from each method's LAST timed call at that batch size (``Recorded``),
not from an extra call.
``--disa SPEC`` (issue 9): per schedule, CSpD with both heads on the DiSA schedule (``cspd-disa-*``) and the
target alone on it (``target-only-disa-*``, DiSA without CSpD), against the same constant-step baseline.
"""
import argparse
import copy
import dataclasses
import sys
from pathlib import Path

import torch

from accel.annealing.disa import describe, make_schedule
from accel.harness.registry import MethodEntry, Registry
from accel.harness.results import append_rows, current_command
from accel.harness.runner import RunConfig, run_group
from accel.presets import cspd as CM
from accel.speculative.cspd import CSpDConfig
from accel.speculative.cspd_method import CSpDMAR, TargetOnlyMAR

GAMMAS = (4, 8, 16)
RULES = {"exact": {}, "T42": dict(std_product="official", inner_temperature=42.0)}  # T42: the released code's rule
DRAFTS = {"zoo": CM.DRAFT, "aligned": CM.ALIGNED}


def grid(quick: bool, head_steps=None, disa=(), drafts=("zoo", "aligned"), gammas=None) -> list[tuple[str, dict]]:
    """Every CSpD row names its loop, rule, draft and gamma, and (params["law"], ``presets.cspd.law``) the law it
    samples; the draft-free control of each law is in the grid: ``target-parallel-g<k>`` (the parallel law) and
    the baseline ``cspd-target-only`` (one token per AR step; ``target-parallel-g1`` is the same law with the
    last Gaussian step's noise, the textbook rows' exact law).

    - ``released``: the released code's per-window loop (one target pass on the window-start context, every
      draft accepted or resampled on its own); ``ltr``: the same conditioning, left-to-right (paper's algorithm);
      ``textbook``: draft j judged given drafts 1..j-1 (left-to-right);
    - rules: ``exact`` (min(1, p/q) on the last-step Gaussians) and ``T42`` (released inner temperature 42 and
      std-product term: not distribution-preserving);
    - drafts: the zoo draft and the aligned draft (``fmnist-mar-draft-aligned``).
    ``quick``: gamma 8 (textbook: 4), one draft (the first of ``drafts``), no T42 textbook / ltr rows, no one-token
    control. ``gammas``: the window lengths of every row (default 4 / 8 / 16; quick: 8)."""
    gammas = tuple(gammas) if gammas else (8,) if quick else GAMMAS
    drafts = drafts[:1] if quick else drafts
    pts = [(f"target-parallel-g{k}", dict(gamma=k, draft=None)) for k in gammas]
    if not quick and 1 not in gammas:
        pts.append(("target-parallel-g1", dict(gamma=1, draft=None)))
    for d in drafts:
        for loop, kw in (("released", dict(verify="independent")), ("textbook", dict(conditioning="textbook"))):
            for rule, rk in RULES.items():
                if quick and loop == "textbook" and rule != "exact":
                    continue
                ks = (4,) if quick and loop == "textbook" else gammas  # textbook at acceptance ~0: g drafts per token
                pts += [(f"cspd-{loop}-{rule}-{d}-g{k}", dict(gamma=k, draft=DRAFTS[d], **kw, **rk)) for k in ks]
        if not quick:
            pts.append((f"cspd-ltr-exact-{d}-g4", dict(gamma=4, draft=DRAFTS[d])))
    for spec in disa:
        dname = describe(make_schedule(spec))
        k = gammas[-1]
        pts += [(f"cspd-disa-{dname}-released-exact-{drafts[0]}-g{k}",
                 dict(gamma=k, schedule=spec, verify="independent", draft=DRAFTS[drafts[0]])),
                (f"target-parallel-disa-{dname}-g{k}", dict(gamma=k, schedule=spec, draft=None)),
                (f"target-only-disa-{dname}", dict(schedule=spec, draft="target-only"))]
    return [(n, {**kw, **({"head_steps": head_steps} if head_steps else {})}) for n, kw in pts]


def random_models(device, img_size=32):
    """Small random MARs shaped like the zoo's (32x32 images -> 8x8 latents of 16 channels; ``img_size=16``:
    4x4 latents, 16 tokens) and a tiny random KL-VAE."""
    from accel.models.kl_vae import AutoencoderKL, KLVAEConfig
    from accel.models.mar import MAR, MARConfig

    base = dict(img_size=img_size, vae_stride=4, vae_embed_dim=16, class_num=10, buffer_size=8, num_sampling_steps="100")
    torch.manual_seed(0)
    p = MAR(MARConfig(**base, encoder_embed_dim=192, encoder_depth=4, encoder_num_heads=6, decoder_embed_dim=192,
                      decoder_depth=4, decoder_num_heads=6, diffloss_d=3, diffloss_w=256)).eval().to(device)
    q = MAR(MARConfig(**base, encoder_embed_dim=96, encoder_depth=1, encoder_num_heads=3, decoder_embed_dim=96,
                      decoder_depth=1, decoder_num_heads=3, diffloss_d=2, diffloss_w=128)).eval().to(device)
    vae = AutoencoderKL(KLVAEConfig(embed_dim=16, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1)).eval().to(device)
    return p, q, vae


def registry(args) -> Registry:
    reg = Registry()
    if not args.random:
        hs = {"head_steps": args.head_steps} if args.head_steps else {}
        reg.add(MethodEntry("cspd-target-only", "mar", lambda ctx: CM.build_target_only(ctx, **hs),
                            models=(CM.TARGET,), experiment="cspd", params={"law": "one-token", **hs},
                            unavailable=CM.missing_with()))
        for name, kw in grid(args.quick, args.head_steps, args.disa, tuple(args.drafts), args.gammas):
            if kw.get("draft") == "target-only":
                reg.add(CM.target_only_entry(name, **{k: v for k, v in kw.items() if k != "draft"}))
            else:
                reg.add(CM.entry(name, **kw))
        return reg
    models = {}

    def get(ctx):
        if "m" not in models:
            models["m"] = random_models(ctx.device, 16 if args.quick else 32)
        return models["m"]

    base = CSpDConfig(**({"head_steps": args.head_steps} if args.head_steps else {}))
    reg.add(MethodEntry("cspd-target-only", "mar", lambda ctx: TargetOnlyMAR(get(ctx)[0], get(ctx)[2], base),
                        models=("random-mar",), experiment="cspd", params={"head_steps": base.head_steps}))
    for name, kw in grid(args.quick, args.head_steps, args.disa, ("zoo",), args.gammas):
        def build(ctx, n=name, kw=kw):
            p, q, vae = get(ctx)
            k = CM.config(**{a: b for a, b in kw.items() if a != "draft"})
            if kw.get("draft") == "target-only":
                return TargetOnlyMAR(p, vae, k, name=n)
            return CSpDMAR(p, q if kw.get("draft") else None, vae, k, name=n)
        reg.add(MethodEntry(name, "mar", build, models=("random-mar",), baseline="cspd-target-only",
                            experiment="cspd", params=kw))
    return reg


def acceptance_ablation(args) -> list[dict]:
    """Acceptance only (no timing): the random target vs drafts that are copies of it with every weight
    perturbed by relative noise ``scale``: alignment, inner temperature and std-product variants."""
    from accel.harness.results import environment, make_row
    from accel.speculative.cspd import cspd_sample_tokens

    p, _, _ = random_models(args.device, 16 if args.quick else 32)
    rows, labels = [], torch.arange(16) % 10
    variants = {"aligned": {}, "unaligned": dict(align=False), "aligned-T42": dict(inner_temperature=42.0),
                "unaligned-T42": dict(align=False, inner_temperature=42.0), "aligned-paper-std": dict(std_product="paper")}
    for scale in (1e-4, 1e-3, 1e-2):
        torch.manual_seed(1)
        q = copy.deepcopy(p)
        with torch.no_grad():
            for prm in q.parameters():
                prm.mul_(1 + scale * torch.randn_like(prm))
        for name, kw in variants.items():
            cfg = CSpDConfig(gamma=4, verify="independent", head_steps=args.head_steps or "100", **kw)
            st = cspd_sample_tokens(p, q, labels, cfg, generator=torch.Generator().manual_seed(0)).stats
            rows.append(make_row(experiment="cspd-acceptance", family="mar", model="random-mar", method=name,
                                 params={**kw, "draft_weight_noise": scale, "gamma": 4}, batch_size=16,
                                 acceptance_rate=st["accepted"] / st["drafted"], seed=0,
                                 env=environment(args.device), command=current_command(), random_weights=True))
            print(f"draft noise {scale:g} {name:<18} acceptance {st['accepted'] / st['drafted']:.3f}")
    return rows


def plot(out: Path) -> Path:
    """Speed-up per method and batch size of the latest run in ``out/cspd.jsonl`` (reads JSONL only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from accel.harness.results import read_rows

    rows = [r for r in read_rows(out / "cspd.jsonl") if r.get("speedup") is not None]  # timed rows only
    rows = [r for r in rows if r.get("run_id") == rows[-1].get("run_id")]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    batches = sorted({r["batch_size"] for r in rows})
    fig, ax = plt.subplots(figsize=(9, 4))
    w = 0.8 / len(batches)
    for i, bs in enumerate(batches):
        val = {r["method"]: r["speedup"] for r in rows if r["batch_size"] == bs}
        ax.bar([m + i * w for m in range(len(methods))], [val.get(m, 0) for m in methods], w, label=f"batch {bs}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([m + w * (len(batches) - 1) / 2 for m in range(len(methods))], methods, rotation=30, ha="right")
    ax.set_ylabel("speed-up vs target alone (1 token/step)")
    ax.set_title("CSpD" + (" (RANDOM weights: speed only)" if rows[-1].get("random_weights") else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "cspd_speedup.png", dpi=120)
    return out / "cspd_speedup.png"


class Recorded:
    """A method that keeps the stats of its latest Sample per batch size in ``store`` (the harness times after
    the quality pass, so what is kept is the last timed call's): the cost split and per-position acceptance
    come from the timed calls themselves, no extra call."""

    def __init__(self, method, store: dict):
        self.method, self.store = method, store
        self.name, self.params = method.name, getattr(method, "params", {})

    def generate(self, cond: torch.Tensor, *, generator: torch.Generator):
        s = self.method.generate(cond, generator=generator)
        self.store[(self.name, len(cond))] = s.stats
        return s


def recorded(reg: Registry, store: dict) -> Registry:
    """``reg`` with every entry's method wrapped in ``Recorded`` (same names, params and baselines)."""
    wrap = lambda e: dataclasses.replace(e, build=lambda ctx, b=e.build: Recorded(b(ctx), store))  # noqa: E731
    return Registry({n: wrap(e) for n, e in reg.entries.items()}, modules=reg.modules)


def cost_split(store: dict, name: str, batch: int) -> dict | None:
    """Cost split (s per part) and per-position acceptance of ``name``'s last timed call at ``batch``."""
    st = store.get((name, batch))
    if st is None or "time_split_s" not in st:
        return None
    return {**st["time_split_s"], "fallbacks": st.get("fallbacks"), **by_position(st)}


def by_position(st: dict) -> dict:
    """Acceptance per window position j: ``accept_by_pos`` (accepted / judged), ``accept_given_prefix_by_pos``
    (accepted among drafts whose earlier drafts were all accepted: the left-to-right rate) and the mean gap
    ||mean_q - mean_p|| / rms(std_p) (``gap_sigma_by_pos``); empty for rows without drafts."""
    d = st.get("drafted_by_pos")
    if not d or not sum(d):
        return {}
    r = lambda a, b: [round(x / y, 4) if y else None for x, y in zip(a, b)]  # noqa: E731
    return {"accept_by_pos": r(st["accepted_by_pos"], d),
            "accept_given_prefix_by_pos": r(st["accepted_reached_by_pos"], st["reached_by_pos"]),
            "gap_sigma_by_pos": [round(x / y, 1) if y else None for x, y in zip(st["gap_sigma_by_pos"], d)]}


def quality_only(args, reg: Registry, model: str) -> list[dict]:
    """FID etc. of ``--methods`` without timing: the harness's quality pass (``run_group``'s: same seeds, chunks
    and reference), one method at a time, no baseline; rows carry no speed-up (``experiment`` "cspd-quality")."""
    from accel.harness.distributed import generate_indexed
    from accel.harness.quality import evaluate
    from accel.harness.registry import BuildContext
    from accel.harness.results import environment, make_row
    from accel.harness.runner import aggregate_stats, new_run_id
    from accel.presets.zoo_models import load_reference

    cfg, dev = RunConfig(n_images=args.n_images or 200, device=args.device), torch.device(args.device)
    ref, rows, run_id = load_reference(args.device), [], new_run_id()
    for name in args.methods or ():
        e = reg.get(name)
        s = generate_indexed(e.build(BuildContext(model=model, device=dev)), cfg.n_images, chunk=cfg.quality_batch,
                             seed=cfg.seed, num_classes=cfg.num_classes, device=dev, extract=ref.extract)
        c = aggregate_stats(s.stats)
        rows.append(make_row(experiment="cspd-quality", family="mar", model=model, method=name, params=e.params,
                             batch_size=cfg.quality_batch, n_images=cfg.n_images, seed=cfg.seed,
                             acceptance_rate=c["acceptance_rate"], mean_accept_len=c["mean_accept_len"],
                             **evaluate(s.feats, s.logits, s.cond, ref, seed=cfg.seed, n_boot=cfg.n_boot),
                             env=environment(args.device), command=current_command(), run_id=run_id))
        append_rows(args.out / "cspd.jsonl", rows[-1:])
        print(f"{name:<34} FID {rows[-1]['fid']:.2f} {rows[-1].get('fid_ci')} acceptance {c['acceptance_rate']}")
    return rows


def zoo_acceptance(args) -> list[dict]:
    """Acceptance only (no timing, no FID) on the zoo pair, per draft x loop x rule at one gamma: overall and per
    window position, the mean sigma-gap; ``--n-images`` images (default 32) at batch 16, the card's settings."""
    from accel import zoo
    from accel.harness.results import environment, make_row
    from accel.speculative.cspd import cspd_sample_tokens

    p = zoo.load(CM.TARGET, device=args.device)
    settings = CM.zoo_settings(CM.TARGET)
    n, gamma, rows = args.n_images or 32, args.gamma, []
    cfgs = args.cfgs or (settings["cfg"],)
    drafts = {d: zoo.load(DRAFTS[d], device=args.device) for d in args.drafts if zoo.is_available(DRAFTS[d])}
    for d in set(args.drafts) - set(drafts):
        print(f"{DRAFTS[d]} not in this copy of the zoo: skipped")
    loops = {"released": dict(verify="independent"), "textbook": dict(conditioning="textbook")}
    for loop in args.loops:
        kw = loops[loop]
        for d, q in drafts.items():  # the cheap released rows of every draft first
            for rule, scale in ((r, s) for s in cfgs for r in args.rules):
                rk = RULES[rule]
                c = CM.config(**{**settings, "gamma": gamma, **kw, **rk, "cfg": scale})
                tot: dict = {}
                for i in range(0, n, 16):
                    lab = torch.arange(i, min(n, i + 16)) % 10
                    st = cspd_sample_tokens(p, q, lab.to(args.device), c,
                                            generator=torch.Generator(args.device).manual_seed(i)).stats
                    for k, v in st.items():
                        if isinstance(v, list) and k.endswith("_by_pos"):
                            tot[k] = [a + b for a, b in zip(tot.get(k, [0] * len(v)), v)]
                        elif k in ("accepted", "drafted"):
                            tot[k] = tot.get(k, 0) + v
                name = f"cspd-{loop}-{rule}-{d}-g{gamma}" + ("" if scale == settings["cfg"] else f"-cfg{scale:g}")
                rows.append(make_row(experiment="cspd-acceptance", family="mar", model=CM.TARGET, method=name,
                                     params={**CM.describe_config(c), "draft": DRAFTS[d], "law": CM.law(c, d)},
                                     batch_size=16, n_images=n, acceptance_rate=tot["accepted"] / tot["drafted"], seed=0,
                                     env=environment(args.device), command=current_command(), **by_position(tot)))
                append_rows(args.out / "cspd_acceptance.jsonl", rows[-1:])  # row by row: a cut run keeps its rows
                print(f"{name:<34} acceptance {tot['accepted'] / tot['drafted']:.3f} by position "
                      f"{rows[-1]['accept_by_pos']} given prefix {rows[-1]['accept_given_prefix_by_pos']} "
                      f"gap/sigma {rows[-1]['gap_sigma_by_pos']}", flush=True)
    return rows


def chain_gap(args) -> list[dict]:
    """Where the sigma-gap comes from (no loop, no timing): at fixed contexts (16 of the target's own chains at
    the card's settings; known counts 4/16/32/48/60, 4 predicted positions each, fixed orders and head noise),
    per CFG scale of both heads (``--cfgs``) and per head step k of the 48 run:

    - ``free``: ||mean_k^q - mean_k^p|| / rms(sigma_k^p), each head on its OWN chain under the shared noise (the
      last step's value is the loop's sigma-gap: the CSpD token x = mean_0^q is judged against N(mean_0^p, ...));
    - ``forced``: the same with the draft's step taken on the TARGET's state x_k^p (the per-step error alone);
    - ``self_delta``: the target against itself with its head condition z moved by delta * rms(z) Gaussian noise
      (delta 1e-3 / 1e-2 / 1e-1): how much the 48-step chain amplifies a condition error at this CFG scale;
    - ``handoff``: the last-step gap when the draft takes over the target's chain at step k (k = 0: ``free``;
      k = 47: ``forced``): which head steps the final gap is made in;
    - ``accept_T42``: mean min(1, r) of x = mean_0^q under the released relaxation (T = 42, std product none,
      the target judging on the true context: the window's first position in the textbook loop);
      ``accept_T42_released`` the same with the released rule's std product of the two paths (the loop's rule)."""
    from accel import zoo
    from accel.harness.results import environment, make_row
    from accel.models.mar import head_schedule, sample_tokens
    from accel.models.mar_head import HeadNoise
    from accel.speculative.cspd_math import log_acceptance_ratio, log_std_product
    from accel.train.recipes.mar_draft_aligned import chain_gaps

    p = zoo.load(CM.TARGET, device=args.device)
    settings = CM.zoo_settings(CM.TARGET)
    g = torch.Generator(args.device).manual_seed(7)
    lab = torch.arange(16, device=args.device) % 10
    seq = sample_tokens(p, lab, generator=g, num_iter=p.cfg.seq_len, cfg=settings["cfg"],
                        cfg_schedule="constant", head_steps=settings["head_steps"]).seq
    B, L, C = seq.shape
    sched = head_schedule(settings["head_steps"], 0, 1, max_timestep=p.cfg.max_timestep)
    S, rows = sched.num_steps, []
    ctx = []
    for k in (4, 16, 32, 48, 60):
        order = torch.argsort(torch.rand(B, L, generator=g, device=seq.device), dim=1)
        mask = torch.ones(B, L, device=seq.device).scatter_(1, order[:, :k], 0.0)
        ctx.append((mask, order[:, k:k + 4]))
    n = B * 4 * len(ctx)
    x_T = torch.randn((n, C), generator=g, device=seq.device)
    noise = torch.randn((S, n, C), generator=g, device=seq.device)
    unit = torch.randn((n, p.cfg.decoder_embed_dim), generator=g, device=seq.device)
    drafts = {d: zoo.load(DRAFTS[d], device=args.device) for d in args.drafts if zoo.is_available(DRAFTS[d])}
    picks = [0, S // 4, S // 2, 3 * S // 4, S - 2, S - 1]
    with torch.no_grad():
        for scale in args.cfgs or (settings["cfg"],):
            guided = scale != 1.0
            def cond(m):  # head conditions of every context; under CFG [cond; uncond] per context -> all cond rows first
                z = torch.cat([m.head_condition(seq, mk, lab, pos, cfg=guided) for mk, pos in ctx])
                return torch.cat([z.reshape(len(ctx), 2, B * 4, -1)[:, h].reshape(n, -1) for h in (0, 1)]) if guided else z

            dup = lambda t: torch.cat([t, t]) if guided else t  # noqa: E731
            zp = cond(p)
            tp = p.head.sample_trajectory(zp, schedule=sched, cfg=scale, noise=HeadNoise(x_T, noise))
            sp = (0.5 * tp.log_variance[:, :n]).exp()
            rms = lambda a, b: ((a[:, :n] - b[:, :n]).norm(dim=-1) / sp.square().mean(-1).sqrt())  # noqa: E731
            out = {}
            for delta in (1e-3, 1e-2, 1e-1):
                zz = zp + delta * zp.square().mean(-1, keepdim=True).sqrt() * dup(unit)
                ts = p.head.sample_trajectory(zz, schedule=sched, cfg=scale, noise=HeadNoise(x_T, noise))
                out[f"self_delta{delta:g}"] = round(float(rms(ts.mean, tp.mean)[-1].mean()), 1)
            row0 = dict(cfg=scale, **out)
            print(f"cfg {scale:g}: target vs itself, z moved by delta: {out}", flush=True)
            for d, q in drafts.items():
                cg = chain_gaps(p.head, q.head, zp, cond(q), sched, scale, HeadNoise(x_T, noise), handoff_at=picks)
                free, tf, handoff = cg["free"], cg["forced"], [round(float(h.mean()), 1) for h in cg["handoff"]]
                lr = log_acceptance_ratio(cg["mean_q"], cg["mean_p"], cg["std_p"], cg["mean_q"], cg["std_q"],
                                          torch.zeros(()), 42.0)
                released = lr + log_std_product(cg["lsum_p"], cg["lsum_q"], "official")  # the loop's T42 rule
                r = {**row0, "draft": DRAFTS[d], "steps_k": picks,
                     "free_gap_by_step": [round(float(free[k].mean()), 1) for k in picks],
                     "forced_gap_by_step": [round(float(tf[k].mean()), 2) for k in picks],
                     "handoff_final_gap": handoff,
                     "gap_sigma_mean": round(float(free[-1].mean()), 1),
                     "gap_sigma_median": round(float(free[-1].median()), 1),
                     "accept_T42": round(float(lr.clamp(max=0).exp().mean()), 4),
                     "accept_T42_released": round(float(released.clamp(max=0).exp().mean()), 4),
                     "accept_T42_by_known": [round(float(v), 4) for v in
                                             lr.clamp(max=0).exp().reshape(len(ctx), -1).mean(-1)]}
                rows.append(make_row(experiment="cspd-chain-gap", family="mar", model=CM.TARGET,
                                     method=f"chain-gap-{d}-cfg{scale:g}", params={"cfg": scale, "draft": DRAFTS[d],
                                     "head_steps": settings["head_steps"], "contexts": n}, batch_size=n, seed=7,
                                     env=environment(args.device), command=current_command(), **r))
                append_rows(args.out / "cspd_chain_gap.jsonl", rows[-1:])
                print(f"cfg {scale:g} {d:<8} gap {r['gap_sigma_mean']} (median {r['gap_sigma_median']}) "
                      f"accept T42 {r['accept_T42']} (with the released std product {r['accept_T42_released']}) "
                      f"by known {r['accept_T42_by_known']}; free gap at k={picks} "
                      f"{r['free_gap_by_step']}; forced {r['forced_gap_by_step']}; final gap when the draft takes over at k: "
                      f"{r['handoff_final_gap']}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--random", action="store_true", help="small random configs instead of the zoo (speed only)")
    ap.add_argument("--out", type=Path, default=Path("results/cspd"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on the shared 2-core CPU two threads per process oversubscribe "
                         "the cores and run several times slower; 0 = leave torch's default)")
    ap.add_argument("--batch-sizes", type=int, nargs="+")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--n-images", type=int)
    ap.add_argument("--head-steps", help="DDPM steps of every head, baseline included (default: zoo card / 100)")
    ap.add_argument("--acceptance", action="store_true",
                    help="acceptance only: zoo drafts x loop x rule at --gamma (with --random: perturbed random drafts)")
    ap.add_argument("--chain-gap", action="store_true",
                    help="sigma-gap per head step and CFG scale (--cfgs) at fixed contexts, zoo and aligned drafts")
    ap.add_argument("--gamma", type=int, default=8, help="gamma of --acceptance")
    ap.add_argument("--gammas", type=int, nargs="+", help="window lengths of the grid's rows (default 4 8 16)")
    ap.add_argument("--cfgs", type=float, nargs="+",
                    help="CFG scales of --acceptance (target AND draft; schedule unchanged; default: the card's 5.0)")
    ap.add_argument("--loops", nargs="+", default=("released", "textbook"), choices=("released", "textbook"),
                    help="loops of --acceptance, in this order")
    ap.add_argument("--rules", nargs="+", default=tuple(RULES), choices=sorted(RULES),
                    help="rules of --acceptance, in this order")
    ap.add_argument("--drafts", nargs="+", default=("zoo", "aligned"), choices=sorted({*DRAFTS, "file"}),
                    help="zoo drafts of the grid (--quick: the first only); file: the --draft-file")
    ap.add_argument("--draft-file", type=Path, help="a MAR draft in the zoo's file format (NAME.safetensors.xz), "
                                                    "named 'file' in --drafts and in the rows' method names")
    ap.add_argument("--plot", action="store_true", help="only redraw the plot from OUT/cspd.jsonl")
    ap.add_argument("--quality-only", action="store_true", help="FID of --methods at --n-images (default 200), no timing")
    ap.add_argument("--methods", nargs="+", help="run only these grid entries (the baseline always runs)")
    ap.add_argument("--disa", nargs="+", default=(), metavar="SPEC",
                    help="add CSpD composed with these DiSA schedules, e.g. linear:50:5 (annealing.disa.make_schedule)")
    args = ap.parse_args(argv)
    if args.gammas and min(args.gammas) < 1:
        ap.error(f"--gammas {args.gammas}: every window length must be >= 1")
    if ("file" in args.drafts) != (args.draft_file is not None):
        ap.error("--draft-file and '--drafts ... file' go together")
    if args.draft_file is not None:
        if not args.draft_file.is_file():
            ap.error(f"--draft-file {args.draft_file}: no such file")
        DRAFTS["file"] = str(args.draft_file)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.plot:
        print(f"plot written to {plot(args.out)}")
        return 0
    if args.chain_gap:
        chain_gap(args)
        return 0
    if args.acceptance:
        if args.random:
            append_rows(args.out / "cspd_acceptance.jsonl", acceptance_ablation(args))
        else:
            zoo_acceptance(args)
        print(f"rows appended to {args.out / 'cspd_acceptance.jsonl'}")
        return 0
    reg = registry(args)
    base = reg.get("cspd-target-only")
    model = base.models[0]
    if args.quality_only:
        quality_only(args, reg, model)
        return 0
    why = base.why_unavailable(model)
    if why:
        print(f"zoo MARs unavailable ({why}); rerun with --random for a speed-only run on random configs")
        return 2
    # --quick (< 7 minutes on 2 shared cores): gamma 8, one draft, batch 1, one timed repeat, no quality pass (an
    # FID needs N >= 200: ``--n-images 200``; at N = 16 the quality pass cost 2/3 of the run and measured noise)
    quality = 0 if args.random or args.quick else 200
    cfg = RunConfig(batch_sizes=tuple(args.batch_sizes or ((1,) if args.quick else (1, 16))),
                    repeats=args.repeats or (1 if args.quick else 3), warmup=1,
                    n_images=quality if args.n_images is None else args.n_images, device=args.device, memory=False)
    ref = None
    if cfg.n_images:
        from accel.presets.zoo_models import load_reference

        ref = load_reference(args.device)
    entries = [e for e in reg.entries.values() if e.baseline is not None and (not args.methods or e.name in args.methods)]
    for name in set(args.methods or ()) - set(reg.entries):
        raise KeyError(f"unknown method {name!r}; valid: {sorted(reg.entries)}")
    store: dict = {}
    reg = recorded(Registry({e.name: e for e in [base, *entries]}, modules=reg.modules), store)
    base, entries = reg.get(base.name), [reg.get(e.name) for e in entries]
    rows = run_group(reg, base, entries, model, cfg, reference=ref, command=current_command(),
                     progress=lambda m: print(m, file=sys.stderr, flush=True))
    for r in rows:
        r["random_weights"] = bool(args.random)
    for r in rows:
        r["cost_split_s"] = cost_split(store, r["method"], r["batch_size"])
    path = append_rows(args.out / "cspd.jsonl", rows)
    append_rows(args.out / "cspd_cost_split.jsonl",
                [{"run_id": r.get("run_id"), "method": r["method"], "batch_size": r["batch_size"],
                  "cost_split_s": r["cost_split_s"]} for r in rows])
    for r in rows:
        print(f"{r['method']:<28} bs={r['batch_size']:<3} speedup={r['speedup']:.2f}x "
              f"accept={r.get('acceptance_rate')} fid={r.get('fid')} split={r.get('cost_split_s')}")
    print(f"rows appended to {path}; plot {plot(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
