"""DD1 for VAR: latency of the student's 1-step / 2-step sampling vs the teacher's scale-by-scale sampling
(images included), interleaved, warm-up excluded, medians; a random-weight model of the zoo VAR's config
(speed does not depend on the weights, so this runs before the zoo VAR is trained).

    python experiments/distill_var_speed.py --batch-sizes 1,64 --repeats 7 --threads 1
"""
from __future__ import annotations

import argparse
import json

import torch

from accel.distill.student_var import DDVAR, decode_vectors
from accel.harness.timing import speedup, time_interleaved
from accel.models.var import VARConfig, build_var
from accel.models.var_vqvae import VQVAEConfig
from accel.train.recipes.var import VAR_ZOO, VQVAE_ZOO


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--t2", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    vae, var = build_var(VARConfig(**VAR_ZOO), VQVAEConfig(**VQVAE_ZOO))
    vae.eval(), var.eval()
    st = DDVAR.from_teacher(var, vae).eval()
    SN = len(var.patch_nums)
    for B in (int(b) for b in a.batch_sizes.split(",")):
        lab = torch.arange(B) % var.num_classes

        def teacher(r):
            return var.autoregressive_infer_cfg(vae, B, lab, generator=torch.Generator().manual_seed(r), cfg=1.5).images

        def dd(t_list):
            def f(r):
                eps = torch.randn(B, var.L, var.Cvae, generator=torch.Generator().manual_seed(r))
                with torch.inference_mode():
                    return decode_vectors(vae, st.sample(lab, eps, t_list, SN)[0], var.patch_nums)
            return f

        t = time_interleaved({"teacher": teacher, "dd1": dd((0,)), "dd2": dd((0, a.t2))}, repeats=a.repeats, warmup=2)
        print(json.dumps({"batch_size": B, "threads": a.threads, "teacher_s": t["teacher"].median,
                          "dd1_s": t["dd1"].median, "dd2_s": t["dd2"].median,
                          "speedup_1step": speedup(t["teacher"], t["dd1"]),
                          "speedup_2step": speedup(t["teacher"], t["dd2"])}))


if __name__ == "__main__":
    main()
