"""Ship a CSpD draft made by ``experiments/cspd_step_weighting.py --save-draft`` into the zoo in place of
``fmnist-mar-draft-aligned`` (issue #20: "shipped in the zoo with its card if it helps").

Each file that script writes records its command and the draft it started from (``init``). This follows that chain
back to the zoo draft it began with, checks the architecture is the zoo draft's (same cost in CSpD), and writes the
weights into the zoo with the whole lineage in ``info["made_by"]``, which the model card then lists
(``accel train fmnist-mar-draft-aligned --card-only`` rewrites the card). A chain that began from a draft this
script shipped (``--init fmnist-mar-draft-aligned``, ``--base-rev`` the commit whose zoo held it) carries that
draft's own lineage forward. The held-out row the experiment measured for FILE (``--eval``: its step_weighting.jsonl)
goes into the card's evaluation.

    python experiments/cspd_ship_draft.py results/cspd/zhead/fmnist-mar-draft-zhead-ft2400.safetensors.xz \\
        --eval results/cspd/zhead/step_weighting.jsonl --base-rev 361abde
    accel train fmnist-mar-draft-aligned --card-only
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from accel import zoo
from accel.harness.results import current_command, read_rows
from accel.zoo.store import SUFFIX, is_zoo_path, read_zoo_file, save_zoo_file

NAME = "fmnist-mar-draft-aligned"
BASE_FILE = f"accel/zoo/weights/{NAME}{SUFFIX}"


def lineage(path: Path, kept_dir: Path | None = None) -> tuple[list[tuple[Path, dict]], str]:
    """``([(file, info), ...] oldest first, base)``: the files ``path`` was made from by following each file's
    ``init`` while it names a file, and the zoo name the chain began with. An ``init`` under ``runs/`` that a fresh
    checkout no longer has is read from its copy in ``kept_dir`` (same name)."""
    chain, seen = [], set()
    while is_zoo_path(path):
        if not path.is_file() and kept_dir is not None and (kept_dir / path.name).is_file():
            path = kept_dir / path.name
        if path.resolve() in seen:
            raise SystemExit(f"{path}: its lineage loops back on itself")
        seen.add(path.resolve())
        info = read_zoo_file(path)[2]
        if "command" not in info or "init" not in info:
            raise SystemExit(f"{path}: not a file made by cspd_step_weighting.py --save-draft (no command / init)")
        chain.insert(0, (path, info))
        path = Path(info["init"])
    return chain, str(path)


def shipped_info(rev: str) -> dict:
    """The ``info`` of the zoo's NAME file as git revision ``rev`` holds it."""
    blob = subprocess.run(["git", "show", f"{rev}:{BASE_FILE}"], capture_output=True, check=False)
    if blob.returncode:
        raise SystemExit(f"--base-rev {rev}: git has no {BASE_FILE} there ({blob.stderr.decode().strip()})")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / Path(BASE_FILE).name
        path.write_bytes(blob.stdout)
        return read_zoo_file(path)[2]


def base_made_by(rev: str, base: dict) -> list[str]:
    """The commands that made the zoo draft a lineage began from (``base``: its info at ``rev``): the lines a
    draft shipped by this script records (``made_by``), else the recipe's ``accel train``; then where its weights
    stay."""
    where = f"those weights: git show {rev}:{BASE_FILE}"
    if "made_by" in base:
        return [*base["made_by"], f"# the zoo draft of {rev}; {where}"]
    return [f"accel train {NAME}  # stages 1-2 (the card of {rev}); {where}"]


def stage_steps(info: dict) -> int:
    """Training steps one --save-draft stage ran: its teacher-forced arm's ``steps`` (only when it had a --weights
    arm) plus its z-regression and small-head steps."""
    return info.get("steps", 0) * bool(info.get("weights")) + info.get("z_steps", 0) + info.get("head_steps", 0)


def kept(path: Path, folder: Path) -> Path:
    """Where a lineage file stays: ``folder``/its name when that holds the same bytes (a copy out of ``runs/``,
    which is not versioned), else ``path`` itself."""
    copy = folder / path.name
    return copy if copy.is_file() and copy.resolve() != path.resolve() and copy.read_bytes() == path.read_bytes() \
        else path


def held_out_row(eval_path: Path, file: Path) -> dict:
    """The last row of ``eval_path`` that scored ``file`` as saved (its path, as --save-draft gave it, in the row's
    ``weight``)."""
    rows = [r for r in read_rows(eval_path) if r.get("weight", "").endswith(f"saved fp16 ({file})")]
    if not rows:
        raise SystemExit(f"{eval_path}: no 'saved fp16' row for {file}")
    keep = ("gap_sigma0", "gap_sigma0_median", "accept_T42", "accept_T42_released", "handoff_gap_sigma0",
            "forced_sigma_k")  # accept_T42_released: rows since 2026-12-05
    where = f"{eval_path} (held-out target chains, never trained on)"
    return {k: rows[-1][k] for k in keep if k in rows[-1]} | {"where": where}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", type=Path, help="a --save-draft file (NAME.safetensors.xz)")
    ap.add_argument("--eval", type=Path, required=True, help="the step_weighting.jsonl that scored FILE as saved")
    ap.add_argument("--base-rev", required=True,
                    help="a git revision whose zoo holds the draft the lineage began with (it is replaced here)")
    ap.add_argument("--kept", type=Path, default=Path("results/cspd/zhead"),
                    help="the versioned folder that keeps copies of the lineage's files made under runs/")
    args = ap.parse_args()
    if not str(args.file).endswith(SUFFIX) or not args.file.is_file():
        raise SystemExit(f"{args.file}: give an existing NAME{SUFFIX} written by cspd_step_weighting.py --save-draft")
    chain, base = lineage(args.file, args.kept)
    if base != NAME:
        raise SystemExit(f"{args.file}: its lineage begins at {base!r}, not the zoo's {NAME!r}")
    kind, config, _, tensors = read_zoo_file(args.file)
    zoo_kind, zoo_config, *_ = read_zoo_file(zoo.weights_path(NAME))
    if (kind, config) != (zoo_kind, zoo_config):
        raise SystemExit(f"{args.file}: its architecture differs from the zoo's {NAME} (a draft of another cost)")
    base = shipped_info(args.base_rev)
    prior = base if "made_by" in base else {}  # a draft this script shipped: its stages come first
    made_by = base_made_by(args.base_rev, base)
    made_by += [f"python experiments/{info['command']}"
                + ("" if f == args.file else f"  # kept as {kept(f, args.kept)}") for f, info in chain]
    made_by.append(f"python experiments/{current_command()}")
    info = {"made_by": made_by, "weights": "raw", "base_rev": args.base_rev,
            "step": prior.get("step", 0) + sum(stage_steps(i) for _, i in chain),
            "recipe": {"script": "experiments/cspd_step_weighting.py",
                       "stages": prior.get("recipe", {}).get("stages", [])
                       + [{k: v for k, v in i.items() if k != "recipe"} for _, i in chain]},
            "eval": held_out_row(args.eval, args.file)}
    out = save_zoo_file(zoo.weights_path(NAME), tensors, kind=kind, config=config, info=info)
    print(f"{out}: {len(chain)} stages after {NAME} of {args.base_rev}; now run `accel train {NAME} --card-only`")


if __name__ == "__main__":
    main()
