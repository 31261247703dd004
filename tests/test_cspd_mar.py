"""CSpD on (tiny, random) MARs: bookkeeping of both verification modes, alignment, pre-filling, CFG, the
Method wrapper. Distribution preservation itself is tested on analytic heads in test_cspd_math.py."""
import json
import math
from pathlib import Path

import pytest
import torch

from accel.annealing.schedules import ConstantSchedule, LinearSchedule, Respacing, steps_per_iteration
from accel.models.mar import MAR, MARConfig
from accel.speculative.cspd import CSpDConfig, cspd_sample_tokens
from accel.speculative.cspd_method import CSpDMAR, TargetOnlyMAR
from accel.types import Method

CFG = MARConfig(img_size=64, vae_stride=16, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=4,
                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4, vae_embed_dim=4, class_num=10,
                buffer_size=2, diffloss_d=1, diffloss_w=32)  # L = 16 tokens of 4 channels
L = CFG.seq_len


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def mar(seed, base=None, scale=0.0):
    """A random MAR, or (``base``) a copy of it with every weight perturbed by ``scale`` relative noise: a
    close draft, so acceptance is neither 0 nor 1 (two unrelated random heads never agree)."""
    torch.manual_seed(seed)
    m = MAR(CFG).eval()
    if base is not None:
        m.load_state_dict(base.state_dict())
        with torch.no_grad():
            for prm in m.parameters():
                prm.mul_(1 + scale * torch.randn_like(prm))
    return m


P = mar(0)
Q = mar(1, base=P, scale=3e-4)
LABELS = torch.tensor([1, 2, 3])
HEAD = "ddim8"  # 8 steps, t <= 875: an untrained eps-net at t = 999 blows tokens up to O(1e4)
# a DiSA schedule for the same reason kept at t <= 875 (clip): 8 -> 2 steps over the L = 16 AR positions
VARYING = LinearSchedule(8, 2, Respacing(clip=875))


