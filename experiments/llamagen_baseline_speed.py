"""Throughput of the LlamaGen AR baseline (KV cache, batched CFG) on a ~3M-parameter config, and the
share of decode time spent outside the model forward (sampling, CFG combine, Python loop).

    python experiments/llamagen_baseline_speed.py [--threads 2] [--repeats 5]
"""
import argparse
import json
import statistics
import time

import torch

from accel.models.llamagen import GPTConfig, Transformer
from accel.models.llamagen_generate import SamplingConfig, generate

CFG_3M = GPTConfig(dim=192, n_layer=8, n_head=6, multiple_of=64, vocab_size=512, block_size=64, num_classes=10)


class ForwardTimer(torch.nn.Module):
    """Wraps the model so the time inside forward calls is accumulated."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.inside = model, model.config, 0.0

    def new_cache(self, *a, **k):
        return self.model.new_cache(*a, **k)

    def forward(self, *a, **k):
        t = time.perf_counter()
        out = self.model(*a, **k)
        self.inside += time.perf_counter() - t
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cfg-scale", type=float, default=2.0)
    ap.add_argument("--model", default=None, help="a zoo model (e.g. fmnist-llamagen) instead of the random 3.7M config")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        from accel import zoo

        model = zoo.load(args.model).eval()
    else:
        model = Transformer(CFG_3M).eval()
    timed = ForwardTimer(model)
    sc = SamplingConfig(cfg_scale=args.cfg_scale)
    rows = []
    for batch in (1, 64):
        cond = torch.arange(batch) % 10
        gen = torch.Generator().manual_seed(0)
        generate(timed, cond, sc=sc, generator=gen)  # warm-up
        totals, shares = [], []
        for _ in range(args.repeats):
            timed.inside = 0.0
            t = time.perf_counter()
            generate(timed, cond, sc=sc, generator=gen)
            total = time.perf_counter() - t
            totals.append(total)
            shares.append(1 - timed.inside / total)
        med = statistics.median(totals)
        rows.append(dict(model=args.model or "random-3.7M", batch=batch, params=model.num_params(),
                         tokens_per_s=batch * model.config.block_size / med,
                         latency_s=med, outside_forward_share=statistics.median(shares),
                         threads=torch.get_num_threads(), cfg_scale=args.cfg_scale))
        print(json.dumps(rows[-1]))


if __name__ == "__main__":
    main()
