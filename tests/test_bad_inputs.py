"""A table of bad inputs across the API and the CLI: each must raise its specific error (or, on the command
line, print ONE line and exit with code 2) with a message naming the offending parameter or file.

Each row is ``(id, call, expected error type, substrings the message must contain)``. Tiny random models keep
the whole table fast; NaN weights stand in for a broken checkpoint.
"""
from __future__ import annotations

import functools
import json
import shutil

import pytest
import torch
from paths import fixtures

from accel import zoo
from accel.cache.budgets import uniform
from accel.checkpoint import CheckpointError, CheckpointMismatch, load_strict, read_state_dict
from accel.distill.student_llamagen import DDLlamaGen
from accel.distill.student_var import DDVAR
from accel.cli import main as cli
from accel.models.llamagen import GPTConfig, Transformer
from accel.models.llamagen_generate import SamplingConfig, generate
from accel.models.mar import MAR, MARConfig, sample_tokens
from accel.models.var import VARConfig, build_var
from accel.models.var_vqvae import VQVAEConfig
from accel.parity import mar_cspd
from accel.sampling import logits_to_probs
from accel.speculative.cspd import CSpDConfig, cspd_sample_tokens
from accel.speculative.decoder import speculative_generate
from accel.speculative.drafters import ModelDrafter
from accel.speculative.lantern import LanternRule, neighbour_table
from accel.speculative.rules import ExactRule, verify_chain
from accel.validate import NonFiniteError

NAN = float("nan")


