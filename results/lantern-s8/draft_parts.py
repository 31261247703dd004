"""Per-call pieces of the EAGLE drafter (eagle-cfg) vs one AR step of the zoo target (batch 1, CFG: 2 rows),
interleaved, 11 rounds of 40 calls, medians.  PYTHONPATH=$PWD python results/lantern-s8/draft_parts.py > draft_parts.txt"""
import statistics, time, torch
torch.set_num_threads(1)
from accel.harness.registry import BuildContext
from accel.presets.speculative import TARGET, build
from accel.speculative.drafters import process, cfg_rows
m = build(BuildContext(TARGET), "p", drafter="eagle-cfg", delta=0.4, gamma=5, drafts="deterministic")
t, d, sc = m.target, m.drafter, m.sc
cfg = t.config
print("target dim", cfg.dim, "layers", cfg.n_layer, "vocab", cfg.vocab_size, "heads", cfg.n_head)
labels = torch.tensor([3, cfg.num_classes])
cache = t.new_cache(2, 80)
with torch.no_grad():
    t(None, labels, input_pos=torch.zeros(2, 1, dtype=torch.long), cache=cache, kv_len=1)
    st = d.begin(labels, 80)
    h = torch.randn(2, 1, cfg.dim)
    tok = torch.tensor([[5]])
    pos = torch.full((1, 1), 30)
    x = d.head.fc(torch.cat([t.tok_embeddings(cfg_rows(tok, 2)), h], -1))
    calls = {
        "ar_step": lambda: t(cfg_rows(tok, 2), input_pos=cfg_rows(pos, 2), cache=cache, kv_len=40),
        "target_6tok": lambda: t(cfg_rows(tok.expand(1, 6), 2), input_pos=cfg_rows(pos + torch.arange(6), 2), cache=cache, kv_len=40),
        "eagle_step": lambda: d._step(st, tok, h, pos, 40),
        "embed+fc": lambda: d.head.fc(torch.cat([t.tok_embeddings(cfg_rows(tok, 2)), h], -1)),
        "block": lambda: d.head.block(x, cfg_rows(pos, 2), st.cache, d.table, kv_len=40),
        "layer_only": None,
        "output_head": lambda: t.output(h),
        "process": lambda: process(t.output(h).float(), pos, sc),
    }
    from accel.models.llamagen import attention_plan
    rope, slots, mask, kv = attention_plan(d.table, cfg_rows(pos, 2), 1, cache=st.cache, kv_len=40)
    calls["layer_only"] = lambda: d.head.layer(x, rope, slots, st.cache, mask, kv)
    calls["attention_plan"] = lambda: attention_plan(d.table, cfg_rows(pos, 2), 1, cache=st.cache, kv_len=40)
    times = {k: [] for k in calls}
    for r in range(12):
        for k, f in calls.items():
            t0 = time.perf_counter()
            for _ in range(40):
                f()
            if r:
                times[k].append((time.perf_counter() - t0) / 40 * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:16s} {v:7.3f} ms  {v / med['ar_step']:.3f} AR")
