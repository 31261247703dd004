"""The VAR DD bench entries (accel.presets.distill) on random-weight stand-ins for the zoo models."""
import pytest
import torch

from accel import zoo
from accel.presets import distill as methods_var
from accel.distill.student_var import DDVAR
from accel.harness.registry import BuildContext
from accel.models.var import VARConfig, build_var
from accel.models.var_vqvae import VQVAEConfig
from accel.train.recipes.var import VAR_ZOO, VQVAE_ZOO


@pytest.fixture(scope="module")
def stand_ins():
    torch.manual_seed(0)
    vae, var = build_var(VARConfig(**{**VAR_ZOO, "depth": 2}), VQVAEConfig(**VQVAE_ZOO))
    var.init_weights(generator=torch.Generator().manual_seed(0))
    return {"fmnist-var": var, "fmnist-var-vqvae": vae.eval(), methods_var.VAR_STUDENT: DDVAR.from_teacher(var, vae).eval(),
            methods_var.VAR_STUDENT4: DDVAR.from_teacher(var, vae, depth=1).eval()}  # the smaller student


@pytest.fixture
def fake_zoo(stand_ins, monkeypatch):
    monkeypatch.setattr(zoo, "load", lambda name, device=None, **kw: stand_ins[name])
    monkeypatch.setattr(methods_var, "MARGINAL_SAMPLES", 40)
    return stand_ins


@pytest.mark.parametrize("name", [e.name for e in methods_var.ENTRIES if e.family == "var"])
def test_entries_generate_deterministic_images_with_counted_passes(fake_zoo, name):
    entry = next(e for e in methods_var.ENTRIES if e.name == name)
    m = entry.build(BuildContext("fmnist-var"))
    assert m.name == name
    cond = torch.tensor([1, 4])
    a = m.generate(cond, generator=torch.Generator().manual_seed(0))
    b = m.generate(cond, generator=torch.Generator().manual_seed(0))
    assert a.images.shape == (2, 3, 32, 32) and 0 <= float(a.images.min()) and float(a.images.max()) <= 1
    assert torch.equal(a.images, b.images) and torch.equal(a.stats["tokens"], b.stats["tokens"])
    L = fake_zoo["fmnist-var"].L
    assert a.stats["tokens"].shape == (2, L)
    SN = len(VAR_ZOO["patch_nums"])
    expected = {"var-dd-1step": (0, 1), "var-dd-2step": (0, 2), "var-dd4-1step": (0, 1), "var-dd4-2step": (0, 2),
                "var-onestep-marginal": (0, None),
                "var-skip-2": (SN - 2, None)}
    if name in expected:
        nfe, ns = expected[name]
        assert a.stats["nfe_target"] == nfe and a.stats.get("nfe_student") == ns
    else:  # teacher-involved: the teacher runs scales 0..t2-1 (its KV cache needs every one), two student calls
        t2 = m.t2
        assert a.stats["nfe_target"] == t2 and a.stats["nfe_student"] == 2


def test_dd_one_step_images_are_the_decoded_student_vectors(fake_zoo):
    from accel.distill.student_var import decode_vectors

    m = methods_var.dd_var(1)(BuildContext("fmnist-var"))
    cond = torch.tensor([2])
    out = m.generate(cond, generator=torch.Generator().manual_seed(5))
    s = fake_zoo[methods_var.VAR_STUDENT]
    noise = torch.randn(1, s.L_out, s.Cvae, generator=torch.Generator().manual_seed(5))
    vec, ids = s.sample(cond, noise, (0,), split=m.split)
    assert torch.equal(out.stats["tokens"], ids)
    assert torch.allclose(out.images, decode_vectors(fake_zoo["fmnist-var-vqvae"], vec, s.tpns).clamp(0, 1))
