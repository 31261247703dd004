"""Which blocks of a deeper network initialise a shallower student (DD students of LlamaGen and VAR), and the copy."""
from __future__ import annotations

import torch


def teacher_blocks(teacher_depth: int, depth: int) -> list[int]:
    """Teacher block initialising each of a student's ``depth`` blocks: all of them in order when the depths match,
    else evenly spaced, first and last kept (6 -> 4: 0, 2, 3, 5)."""
    if not 1 <= depth <= teacher_depth:
        raise ValueError(f"depth={depth}: a student needs 1..{teacher_depth} blocks (the teacher's depth)")
    if depth == 1:
        return [teacher_depth - 1]
    return [round(i * (teacher_depth - 1) / (depth - 1)) for i in range(depth)]


@torch.no_grad()
def copy_renamed(own: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], src: dict[str, str]) -> None:
    """Fill every tensor of ``own`` (a state dict) from ``theirs``: a name starting with a prefix in ``src`` from the
    name with that prefix replaced by ``src[prefix]`` (``"blocks.1." -> "blocks.3."``), any other name from itself."""
    for k, v in own.items():
        pre = next((p for p in src if k.startswith(p)), None)
        v.copy_(theirs[src[pre] + k[len(pre):]] if pre else theirs[k])
