"""Test doubles for the harness: deterministic fake methods registered through ``BENCH_METHODS``
(no tests here; imported by the harness tests and by the memory subprocess)."""
import torch

from accel.harness.registry import MethodEntry
from accel.types import Sample


class FakeMethod:
    """Images are a deterministic function of (cond, generator); counts its calls; reports work counters."""

    def __init__(self, name: str, *, delay_steps: int = 0, noise: float = 0.0, accept: int = 0):
        self.name, self.delay_steps, self.noise, self.accept = name, delay_steps, noise, accept
        self.calls = 0
        self.log = []

    def generate(self, cond, *, generator):
        self.calls += 1
        self.log.append((self.name, tuple(cond.tolist())))
        B = cond.shape[0]
        base = torch.rand((B, 3, 16, 16), generator=generator)
        tokens = (base[:, 0, :4, :4].flatten(1) * 8).long()  # (B, 16)
        img = 0.5 * base + 0.5 * (cond.float() / 10).view(B, 1, 1, 1)
        if self.noise:
            img = (img + self.noise * torch.sin(torch.arange(16.0) * 1.3).view(1, 1, 1, 16)).clamp(0, 1)
        x = torch.zeros(64, 64)
        for _ in range(self.delay_steps):  # real work, so slower methods are really slower
            x = x @ x + 1e-3
        stats = {"nfe_target": 4, "tokens": tokens, "kv_bytes": 1000 if self.noise == 0 else 500}
        if self.accept:
            stats.update(nfe_draft=8, accepted=self.accept * B, drafted=4 * B, verify_steps=B)
        return Sample(img, stats)


BENCH_METHODS = [
    MethodEntry("fake-base", "fakefam", lambda ctx: FakeMethod("fake-base", delay_steps=20), models=("fake-model",)),
    MethodEntry("fake-fast", "fakefam", lambda ctx: FakeMethod("fake-fast", accept=2), models=("fake-model",),
                baseline="fake-base", experiment="fakespec", params={"gamma": 4}),
    MethodEntry("fake-lossy", "fakefam", lambda ctx: FakeMethod("fake-lossy", noise=0.05), models=("fake-model",),
                baseline="fake-base", experiment="fakecache", params={"budget": 0.5}, reference_fidelity=True),
]