def run(p=P, q=Q, seed=0, **kw):
    c = CSpDConfig(**{"gamma": 4, "head_steps": HEAD, **kw})
    return cspd_sample_tokens(p, q, LABELS, c, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("verify", ["left_to_right", "independent", "textbook"])
def test_bookkeeping(verify):
    r = run(verify=verify) if verify != "textbook" else run(conditioning="textbook")
    s = r.stats
    n_pre = math.floor(0.05 * L) + 1
    assert r.tokens.shape == (3, CFG.vae_embed_dim, 4, 4) and torch.isfinite(r.tokens).all()
    assert (r.tokens.abs().sum(1) > 0).all()  # every position written
    assert s["fallbacks"] == 0
    assert s["nfe_target"] == n_pre + s["windows"]
    committed = s["committed_drafts"] + s["residuals"]  # summed over the 3 rows
    assert committed == 3 * (L - n_pre)
    assert sum(s["windows_by_row"]) == s["verify_steps"] and max(s["windows_by_row"]) == s["windows"]
    if verify == "independent":
        assert s["windows"] == math.ceil((L - n_pre) / 4) and s["nfe_draft"] == L - n_pre
        assert s["committed_drafts"] == s["accepted"]
    else:
        assert s["nfe_draft"] >= L - n_pre and s["committed_drafts"] <= s["accepted"]
    assert set(s["time_split_s"]) >= {"draft", "verify_mar", "verify_head", "residual"}


def test_identical_models_gamma1_accept_everything_and_alignment_matters():
    same = run(p=P, q=P, gamma=1)
    assert same.stats["accepted"] == same.stats["drafted"] > 0 and same.stats["residuals"] == 0
    unaligned = run(p=P, q=P, gamma=1, align=False)
    assert unaligned.stats["accepted"] < unaligned.stats["drafted"]
    aligned, unaligned = run(), run(align=False)  # a close draft: alignment is what makes it accept at all
    assert aligned.stats["accepted"] > 0 and unaligned.stats["accepted"] < aligned.stats["accepted"]


def test_prefill_zero_and_all():
    assert run(prefill=0.0).stats["nfe_target"] == run(prefill=0.0).stats["windows"]
    full = run(prefill=1.0)
    assert full.stats["nfe_target"] == L and full.stats["nfe_draft"] == 0 and full.stats["windows"] == 0


def test_cfg_linear_and_official_preset_run_without_fallbacks():
    for c in (dict(cfg=2.0), dict(cfg=2.0, cfg_schedule="constant")):
        assert run(**c).stats["fallbacks"] == 0
    off = CSpDConfig.official(head_steps=HEAD)
    r = cspd_sample_tokens(P, Q, LABELS, off, generator=torch.Generator().manual_seed(0))
    assert r.stats["windows"] == math.ceil((L - 1) / 4)
    relaxed = run(inner_temperature=42.0, verify="independent").stats
    assert relaxed["accepted"] >= run(verify="independent").stats["accepted"]


def test_seeded_determinism_and_errors():
    assert torch.equal(run(seed=5).tokens, run(seed=5).tokens)
    with pytest.raises(KeyError, match="valid"):
        CSpDConfig(verify="tree")
    with pytest.raises(ValueError):
        CSpDConfig(gamma=0)
    small = MARConfig(**{**CFG.__dict__, "img_size": 32})
    with pytest.raises(ValueError, match="differ"):
        run(q=MAR(small).eval())


class _IdentityVAE(torch.nn.Module):
    def decode(self, z):
        return z[:, :3].repeat_interleave(8, -1).repeat_interleave(8, -2).tanh()


def test_methods_follow_the_protocol():
    vae = _IdentityVAE()
    for m in (CSpDMAR(P, Q, vae, CSpDConfig(gamma=4, head_steps=HEAD)),
              TargetOnlyMAR(P, vae, CSpDConfig(head_steps=HEAD))):
        assert isinstance(m, Method)
        s = m.generate(LABELS, generator=torch.Generator().manual_seed(0))
        assert s.images.shape == (3, 3, 32, 32) and 0 <= s.images.min() and s.images.max() <= 1
    assert s.stats["nfe_target"] == L


@pytest.mark.parametrize("schedule", [None, VARYING], ids=["head_steps", "disa_schedule"])
def test_exact_independent_verification_samples_the_draft_free_control(schedule):
    """Per-token verification with the exact rule outputs p(x_j | window-start context) independently over j:
    the law of the draft-free control q=None (under a DiSA schedule: p's head with S_j steps at position j).
    Two-sample KS per (position, channel), Bonferroni over 64; the same test at the same N rejects
    accept-everything with an unrelated draft. (It cannot tell 8 from 2 head steps on these random heads:
    min p ~ 0.02, measured; that the scheduled count reaches both heads is tested exactly below.)"""
    from scipy import stats

    B = 300
    lab = torch.full((B,), 3)
    sched = {} if schedule is None else {"schedule": schedule}

    def toks(q, seed, **kw):
        c = CSpDConfig(**{"gamma": L, "prefill": 0.0, "head_steps": HEAD, "verify": "independent", **sched, **kw})
        r = cspd_sample_tokens(P, q, lab, c, generator=torch.Generator().manual_seed(seed))
        return r.tokens.flatten(2).transpose(1, 2), r.stats  # (B, L, C)

    def min_p(x, y):
        return min(stats.ks_2samp(x[:, i, c].numpy(), y[:, i, c].numpy()).pvalue
                   for i in range(L) for c in range(CFG.vae_embed_dim))

    ctrl, s0 = toks(None, 1)
    assert s0["nfe_draft"] == 0 and s0["nfe_target"] == 1
    exact, s1 = toks(Q, 2)
    assert s1["accepted"] > 0.02 * s1["drafted"] and s1["fallbacks"] == 0  # drafts really were kept
    assert min_p(exact, ctrl) * L * CFG.vae_embed_dim > 1e-3
    broken, s2 = toks(mar(5), 2, inner_temperature=1e6)  # relaxed into "accept every draft"
    assert s2["accepted"] == s2["drafted"]
    assert min_p(broken, ctrl) * L * CFG.vae_embed_dim < 1e-6
    if schedule is not None:  # the step count really varies within the one window (both heads: next test)
        assert len(set(s1["steps_per_iter"])) > 3 and s1["steps_per_iter"] == s0["steps_per_iter"]


def test_constant_schedule_is_bitwise_head_steps():
    """``schedule=ConstantSchedule(S)`` is the default (``head_steps=S``) draw for draw, in every mode."""
    for kw in (dict(), dict(verify="independent", cfg=2.0), dict(align=False), dict(gamma=16, prefill=0.0)):
        a, b = run(head_steps=8, **kw), run(schedule=ConstantSchedule(8), **kw)
        assert torch.equal(a.tokens, b.tokens)
        assert a.stats["steps_per_iter"] == b.stats["steps_per_iter"] == [8] * L
        a.stats.pop("time_split_s"), b.stats.pop("time_split_s")
        assert a.stats == b.stats
    for kw in (dict(), dict(cfg=2.0, gamma=5)):  # the draft-free control and the official relaxed rule too
        c = run(p=P, q=None, head_steps=8, **kw)
        assert torch.equal(c.tokens, run(p=P, q=None, schedule=ConstantSchedule(8), **kw).tokens)
    off = dict(verify="independent", std_product="official", inner_temperature=42.0, cfg=2.0)
    assert torch.equal(run(head_steps=8, **off).tokens, run(schedule=ConstantSchedule(8), **off).tokens)


def test_disa_inside_cspd_runs_through_the_same_plan_objects():
    """DiSA inside CSpD: the StepSchedule that drives ``AnnealedMAR`` gives CSpD's per-position head schedules
    through the same ``head_schedule`` (same objects), on both heads; the run is finite and differs from the
    constant head."""
    from accel.models.mar import head_schedule
    from accel.speculative.cspd import step_schedules

    scheds = step_schedules(CSpDConfig(schedule=VARYING), L)
    assert all(s is head_schedule(VARYING, n, L) for n, s in enumerate(scheds))
    r = run(schedule=VARYING, cfg=2.0)
    assert torch.isfinite(r.tokens).all() and r.stats["fallbacks"] == 0
    assert r.stats["steps_per_iter"] == [s.num_steps for s in scheds]
    assert not torch.equal(r.tokens, run(cfg=2.0).tokens)


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_schedule_reaches_draft_and_target_heads(cfg):
    """Both heads run S_n = schedule(n, L) steps at AR position n: the head work is exact, and an identical
    draft (same head, same aligned noise, same S_n) is accepted everywhere although S_n varies."""
    want = steps_per_iteration(VARYING, L)
    assert len(set(want)) > 3
    r = run(schedule=VARYING, verify="independent", cfg=cfg)
    s, rows = r.stats, 3 * (2 if cfg != 1.0 else 1)  # head rows per token: [cond; uncond] under CFG
    n_pre = math.floor(0.05 * L) + 1
    assert s["steps_per_iter"] == want and s["fallbacks"] == 0 and torch.isfinite(r.tokens).all()
    # target: prefill + every window position; draft: every position after the prefill
    assert s["head_rows"] == rows * (sum(want) + sum(want[n_pre:]))
    same = run(p=P, q=P, gamma=1, schedule=VARYING, cfg=cfg)
    assert same.stats["accepted"] == same.stats["drafted"] > 0 and same.stats["residuals"] == 0
    assert not torch.equal(r.tokens, run(verify="independent", cfg=cfg).tokens)
    with pytest.raises(TypeError, match="StepSchedule"):
        CSpDConfig(schedule=8)


def test_head_per_row_cfg_equals_head_with_one_scale():
    """The head's per-row CFG (CSpD's one scale per window position; it replaced CSpD's private copy of the
    DDPM step) equals the scalar scale when all rows share it, and a row's scale changes only that row."""
    from accel.models.mar_head import DDPMSchedule, HeadNoise
    from accel.speculative.cspd import head_stats

    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, CFG.decoder_embed_dim, generator=g)  # [cond; uncond], N = 3
    sched = DDPMSchedule.respaced(HEAD)
    noise = HeadNoise(torch.randn(3, 4, generator=g), torch.randn(sched.num_steps, 3, 4, generator=g))
    want = head_stats(P.head, z, sched, noise, 0.9, 2.5)
    got = head_stats(P.head, z, sched, noise, 0.9, torch.full((3,), 2.5))
    for f in ("final_mean", "final_std", "log_std_sum", "sample"):
        assert torch.equal(getattr(got, f), getattr(want, f))
    other = head_stats(P.head, z, sched, noise, 0.9, torch.tensor([2.5, 1.0, 2.5]))
    assert torch.equal(other.sample[0], got.sample[0]) and not torch.equal(other.sample[1], got.sample[1])
    with pytest.raises(ValueError, match="per-row cfg"):
        head_stats(P.head, z, sched, noise, 0.9, torch.full((2,), 2.5))