@functools.lru_cache(maxsize=None)
def gpt(seed: int = 0, vocab: int = 16, nan: bool = False) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(GPTConfig(dim=32, n_layer=1, n_head=4, multiple_of=16, vocab_size=vocab, num_classes=4,
                              block_size=4)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
        if nan:
            m.output.weight[:5] = NAN  # five NaN logits per position, as in the issue
    return m


@functools.lru_cache(maxsize=None)
def mar(nan: bool = False) -> MAR:
    torch.manual_seed(0)
    m = MAR(MARConfig(img_size=32, vae_stride=8, patch_size=1, encoder_embed_dim=16, encoder_depth=1,
                      encoder_num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                      vae_embed_dim=4, class_num=5, buffer_size=2, diffloss_d=2, diffloss_w=16,
                      num_sampling_steps="5")).eval()
    if nan:
        with torch.no_grad():
            next(m.head.net.parameters()).fill_(NAN)
    return m


@functools.lru_cache(maxsize=None)
def var_pair(nan: bool = False):
    torch.manual_seed(0)
    patch = (1, 2, 3)
    vcfg = VQVAEConfig(vocab_size=16, z_channels=4, ch=32, v_patch_nums=patch, ch_mult=(1, 1), num_res_blocks=1,
                       using_sa=False, using_mid_sa=False)
    vae, var = build_var(VARConfig(num_classes=3, depth=1, embed_dim=16, num_heads=2, patch_nums=patch), vcfg)
    var.init_weights(init_adaln_gamma=1.0, generator=torch.Generator().manual_seed(0))
    if nan:
        with torch.no_grad():
            var.head.weight[:3] = NAN
    return vae.eval(), var


def g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def lab(*ids: int) -> torch.Tensor:
    return torch.tensor(ids)


def var_infer(nan=False, **kw):
    vae, var = var_pair(nan)
    args = dict(B=2, label_B=lab(0, 1), generator=g(), cfg=1.5)
    args.update(kw)
    B = args.pop("B")
    return var.autoregressive_infer_cfg(vae, B, args.pop("label_B"), **args)


def mar_sample(nan=False, labels=(0, 1), **kw):
    return sample_tokens(mar(nan), lab(*labels), generator=g(), **{"num_iter": 2, "cfg": 2.0, **kw})


def spec(target=None, drafter=None, rule=None, greedy=False, labels=(0, 1), **kw):
    target = target or gpt(0)
    drafter = drafter or ModelDrafter(gpt(1))
    sc = SamplingConfig(sample_logits=not greedy)
    return speculative_generate(target, drafter, rule or ExactRule(), lab(*labels), sc, gamma=2, generator=g(), **kw)


def table(V: int, k: int = 3) -> torch.Tensor:
    return neighbour_table(torch.randn(V, 4, generator=g()), k + 1)


def dd_llamagen_nan():
    cfg = GPTConfig(dim=32, n_layer=1, n_head=4, multiple_of=16, vocab_size=16, num_classes=4, block_size=4)
    student = DDLlamaGen(cfg, torch.randn(16, 4, generator=g())).eval()
    with torch.no_grad():
        student.output.weight[:5] = NAN
        return student.sample(lab(0, 1), torch.randn(2, 4, 4, generator=g()))


def dd_var_nan():
    vae, var = var_pair(nan=True)
    student = DDVAR.from_teacher(var, vae).eval()
    return student.sample(lab(0, 1), torch.randn(2, student.L_out, student.Cvae, generator=g()), (0,))


def cspd_nan_draft():
    cfg = CSpDConfig(gamma=2, head_steps="5", verify="independent", prefill=0.0, cfg=2.0)
    return cspd_sample_tokens(mar(), mar(nan=True), lab(0, 1), cfg, generator=g())


def verify_nan_p():
    p = torch.full((1, 3, 8), 1 / 8)
    p[0, 1, 2] = NAN
    q = torch.full((1, 2, 8), 1 / 8)
    return verify_chain(ExactRule(), p, q, torch.zeros(1, 2, dtype=torch.long), greedy=False, generator=g(), step=7)


def strict_mismatch():
    return load_strict(torch.nn.Linear(2, 2), {"weight": torch.zeros(3, 2), "extra": torch.zeros(1)})


def empty_file(tmp_path):
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    return read_state_dict(p)


def wrong_key(tmp_path):
    p = tmp_path / "m.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, p)
    return read_state_dict(p, key="model_ema")


def zoo_sampler(name, **kw):
    from accel.zoo.sample import ZooSampler

    return ZooSampler(name, **kw)


# (id, call taking tmp_path, error type, substrings of the message)
API = [
    # LlamaGen sampling settings: greedy is only ever explicit (sample_logits=False)
    ("llamagen-temperature-negative", lambda t: SamplingConfig(temperature=-1.0), ValueError, ["temperature", "-1"]),
    ("llamagen-temperature-zero", lambda t: SamplingConfig(temperature=0.0), ValueError, ["temperature", "(0, inf)"]),
    ("llamagen-temperature-nan", lambda t: SamplingConfig(temperature=NAN), ValueError, ["temperature"]),
    ("llamagen-top_p-zero", lambda t: SamplingConfig(top_p=0.0), ValueError, ["top_p", "(0, 1]"]),
    ("llamagen-top_p-negative", lambda t: SamplingConfig(top_p=-0.5), ValueError, ["top_p"]),
    ("llamagen-top_p-above-one", lambda t: SamplingConfig(top_p=1.5), ValueError, ["top_p", "1.5"]),
    ("llamagen-top_k-negative", lambda t: SamplingConfig(top_k=-3), ValueError, ["top_k", "-3"]),
    ("llamagen-top_k-float", lambda t: SamplingConfig(top_k=2.5), ValueError, ["top_k", "integer"]),
    ("llamagen-cfg_scale-below-one", lambda t: SamplingConfig(cfg_scale=0.5), ValueError, ["cfg_scale", "[1, inf)"]),
    ("llamagen-cfg_scale-negative", lambda t: SamplingConfig(cfg_scale=-2.0), ValueError, ["cfg_scale", "-2"]),
    ("llamagen-cfg_interval", lambda t: SamplingConfig(cfg_interval=-3), ValueError, ["cfg_interval"]),
    ("logits_to_probs-temperature", lambda t: logits_to_probs(torch.zeros(1, 4), temperature=-1.0), ValueError,
     ["temperature"]),
    ("llamagen-label-equals-num_classes", lambda t: generate(gpt(), lab(4), generator=g()), ValueError,
     ["class labels", "4", "0..3"]),
    ("llamagen-label-negative", lambda t: generate(gpt(), lab(-1), generator=g()), ValueError, ["class labels", "-1"]),
    ("llamagen-label-float", lambda t: generate(gpt(), torch.tensor([1.0]), generator=g()), ValueError,
     ["class labels", "dtype"]),
    ("llamagen-max_new_tokens-zero", lambda t: generate(gpt(), lab(0), 0, generator=g()), ValueError,
     ["max_new_tokens", "[1, 4]"]),
    ("llamagen-max_new_tokens-negative", lambda t: generate(gpt(), lab(0), -2, generator=g()), ValueError,
     ["max_new_tokens"]),
    ("llamagen-max_new_tokens-too-large", lambda t: generate(gpt(), lab(0), 5, generator=g()), ValueError,
     ["max_new_tokens", "5"]),
    ("llamagen-nan-logits-sampling", lambda t: generate(gpt(nan=True), lab(0), generator=g()), NonFiniteError,
     ["LlamaGen", "step 0", "probabilities"]),
    ("llamagen-nan-logits-greedy", lambda t: generate(gpt(nan=True), lab(0), sc=SamplingConfig(sample_logits=False)),
     NonFiniteError, ["LlamaGen", "step 0"]),
    # speculative decoding and LANTERN
    ("spec-draft-vocab-mismatch", lambda t: spec(drafter=ModelDrafter(gpt(1, vocab=20))), ValueError,
     ["draft vocabulary", "20", "16"]),
    ("lantern-table-other-codebook-size", lambda t: spec(rule=LanternRule(table(32), k=3, delta=0.1)), ValueError,
     ["neighbour table", "32", "16"]),
    ("lantern-table-ids-out-of-range", lambda t: LanternRule(torch.full((16, 4), 40), k=3), ValueError,
     ["neighbour table", "0..15"]),
    ("lantern-delta", lambda t: LanternRule(table(16), k=3, delta=1.5), ValueError, ["delta", "1.5"]),
    ("spec-gamma-zero", lambda t: speculative_generate(gpt(), ModelDrafter(gpt(1)), ExactRule(), lab(0), gamma=0),
     ValueError, ["gamma"]),
    ("spec-label-out-of-range", lambda t: spec(labels=(0, 9)), ValueError, ["class labels", "9"]),
    ("spec-max_new_tokens-zero", lambda t: spec(max_new_tokens=0), ValueError, ["max_new_tokens"]),
    ("spec-nan-target-sampling", lambda t: spec(target=gpt(0, nan=True)), NonFiniteError, ["target model"]),
    ("spec-nan-target-greedy", lambda t: spec(target=gpt(0, nan=True), greedy=True), NonFiniteError,
     ["target model"]),
    ("spec-nan-draft", lambda t: spec(drafter=ModelDrafter(gpt(1, nan=True))), NonFiniteError, ["draft model"]),
    ("lantern-nan-target", lambda t: spec(target=gpt(0, nan=True), rule=LanternRule(table(16), k=3, delta=0.1)),
     NonFiniteError, ["target model"]),
    ("verify_chain-nan-p-names-step", lambda t: verify_nan_p(), NonFiniteError, ["target model", "step 7"]),
    # MAR (and DiSA, which runs MAR's loop)
    ("mar-cfg-below-one", lambda t: mar_sample(cfg=0.5), ValueError, ["cfg", "0.5", "[1, inf)"]),
    ("mar-cfg-negative", lambda t: mar_sample(cfg=-1.0), ValueError, ["cfg"]),
    ("mar-temperature-negative", lambda t: mar_sample(temperature=-1.0), ValueError, ["temperature"]),
    ("mar-temperature-zero", lambda t: mar_sample(temperature=0.0), ValueError, ["temperature"]),
    ("mar-label-equals-num_classes", lambda t: mar_sample(labels=(0, 5)), ValueError, ["class labels", "5", "0..4"]),
    ("mar-num_iter-zero", lambda t: mar_sample(num_iter=0), ValueError, ["num_iter"]),
    ("mar-nan-head", lambda t: mar_sample(nan=True), NonFiniteError, ["MAR", "diffusion-head", "step 0"]),
    ("dd-llamagen-nan-student", lambda t: dd_llamagen_nan(), NonFiniteError, ["DD student (LlamaGen)", "t=0"]),
    ("dd-var-nan-student", lambda t: dd_var_nan(), NonFiniteError, ["DD student (VAR)", "t=0"]),
    ("cspd-nan-draft", lambda t: cspd_nan_draft(), NonFiniteError, ["non-finite", "step"]),
    # VAR
    ("var-cfg-negative", lambda t: var_infer(cfg=-1.0), ValueError, ["cfg", "-1"]),
    ("var-top_k-negative", lambda t: var_infer(top_k=-1), ValueError, ["top_k"]),
    ("var-top_p-above-one", lambda t: var_infer(top_p=1.5), ValueError, ["top_p", "[0, 1]"]),
    ("var-label-tensor-equals-num_classes", lambda t: var_infer(label_B=lab(0, 3)), ValueError, ["label_B", "3"]),
    ("var-label-int-equals-num_classes", lambda t: var_infer(label_B=3), ValueError, ["label_B", "3"]),
    ("var-B-zero", lambda t: var_infer(B=0, label_B=None), ValueError, ["B"]),
    ("var-nan-logits", lambda t: var_infer(nan=True), NonFiniteError, ["VAR", "scale 0", "logits"]),
    # KV cache budgets (VAR schedule 1,2,3,4,6,8: histories 1, 5, 14, 30, 66, 130)
    ("cache-10pct-window16", lambda t: uniform((1, 2, 3, 4, 6, 8), 4, 0.1, min_keep=16), ValueError,
     ["fraction=0.1", "smallest feasible fraction is 0.2424"]),
    ("cache-1pct-window1", lambda t: uniform((1, 2, 3, 4, 6, 8), 4, 0.01, min_keep=1), ValueError,
     ["fraction=0.01", "smallest feasible fraction is 0.01515"]),
    ("cache-snapkv-10pct", lambda t: __import__("accel.cache.registry", fromlist=["x"]).build_policy(
        "snapkv", (1, 2, 3, 4, 6, 8), 4, 0.1, window=16), ValueError, ["smallest feasible"]),
    ("cache-fraction-zero", lambda t: uniform((1, 2, 3), 2, 0.0), ValueError, ["fraction"]),
    # files
    ("file-missing", lambda t: read_state_dict(t / "nope.pt"), FileNotFoundError, ["nope.pt"]),
    ("file-empty", empty_file, CheckpointError, ["empty.pt", "empty"]),
    ("file-wrong-key", wrong_key, KeyError, ["m.pt", "model_ema"]),
    ("file-shape-mismatch", lambda t: strict_mismatch(), CheckpointMismatch, ["weight", "extra"]),
    ("zoo-unknown-name", lambda t: zoo.load("fmnist-nope"), FileNotFoundError, ["fmnist-nope"]),
    # zoo sampler settings (the CLI's --set)
    ("zoo-var-cfg_scale", lambda t: zoo_sampler("fmnist-var", cfg_scale=2.0), KeyError, ["cfg_scale", "valid: cfg"]),
    ("zoo-llamagen-unknown-key", lambda t: zoo_sampler("fmnist-llamagen", bogus=1), KeyError,
     ["bogus", "cfg_scale"]),
]


@pytest.mark.parametrize("case", API, ids=[c[0] for c in API])
def test_api_bad_input(case, tmp_path):
    _, call, exc, parts = case
    with pytest.raises(exc) as e:
        call(tmp_path)
    msg = e.value.args[0] if isinstance(e.value, KeyError) else str(e.value)
    for part in parts:
        assert part in msg, (part, msg)


def test_budget_fraction_is_never_nan():
    assert uniform((1, 2, 3, 4, 6, 8), 4, 1.0, min_keep=16).kept_fraction() == 1.0
    b = uniform((1, 2, 3, 4, 6, 8), 4, 0.25, min_keep=16)
    assert b.compressed_scales == (4,) and b.kept_fraction() == 16 / 66


# CLI: (id, argv (TMP is replaced by the test's folder), substrings of the single stderr line)
CLI = [
    ("sample-per-class-zero", ["sample", "--model", "fmnist-llamagen", "--per-class", "0", "--out", "TMP/g.png"],
     ["--per-class", "0"]),
    ("sample-class-out-of-range", ["sample", "--model", "fmnist-llamagen", "--class", "12", "--out", "TMP/g.png"],
     ["--class", "12"]),
    ("sample-unknown-set-key", ["sample", "--model", "fmnist-llamagen", "--set", "bogus=1", "--out", "TMP/g.png"],
     ["bogus", "valid"]),
    ("sample-set-not-json", ["sample", "--model", "fmnist-llamagen", "--set", "cfg_scale=abc", "--out", "TMP/g.png"],
     ["cfg_scale", "not JSON"]),
    ("sample-set-no-equals", ["sample", "--model", "fmnist-llamagen", "--set", "cfg_scale", "--out", "TMP/g.png"],
     ["--set", "KEY=JSON"]),
    ("sample-var-cfg_scale", ["sample", "--model", "fmnist-var", "--set", "cfg_scale=3.0", "--out", "TMP/g.png"],
     ["cfg_scale", "valid: cfg"]),
    ("sample-negative-temperature", ["sample", "--model", "fmnist-llamagen", "--set", "temperature=-1",
                                     "--per-class", "1", "--out", "TMP/g.png"], ["temperature", "-1"]),
    ("sample-method-of-other-family", ["sample", "--model", "fmnist-mar", "--method", "lantern-draft",
                                       "--out", "TMP/g.png"], ["lantern-draft", "fmnist-mar"]),
    ("sample-run-folder-without-tokenizer", ["sample", "--model", "TMP", "--out", "TMP/g.png"],
     ["--tokenizer", "run folder"]),
    ("sample-tokenizer-as-model", ["sample", "--model", "fmnist-llamagen-vq", "--out", "TMP/g.png"],
     ["fmnist-llamagen-vq", "not a generator"]),
    ("sample-out-under-a-file", ["sample", "--model", "fmnist-llamagen", "--out", "TMP/afile/g.png"], ["--out"]),
    ("parity-llamagen-empty", ["parity", "llamagen", "TMP/empty"], ["not a llamagen fixture folder", "gpt_c2i"]),
    ("parity-var-empty", ["parity", "var", "TMP/empty"], ["not a var fixture folder", "config.json"]),
    ("parity-mar-empty", ["parity", "mar", "TMP/empty"], ["not a mar fixture folder", "mar_*_config.json"]),
    ("parity-llamagen-missing-folder", ["parity", "llamagen", "TMP/nowhere"], ["not a folder", "nowhere"]),
    ("parity-var-on-llamagen-folder", ["parity", "var", "FIX/llamagen"], ["not a var fixture folder"]),
    ("parity-llamagen-on-mar-folder", ["parity", "llamagen", "FIX/mar"], ["not a llamagen fixture folder"]),
    ("bench-out-unwritable", ["bench", "--method", "llamagen-ar", "--out", "TMP/afile/out"], ["--out", "afile"]),
    ("bench-n-images-one", ["bench", "--method", "llamagen-ar", "--n-images", "1", "--out", "TMP/b"],
     ["--n-images 1", "at least 4"]),
    ("calibrate-window-not-square", ["calibrate", "scalekv", "--window", "3", "--out", "TMP/c.json"],
     ["--window 3", "square"]),
    ("calibrate-fraction-zero", ["calibrate", "scalekv", "--fractions", "0", "--out", "TMP/c.json"],
     ["--fractions"]),
    ("train-unknown-set-key", ["train", "toy", "--run-dir", "TMP/run", "--set", "bogus=1", "--no-export"], ["bogus"]),
]


@pytest.mark.parametrize("case", CLI, ids=[c[0] for c in CLI])
def test_cli_bad_input(case, tmp_path, capsys):
    _, argv, parts = case
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    argv = [a.replace("TMP", str(tmp_path)).replace("FIX", str(fixtures("llamagen").parent)) for a in argv]
    rc = cli(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, (part, err)
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "b").exists()


def test_missing_dataset_is_one_line_and_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    from accel import data

    monkeypatch.delenv("ACCEL_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "nowhere")
    run = tmp_path / "runs" / "cnn"
    rc = cli(["train", "fmnist-cnn", "--run-dir", str(run), "--steps", "1", "--cpu", "--no-export"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Fashion-MNIST not found" in err, err
    assert not run.exists() and not run.parent.exists()


def test_debug_flag_shows_the_traceback(tmp_path):
    """Without --debug the same error is one line (table above); with it the exception propagates."""
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        cli(["--debug", "sample", "--model", str(tmp_path / "nope.pt"), "--tokenizer", "fmnist-llamagen-vq",
             "--out", str(tmp_path / "g.png")])


def test_the_table_is_large():
    assert len(API) + len(CLI) >= 50


def test_parity_mar_takes_the_cspd_step_count_from_the_folder(tmp_path):
    """The CSpD check reads its diffusion step count from the folder's CSpD record (manifest, else the recorded
    noise), never from the MAR config, which may use another count."""
    src = fixtures("mar")
    if not (src / mar_cspd.FILE).is_file():
        pytest.skip("no CSpD fixture")
    d = tmp_path / "mar"
    shutil.copytree(src, d)
    cfg = json.loads((d / "mar_tiny_config.json").read_text())
    (d / "mar_tiny_config.json").write_text(json.dumps({**cfg, "num_sampling_steps": "50"}))
    report = mar_cspd.run(d)
    assert report.ok and len(report.checks) > 10, report.lines()
    man = json.loads((d / "_manifest_cspd.json").read_text())
    (d / "_manifest_cspd.json").write_text(json.dumps({**man, "num_sampling_steps": "50"}))
    report = mar_cspd.run(d)
    assert not report.ok and any("num_sampling_steps=50" in c.note for c in report.checks)
