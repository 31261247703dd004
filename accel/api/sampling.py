"""One sampling convention for the three families: ``cfg_scale``, ``temperature``, ``top_k``, ``top_p``.

The families' own functions keep their official argument names (LlamaGen ``SamplingConfig.cfg_scale``, MAR
``cfg``, VAR ``cfg`` with ``top_p=0.0`` meaning "off"); :class:`Sampling` is what a user writes, with one meaning
everywhere, and the ``*_kwargs`` functions translate it. A setting a family cannot honour raises instead of
being dropped: MAR samples continuous tokens (no top-k/top-p, no arg-max), VAR's sampler has no temperature.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from accel.validate import check_range

from accel.models.llamagen_generate import SamplingConfig


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn.

    - ``cfg_scale``: classifier-free guidance scale ``s`` in ``uncond + s (cond - uncond)``, ``>= 1`` (1 = no guidance;
      LlamaGen and MAR then skip the unconditional pass). MAR and VAR ramp it as their papers do (MAR: with the
      known tokens under ``cfg_schedule="linear"``; VAR: linearly over the scales up to ``s`` at the last).
    - ``temperature``: ``> 0``; divides the logits (LlamaGen) or scales the head's noise (MAR).
    - ``top_k``: keep the k most likely tokens, ``0`` = off.
    - ``top_p``: nucleus mass in ``(0, 1]``, ``1.0`` = off.
    - ``greedy``: arg-max instead of sampling (LlamaGen only); an explicit choice, never a side effect.
    """

    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False

    def __post_init__(self):
        check_range("cfg_scale", self.cfg_scale, 1)  # 1 = no guidance
        check_range("temperature", self.temperature, 0, lo_open=True)  # arg-max decoding is greedy=True
        check_range("top_k", self.top_k, 0, integer=True)  # 0 = off
        check_range("top_p", self.top_p, 0, 1, lo_open=True)  # 1.0 = off
        if not isinstance(self.greedy, bool):
            raise ValueError(f"greedy={self.greedy!r}: must be True or False")

    def replace(self, **changes) -> "Sampling":
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown sampling settings {unknown}; valid: {[f.name for f in fields(self)]}")
        return replace(self, **changes)


def llamagen_config(s: Sampling, *, cfg_interval: int = -1):
    """LlamaGen's ``SamplingConfig`` for ``s``."""
    return SamplingConfig(cfg_scale=s.cfg_scale, cfg_interval=cfg_interval, temperature=s.temperature,
                          top_k=s.top_k, top_p=s.top_p, sample_logits=not s.greedy)


def mar_kwargs(s: Sampling) -> dict:
    """``accel.models.mar.sample_tokens`` keyword arguments for ``s`` (``cfg``, ``temperature``)."""
    _refuse(s, "MAR samples continuous tokens with a diffusion head", top_k=0, top_p=1.0, greedy=False)
    return {"cfg": s.cfg_scale, "temperature": s.temperature}


def var_kwargs(s: Sampling) -> dict:
    """``VAR.autoregressive_infer_cfg`` keyword arguments for ``s``. VAR's own ``cfg`` is the guidance *excess*
    at the last scale (logits ``(1 + t) cond - t uncond`` with ``t = cfg * si / (SN - 1)``), i.e. a scale of
    ``1 + t``: ``cfg = cfg_scale - 1`` (the zoo card's cfg 1.5 is ``cfg_scale`` 2.5, ramped over the scales);
    official ``top_p=0.0`` means off."""
    _refuse(s, "VAR's sampler has no temperature or arg-max", temperature=1.0, greedy=False)
    return {"cfg": s.cfg_scale - 1.0, "top_k": s.top_k, "top_p": 0.0 if s.top_p >= 1.0 else s.top_p}


def from_family(family: str, settings: dict) -> tuple[Sampling, dict]:
    """Split a family's own settings (a zoo card's defaults) into a :class:`Sampling` and the family extras."""
    d = dict(settings)
    s = {}
    if family == "llamagen":
        for k in ("cfg_scale", "temperature", "top_k", "top_p"):
            if k in d:
                s[k] = d.pop(k)
        if "sample_logits" in d:
            s["greedy"] = not d.pop("sample_logits")
    else:
        if "cfg" in d:  # MAR's cfg is a scale (1 = none); VAR's the excess over 1 at the last scale
            s["cfg_scale"] = d.pop("cfg") + (1.0 if family == "var" else 0.0)
        for k in ("temperature", "top_k"):
            if k in d:
                s[k] = d.pop(k)
        if "top_p" in d:
            p = d.pop("top_p")
            s["top_p"] = 1.0 if (family == "var" and p <= 0.0) else p
    return Sampling(**s), d


def _refuse(s: Sampling, why: str, **neutral) -> None:
    bad = {k: getattr(s, k) for k, v in neutral.items() if getattr(s, k) != v}
    if bad:
        raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in bad.items())}: not supported ({why}); "
                         f"leave {', '.join(f'{k}={neutral[k]!r}' for k in bad)}")
