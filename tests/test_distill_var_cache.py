"""DD composed with a KV-cache policy: the teacher-involved VAR sampler runs the teacher's scale steps on a
policy-compressed cache (the same ``VAR.begin``/``step`` path as ``CompressedVAR``)."""
import torch

from accel.models.kv_cache import KeepAll
from accel.cache.budgets import uniform
from accel.cache.window import SlidingWindow
from test_distill_var import PNS, noise
from test_distill_var_student import student


def test_teacher_involved_sampling_with_a_cache_policy():
    vae, var, s = student(scramble_new=True)
    lab, eps = torch.tensor([0, 2]), noise(2, seed=8)
    kw = dict(t_mid=3, teacher_start=1, split=2, cfg=2.0)

    def run(policy):
        return s.sample_teacher_involved(var, vae, lab, eps, generator=torch.Generator().manual_seed(1),
                                         policy=policy, **kw)

    ref, full = run(None), run(KeepAll())
    assert torch.equal(ref[0], full[0]) and torch.equal(ref[1], full[1]) and ref[2] == full[2]
    v, ids, info = run(SlidingWindow(uniform(PNS, var.depth, 0.2, min_keep=1)))
    assert v.shape == ref[0].shape and info == ref[2] == {"student_passes": 2, "teacher_passes": 3}
    assert not torch.equal(ids, ref[1])  # the compressed cache changed what the teacher sampled
