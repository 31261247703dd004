"""The limit model (accel.harness.floor), the device calibration, the floor in bench rows, and the GPU preset
(accel.harness.costs) on tiny configs. No timing assertions: only counts, identities and plumbing."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from accel.cli import main as cli
from accel.harness import floor as F
from accel.harness.costs import estimated_seconds, full_preset, scalekv_kept
from accel.harness.device_peak import DevicePeak, device_peak
from accel.harness.registry import MethodEntry, Registry
from accel.harness.runner import RunConfig, run_group
from accel.harness.summary import markdown_table
from accel.models.llamagen import GPTConfig, Transformer
from accel.models.mar import MAR, MARConfig
from accel.models.var import VAR, VARConfig
from accel.models.var_calc import var_cost
from test_harness_fake import FakeMethod

GPT = GPTConfig(dim=64, n_layer=2, n_head=4, n_kv_head=2, multiple_of=16, vocab_size=37, block_size=16, num_classes=7)
MARC = MARConfig(img_size=64, vae_stride=16, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                 decoder_embed_dim=48, decoder_depth=1, decoder_num_heads=2, diffloss_d=2, diffloss_w=40, buffer_size=4,
                 class_num=5, num_sampling_steps="10")
VARC = VARConfig(num_classes=4, depth=2, embed_dim=32, num_heads=2, patch_nums=(1, 2, 3))
PEAK = DevicePeak("test", "float32", 1, flops_per_s=1e11, bytes_per_s=1e10, matmul_n=0, copy_bytes=0)
MATMULS = ("mm", "addmm", "bmm")


def _matmul_flops(fn) -> int:
    """FLOPs of the plain matmuls ``fn`` runs (attention kernels are left to the test's own formula)."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn()
    return sum(v for op, v in fc.get_flop_counts()["Global"].items() if str(op).split(".")[-1] in MATMULS)


def _params(module, *names) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.split(".")[0] in names)


def test_weight_params_match_the_models():
    gpt = Transformer(GPT)
    assert F.llamagen_weight_params(GPT) == _params(gpt, "layers", "norm", "output")
    mar = MAR(MARC)
    assert F.mar_pass_params(MARC) == _params(mar, "encoder_blocks", "decoder_blocks", "encoder_norm", "decoder_norm",
                                              "z_proj", "z_proj_ln", "decoder_embed")
    net = mar.head.net
    assert F.mar_head_params(MARC) == _params(net, "input_proj", "res_blocks", "final_layer")
    var = VAR(VARC, 16, 8)
    assert F.var_weight_params(VARC, 16, 8) == _params(var, "blocks", "head_nm", "head", "word_embed", "shared_ada_lin")


def test_llamagen_step_flops_match_the_counted_matmuls():
    model = Transformer(GPT).eval()
    rows, P, T = 6, 5, 3
    cache = model.new_cache(rows)
    with torch.no_grad():
        model(None, torch.zeros(rows, dtype=torch.long), input_pos=torch.arange(1), cache=cache)
        model(torch.zeros(rows, P - 1, dtype=torch.long), input_pos=torch.arange(1, P), cache=cache, kv_len=P)
    counted = _matmul_flops(lambda: model(torch.zeros(rows, T, dtype=torch.long), input_pos=torch.arange(P, P + T),
                                          cache=cache, kv_len=P + T))
    attention = GPT.n_layer * 4 * rows * T * (P + T) * GPT.dim  # q k^T and p v over all heads
    step = F.llamagen_step(GPT, rows, T, P + T, 4)
    assert step.flops - attention == counted
    # the cache read: k and v of kv_heads * head_dim per position, per layer, per row
    assert step.kv_bytes == GPT.n_layer * 2 * rows * (P + T) * GPT.kv_heads * GPT.head_dim * 4
    assert step.weight_bytes == F.llamagen_weight_params(GPT) * 4


def test_mar_pass_and_head_flops_match_the_counted_matmuls():
    model = MAR(MARC).eval()
    B, L, known = 3, MARC.seq_len, 5
    tokens, mask = torch.zeros(B, L, MARC.token_embed_dim), torch.ones(B, L)
    mask[:, :known] = 0
    counted = _matmul_flops(lambda: model.condition(tokens, mask, torch.zeros(B, dtype=torch.long), cfg=True))
    R, n_e, n_d = 2 * B, MARC.buffer_size + known, MARC.buffer_size + L
    attention = 4 * R * (MARC.encoder_depth * n_e ** 2 * MARC.encoder_embed_dim + MARC.decoder_depth * n_d ** 2 * MARC.decoder_embed_dim)
    assert F.mar_pass(MARC, R, known, 4).flops - attention == counted
    rows, net = 8, model.head.net
    x, y = torch.zeros(rows, MARC.token_embed_dim), torch.zeros(rows, MARC.diffloss_w)
    assert F.mar_head_step(MARC, rows, 4).flops == _matmul_flops(lambda: net.forward_embedded(x, y))


