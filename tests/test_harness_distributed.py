"""1 and 2 processes (gloo) give identical images, features and metrics."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from accel.harness import metrics as M
from accel.harness.distributed import chunk_seed, generate_indexed
from test_harness_fake import FakeMethod

N, CHUNK, SEED = 45, 8, 3  # 6 chunks, the last one partial


def extract(images):
    return torch.nn.functional.avg_pool2d(images, 4).flatten(1), images.mean((2, 3))


def _summary(out):
    feats = out.feats.double().numpy()
    return {
        "images": out.images, "cond": out.cond, "feats": out.feats,
        "fid": M.fid(feats[:20], feats[20:]),
        "pr": M.precision_recall(feats[:20], feats[20:]),
        "tokens": torch.cat([s["tokens"] for s in out.stats]),
    }


def _worker(rank, world, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        method = FakeMethod("fake")
        out = generate_indexed(method, N, chunk=CHUNK, seed=SEED, num_classes=10, extract=extract, show_progress=False)
        torch.save({"summary": _summary(out), "calls": method.calls}, f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    single = _summary(generate_indexed(FakeMethod("fake"), N, chunk=CHUNK, seed=SEED, num_classes=10,
                                       extract=extract, show_progress=False))
    path = str(tmp_path / "out")
    mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    results = [torch.load(f"{path}.{r}", weights_only=True) for r in range(2)]
    assert [r["calls"] for r in results] == [3, 3]  # the 6 chunks were split, not duplicated
    for r in results:
        s = r["summary"]
        for key in ("images", "cond", "feats", "tokens"):
            assert torch.equal(s[key], single[key]), key
        assert s["fid"] == single["fid"] and s["pr"] == single["pr"]
    assert single["images"].shape == (N, 3, 16, 16)
    assert torch.equal(single["cond"], torch.arange(N) % 10)


def test_chunk_seeds_give_distinct_streams_on_cpu():
    """Distinct seeds for every (seed, start), and distinct CPU random streams: a CPU generator keeps only the low
    32 bits of its seed, which made seed 1 replay seed 0 before; seed 0 keeps its seeds (start)."""
    draws = {s: torch.randn(4, generator=torch.Generator().manual_seed(chunk_seed(s, 0))) for s in range(3)}
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert [chunk_seed(0, i) for i in (0, 8, 64)] == [0, 8, 64]
    seeds = {chunk_seed(s, i) for s in range(3) for i in range(0, 1000, 8)}
    assert len(seeds) == 3 * 125
