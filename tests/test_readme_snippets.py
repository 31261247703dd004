"""The README's "Use it on your own model" snippets run as written: on the bundled zoo, and on random-config
models saved under the zoo's names (so nothing in them depends on the zoo's trained weights)."""
import re
from pathlib import Path

import pytest
import torch

from accel import zoo
from accel.distill.student_llamagen import DDLlamaGen
from accel.distill.student_var import DDVAR
from accel.models.llamagen import GPTConfig
from accel.zoo import sample as zoo_sample
from accel.zoo.store import save_zoo_file, zoo_file
from test_harness_baselines import MAR_GEN, MAR_VAE, TINY_GPT as GPT, TINY_VQ as VQ, VAR_GEN as VAR, VAR_VAE

README = Path(__file__).resolve().parents[1] / "README.md"
MAR = {**MAR_GEN, "max_timestep": 950}


def snippets() -> list[str]:
    text = README.read_text()
    section = text.split("## Use it on your own model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def random_zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)

    def put(name, kind, cfg, module=None):
        module = module if module is not None else zoo.BUILDERS[kind](cfg)
        save_zoo_file(zoo_file(d, name), module.state_dict(), kind=kind, config=cfg, dtype=None)
        return module

    vq = put("fmnist-llamagen-vq", "llamagen-vq", VQ)
    put("fmnist-llamagen", "llamagen-gpt", GPT)
    put("fmnist-llamagen-draft", "llamagen-gpt", {**GPT, "n_layer": 1})
    put("fmnist-llamagen-eagle-cfg", "llamagen-eagle", GPT)
    codes = torch.nn.functional.normalize(vq.quantize.embedding.weight.detach(), dim=-1)
    put("fmnist-llamagen-dd", "dd-llamagen", {"gpt": GPT, "code_dim": 4}, DDLlamaGen(GPTConfig(**GPT), codes))
    put("fmnist-mar-vae", "mar-vae", MAR_VAE)
    put("fmnist-mar", "mar", MAR)
    put("fmnist-mar-draft", "mar", {**MAR, "diffloss_w": 16})
    put("fmnist-mar-draft-aligned", "mar", {**MAR, "diffloss_w": 16})
    vae = put("fmnist-var-vqvae", "var-vqvae", VAR_VAE)
    var = zoo.BUILDERS["var"](VAR)
    var.init_weights(generator=torch.Generator().manual_seed(0))
    put("fmnist-var", "var", VAR, var)
    student = DDVAR.from_teacher(var, vae)
    cfg = {"var": {k: (list(v) if isinstance(v, tuple) else v) for k, v in VAR.items() if not k.startswith("_")},
           "vocab_size": 32, "Cvae": 8}
    put("fmnist-var-dd", "var-dd", cfg, student)
    return d


def run_all():
    scope: dict = {}
    blocks = snippets()
    assert len(blocks) >= 6, "the README lost its technique snippets"
    for code in blocks:
        assert len(code.strip().splitlines()) <= 6, f"a README snippet is longer than six lines:\n{code}"
        exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - the README's own code
        s = scope["s"]
        assert s.images.shape[:2] == (2, 3) and 0 <= float(s.images.min()) and float(s.images.max()) <= 1
        assert not s.images.requires_grad, f"generate must not build an autograd graph:\n{code}"
        scope.pop("s")
    return scope


def test_snippets_on_random_config_models(random_zoo, monkeypatch):
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", random_zoo)
    monkeypatch.setitem(zoo_sample.DEFAULTS, "fmnist-mar", dict(num_iter=4, cfg=2.0, head_steps=5))
    monkeypatch.setitem(zoo_sample.DEFAULTS, "fmnist-mar-draft", dict(num_iter=4, cfg=2.0, head_steps=5))
    run_all()


@pytest.mark.slow
def test_snippets_on_the_zoo(monkeypatch):
    # the card's 50 head steps, fewer iterations: the snippets' code paths, not the card's quality
    monkeypatch.setitem(zoo_sample.DEFAULTS, "fmnist-mar", {**zoo_sample.DEFAULTS["fmnist-mar"], "head_steps": 10})
    run_all()