def test_mar_work_follows_the_sampling_loop():
    w = F.mar_work(MARC, 2, num_iter=4, cfg_guidance=True)
    heads = [(lbl, s, n) for lbl, s, n in w.steps if lbl.startswith("head ") and not lbl.startswith("head cond")]
    assert [n for _, _, n in heads] == [10] * 4  # the config's num_sampling_steps, every iteration
    rows = sum(s.flops for _, s, _ in heads) / F.mar_head_step(MARC, 1, 4).flops
    assert rows == pytest.approx(2 * 2 * MARC.seq_len)  # every token predicted once, [cond; uncond] rows
    clipped = F.mar_work(MARConfig(**{**MARC.__dict__, "max_timestep": 950}), 1, num_iter=2, head_steps=50, cfg_guidance=False)
    assert {n for lbl, _, n in clipped.steps if lbl == "head 0"} == {48}  # "50" is 48 after the 950 clip (research §3.2)
    with pytest.raises(ValueError, match="num_iter"):
        F.mar_work(MARC, 1, num_iter=0, cfg_guidance=False)


def test_var_work_reuses_var_cost():
    cost = var_cost(VARC, 16, 8, bytes_per_element=2)
    w = F.var_work(VARC, 3, vocab_size=16, Cvae=8, bytes_per_element=2)
    assert [s.flops for _, s, _ in w.steps] == [3 * f for f in cost.flops_per_scale]
    assert [s.kv_bytes for _, s, _ in w.steps] == [3 * b for b in cost.kv_bytes_per_scale]


def test_llamagen_work_counts_cfg_rows_and_every_token():
    w1, w2 = (F.llamagen_work(GPT, 2, cfg_guidance=g) for g in (False, True))
    assert w1.n_steps == w2.n_steps == GPT.block_size
    assert w2.flops == pytest.approx(2 * w1.flops)  # CFG doubles the rows, the weights are read once either way
    assert w2.steps[3][1].weight_bytes == w1.steps[3][1].weight_bytes
    with pytest.raises(ValueError, match="batch_size"):
        F.llamagen_work(GPT, 0, cfg_guidance=False)
    with pytest.raises(ValueError, match="bytes_per_element"):
        F.llamagen_work(GPT, 1, cfg_guidance=False, bytes_per_element=3)


def test_floor_is_the_sum_of_step_rooflines():
    a, b = F.StepWork(1e9, 0.0, 0.0, 0.0), F.StepWork(0.0, 5e8, 0.0, 0.0)  # 10 ms compute, 50 ms memory
    w = F.Work("x", 1, (("a", a, 3), ("b", b, 2)))
    assert w.floor_s(PEAK) == pytest.approx(3 * 0.01 + 2 * 0.05)
    assert w.memory_bound_fraction(PEAK) == pytest.approx(0.1 / 0.13)
    big = GPTConfig(dim=512, n_layer=2, n_head=8, vocab_size=1024, block_size=64)
    assert F.llamagen_work(big, 1, cfg_guidance=True).memory_bound_fraction(PEAK) == 1.0  # batch 1: weight reads
    assert F.llamagen_work(big, 512, cfg_guidance=True).memory_bound_fraction(PEAK) < 0.5  # large batch: matmuls


def test_device_peak_is_measured_once_per_process():
    p = device_peak("cpu", torch.float32, seconds=0.1)
    assert p.flops_per_s > 1e8 and p.bytes_per_s > 1e8 and p.threads == torch.get_num_threads()
    assert device_peak("cpu", torch.float32, seconds=0.1) is p
    with pytest.raises(ValueError, match="seconds"):
        device_peak("cpu", seconds=0)


class _WithWork(FakeMethod):
    def work_model(self, batch_size, bytes_per_element):
        return F.llamagen_work(GPT, batch_size, cfg_guidance=True, bytes_per_element=bytes_per_element)


def test_runner_rows_carry_the_floor_when_the_method_has_a_work_model(monkeypatch):
    monkeypatch.setattr(F, "device_peak", lambda device, dtype: PEAK)
    reg = Registry()
    reg.add(MethodEntry("w-base", "fakefam", lambda ctx: _WithWork("w-base"), models=("m",)))
    reg.add(MethodEntry("w-none", "fakefam", lambda ctx: FakeMethod("w-none"), models=("m",), baseline="w-base"))
    rows = run_group(reg, reg.get("w-base"), [reg.get("w-none")], "m", RunConfig(batch_sizes=(2,), repeats=1, memory=False))
    by = {r["method"]: r for r in rows}
    floor = F.llamagen_work(GPT, 2, cfg_guidance=True).floor_s(PEAK)
    assert by["w-base"]["floor_s"] == pytest.approx(floor)
    assert by["w-base"]["frac_floor"] == pytest.approx(floor / by["w-base"]["latency_s"])
    assert by["w-base"]["floor"]["peak"]["flops_per_s"] == PEAK.flops_per_s
    assert by["w-none"]["floor_s"] is None and by["w-none"]["frac_floor"] is None
    assert "fraction of floor" in markdown_table(rows).splitlines()[0]