def test_disa_composition_methods_and_registration():
    """``cspd-disa`` / ``cspd-disa-target-only`` are registered with JSON params; the target-only method with a
    schedule is DiSA at num_iter = L (AnnealedMAR) draw for draw, and a constant schedule is head_steps."""
    import json

    from accel.annealing.disa import AnnealedMAR
    from accel.presets import cspd as CM
    from accel.presets import registry

    reg = registry()
    assert not reg.errors
    for name in ("cspd-disa", "cspd-disa-target-only"):
        e = reg.get(name)
        assert e.baseline == "cspd-target-only" and e.experiment == "cspd"
        json.dumps(e.params)
    assert reg.get("cspd-disa").params["schedule"] == "linear50-5"
    assert CM.config(schedule="linear:50:5").schedule == LinearSchedule(50, 5)
    vae, gen = _IdentityVAE(), lambda: torch.Generator().manual_seed(4)
    only = TargetOnlyMAR(P, vae, CM.config(head_steps=HEAD, schedule=VARYING)).generate(LABELS, generator=gen())
    disa = AnnealedMAR(P, vae, VARYING, num_iter=L).generate(LABELS, generator=gen())
    assert torch.equal(only.images, disa.images) and only.stats["head_steps"] == sum(steps_per_iteration(VARYING, L))
    const = TargetOnlyMAR(P, vae, CM.config(schedule=ConstantSchedule(8))).generate(LABELS, generator=gen())
    steps8 = TargetOnlyMAR(P, vae, CM.config(head_steps=8)).generate(LABELS, generator=gen())
    assert torch.equal(const.images, steps8.images)
    m = CSpDMAR(P, Q, vae, CM.config(gamma=4, schedule=VARYING))
    json.dumps(m.params)
    s = m.generate(LABELS, generator=gen())
    assert s.stats["steps_per_iter"] == steps_per_iteration(VARYING, L) and s.images.shape == (3, 3, 32, 32)


