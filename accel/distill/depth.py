"""Which blocks of a deeper network initialise a shallower student (DD students of LlamaGen and VAR)."""
from __future__ import annotations


def teacher_blocks(teacher_depth: int, depth: int) -> list[int]:
    """Teacher block initialising each of a student's ``depth`` blocks: all of them in order when the depths match,
    else evenly spaced, first and last kept (6 -> 4: 0, 2, 3, 5)."""
    if not 1 <= depth <= teacher_depth:
        raise ValueError(f"depth={depth}: a student needs 1..{teacher_depth} blocks (the teacher's depth)")
    if depth == 1:
        return [teacher_depth - 1]
    return [round(i * (teacher_depth - 1) / (depth - 1)) for i in range(depth)]