@pytest.mark.parametrize("name", ["llamagen-ar", "mar-default", "var-default"])
def test_zoo_baselines_expose_their_work(name):
    from accel.presets.baselines import ENTRIES as BENCH_METHODS
    from accel.presets.zoo_models import zoo_missing
    from accel.harness.registry import BuildContext

    entry = {e.name: e for e in BENCH_METHODS}[name]
    if zoo_missing(entry.models[0]):
        pytest.skip(zoo_missing(entry.models[0]))
    work = entry.build(BuildContext(entry.models[0])).work_model(2, 4)
    assert work.family == entry.family and work.flops > 0 and work.bytes > 0 and work.batch_size == 2


def test_scalekv_budget_and_full_preset_fit_the_gpu_time():
    from accel.models.var import var_config

    cfg = var_config("var-d16")
    full, comp = var_cost(cfg), var_cost(cfg, kept=scalekv_kept(cfg, 0.1))
    assert 0.3 < comp.kv_bytes_peak / full.kv_bytes_peak < 0.5  # the last scale's own 256 tokens stay
    assert estimated_seconds(full_preset()) < 8 * 60  # H200 figures, 40% of peak, 10 us per kernel launch


def test_gpu_preset_tiny_on_cpu(tmp_path, monkeypatch):
    argv = ["bench", "--preset", "gpu", "--device", "cpu", "--tiny", "--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", ["accel", *argv])
    assert cli(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert all(r["weights"] == "random" and r["fid"] is None for r in rows)
    methods = {(r["family"], r["method"]) for r in rows}
    assert {("llamagen", "ar"), ("llamagen", "ar-free"), ("llamagen", "vq-decode"), ("llamagen", "verify"),
            ("llamagen", "verify-tree"), ("llamagen", "dd-forward"), ("mar", "mar-pass"), ("mar", "disa-head-step"),
            ("mar", "disa-estimate"), ("mar", "cspd-verify"), ("var", "ar"), ("var", "ar-free"), ("var", "dd-forward"),
            ("var", "scalekv-kv")} == methods
    cfg_s = {(r["family"], r["batch_size"]): r["latency_s"] for r in rows if r["method"] == "ar"}
    dec_s = {r["batch_size"]: r["latency_s"] for r in rows if r["method"] == "vq-decode"}
    for r in (r for r in rows if r["method"] == "ar-free"):  # the ratio is of the CFG row's own interleaved timing
        c = cfg_s[r["family"], r["batch_size"]]
        assert r["cfg_over_free"] == pytest.approx(c / r["latency_s"])
        if r["family"] == "llamagen":
            d = dec_s[r["batch_size"]]
            assert r["decode_s"] == d and r["cfg_over_free_with_decode"] == pytest.approx((c + d) / (r["latency_s"] + d))
        else:  # VAR's loop decodes the images itself
            assert r["decode_s"] is None and r["cfg_over_free_with_decode"] is None
    cspd = [r for r in rows if r["method"] == "cspd-verify"]
    assert sorted((r["batch_size"], r["params"]["gamma"]) for r in cspd) == [(1, 1), (1, 2), (4, 1), (4, 2)]
    assert all(r["params"]["head_rows"] == 2 * r["batch_size"] * r["params"]["gamma"] for r in cspd)
    assert all(r["per_token"] == pytest.approx(r["relative_cost"] / r["params"]["gamma"]) for r in cspd)
    assert [r["relative_cost"] for r in cspd if r["params"]["gamma"] == 1] == [1.0, 1.0]
    ar = [r for r in rows if r["method"] == "ar"]
    assert all(r["floor_s"] > 0 and r["frac_floor"] == pytest.approx(r["floor_s"] / r["latency_s"]) for r in ar)
    assert {r["batch_size"] for r in ar} == {1, 4}
    one = [r for r in rows if r["method"] == "verify" and r["params"]["tokens"] == 1]
    assert len(one) == 1 and one[0]["relative_cost"] == 1.0
    summary = (tmp_path / "summary.md").read_text()
    assert "fraction of floor" in summary and "weights: random" in summary and "--preset gpu" in summary
    assert "## Guidance-free decoding (CCA) vs CFG" in summary and "## CSpD: one-pass verification" in summary


def test_tiny_needs_the_gpu_preset(tmp_path, capsys):
    assert cli(["bench", "--tiny", "--out", str(tmp_path)]) == 2
    assert "--tiny only applies to --preset gpu" in capsys.readouterr().err