@pytest.mark.parametrize("kw", [dict(), dict(cfg=2.0), dict(gamma=16, prefill=0.0), dict(schedule=VARYING, cfg=2.0)],
                         ids=["cfg1", "cfg2", "one-window", "disa"])
def test_textbook_target_as_its_own_draft_is_accepted_at_every_position(kw):
    """Textbook conditioning (the target judges draft j given drafts 1..j-1, the g prefixes in ONE padded call):
    with the target as its own draft and shared noise, p = q for every draft, so every position accepts (up to
    float rounding of the padded batch, far below the last-step std). The released conditioning (window-start
    context only) does not: its acceptance decays with the position."""
    r = run(p=P, q=P, conditioning="textbook", **kw)
    s = r.stats
    g = kw.get("gamma", 4)
    assert s["accepted"] == s["drafted"] > 0 and s["residuals"] == 0 and s["fallbacks"] == 0
    assert all(d > 0 for d in s["drafted_by_pos"][:g]) and s["accepted_by_pos"] == s["drafted_by_pos"]
    assert s["nfe_target"] == (0 if kw.get("prefill") == 0.0 else math.floor(0.05 * L) + 1) + s["windows"]
    assert max(s["gap_sigma_by_pos"]) / max(1, min(s["drafted_by_pos"][:g])) < 1e-2
    released = run(p=P, q=P, **kw).stats
    assert released["accepted_by_pos"][0] == released["drafted_by_pos"][0]  # position 0: the same context
    assert released["accepted"] < released["drafted"]


@pytest.mark.parametrize("kw", [dict(), dict(schedule=VARYING, cfg=2.0)], ids=["constant", "disa-cfg2"])
def test_textbook_exact_cspd_samples_the_one_token_target_law(kw):
    """The output law of textbook-conditioned, left-to-right CSpD with the exact rule is the target's one token
    per AR step (the draft-free control with gamma = 1: every token p(x_n | x_<n), last Gaussian step with noise).
    Each row has its own cursor (its accepted prefix + 1 per window), so the 300 rows of one batch sit at
    different AR positions, hence different head schedules and CFG scales under DiSA (asserted: the rows
    desynchronise). Seeded two-sample KS tests on low-dimensional statistics (per channel: the image's mean and
    its spread over the 16 positions; Bonferroni over 8), N = 300 images each. Power check: the same test at the
    same N rejects a broken rule (an unrelated draft, every token accepted)."""
    from scipy import stats

    B = 300
    lab = torch.full((B,), 3)

    def stat(q, seed, **kw2):
        c = CSpDConfig(**{"gamma": 4, "head_steps": HEAD, "conditioning": "textbook", **kw, **kw2})
        r = cspd_sample_tokens(P, q, lab, c, generator=torch.Generator().manual_seed(seed))
        t = r.tokens.flatten(2)  # (B, C, L)
        return torch.cat([t.mean(-1), t.std(-1)], 1).numpy(), r.stats  # (B, 2C)

    def min_p(x, y):
        return min(stats.ks_2samp(x[:, i], y[:, i]).pvalue for i in range(x.shape[1])) * x.shape[1]

    ctrl, s0 = stat(None, 1, gamma=1, conditioning="released")
    assert s0["nfe_draft"] == 0 and s0["nfe_target"] == L
    exact, s1 = stat(Q, 2)
    assert s1["accepted_reached_by_pos"][1] > 0 and s1["residuals"] > 0 and s1["fallbacks"] == 0  # both paths ran
    assert len(set(s1["windows_by_row"])) > 1  # per-row cursors: rows took different numbers of windows
    assert min_p(exact, ctrl) > 1e-3
    broken, s2 = stat(mar(5), 2, inner_temperature=1e6)  # relaxed into "accept (almost) every draft"
    assert s2["accepted"] > 0.99 * s2["drafted"]
    assert min_p(broken, ctrl) < 1e-6


def test_textbook_per_row_cursors_commit_each_rows_own_prefix():
    """At batch > 1 the textbook loop advances each row by ITS accepted prefix + 1 (not the shortest across rows):
    the target as its own draft is accepted at every position of every row (each row: ceil((L - n_pre) / g)
    windows); with a partly accepted draft, row b's windows are exactly what its own verdicts imply, so the
    batch takes as many target calls as its slowest row, fewer than the rows' windows summed."""
    n_pre = math.floor(0.05 * L) + 1
    lab = torch.arange(8)
    c = CSpDConfig(gamma=4, head_steps=HEAD, conditioning="textbook", cfg=2.0, schedule=VARYING)
    same = cspd_sample_tokens(P, P, lab, c, generator=torch.Generator().manual_seed(0)).stats
    assert same["accepted"] == same["drafted"] > 0 and same["residuals"] == 0
    assert same["windows_by_row"] == [math.ceil((L - n_pre) / 4)] * 8
    part = cspd_sample_tokens(P, Q, lab, c, generator=torch.Generator().manual_seed(0)).stats
    assert part["residuals"] > 0 and len(set(part["windows_by_row"])) > 1
    assert part["windows"] == max(part["windows_by_row"]) < sum(part["windows_by_row"]) == part["verify_steps"]
    assert part["committed_drafts"] + part["residuals"] == 8 * (L - n_pre)


def test_window_plan_per_row_starts_match_one_row_plans():
    """A WindowPlan with one start per row predicts, for every row, the positions, CFG scales and head
    schedules of a one-row plan started at that row's cursor (the per-row cursor loop's plans)."""
    from accel.speculative.cspd import WindowPlan, step_schedules

    cfg = CSpDConfig(head_steps=HEAD, schedule=VARYING, cfg=2.0)
    scheds = step_schedules(cfg, L)
    scales = [1.0 + 0.1 * k for k in range(L)]
    orders = P.sample_orders(3, torch.Generator().manual_seed(0), "cpu")
    starts = [1, 5, 9]
    z = torch.zeros(2 * 3 * 4, 8)  # (rows [cond; uncond], dec): only its length is read
    many = WindowPlan(starts, [4], scheds, scales)
    it, call = many.iteration(0, orders), many.head(0, z, model=P, generator=torch.Generator(), stats={})
    for b, s in enumerate(starts):
        one = WindowPlan(s, [4], scheds, scales)
        it1, call1 = one.iteration(0, orders[b:b + 1]), one.head(0, z[:8], model=P, generator=torch.Generator(),
                                                             stats={})
        assert torch.equal(it.positions[b], it1.positions[0]) and torch.equal(it.cfg[4 * b:4 * b + 4], it1.cfg)
        assert list(call.schedule[4 * b:4 * b + 4]) == list(call1.schedule)


def test_conditioning_is_validated():
    with pytest.raises(ValueError, match="conditioning must be one of"):
        CSpDConfig(conditioning="paper")
    with pytest.raises(ValueError, match="needs verify='left_to_right'"):
        CSpDConfig(conditioning="textbook", verify="independent")


def test_public_api_conditioning():
    """``accel.cspd(..., conditioning=...)`` reaches the config; a bad value is a ValueError naming the choices."""
    import accel
    from accel.api.generators import MARGenerator

    vae = _IdentityVAE()
    t, d = MARGenerator(P, vae), MARGenerator(Q, vae)
    m = accel.cspd(t, d, gamma=4, conditioning="textbook")
    assert m.config.conditioning == "textbook" and m.params["conditioning"] == "textbook"
    assert accel.cspd(t, d).config.conditioning == "released"
    with pytest.raises(ValueError, match="'released' or 'textbook'"):
        accel.cspd(t, d, conditioning="exact")
    with pytest.raises(ValueError, match="left_to_right"):
        accel.cspd(t, d, conditioning="textbook", verify="independent")
