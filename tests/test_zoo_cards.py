"""Model cards of zoo files made outside one ``accel train`` run (accel.zoo.cards.write_card with ``made_by``)."""
from __future__ import annotations

import torch

from accel import zoo
from accel.zoo.cards import write_card
from accel.zoo.store import save_zoo_file

NAME = "fmnist-mar-draft-aligned"


def test_card_lists_the_commands_a_file_records_and_its_facts(tmp_path, monkeypatch):
    f = tmp_path / f"{NAME}.safetensors.xz"
    save_zoo_file(f, {"w": torch.ones(2)}, kind="mar", config={},
                  info={"made_by": ["python a.py --x 1", "python b.py"], "step": 7, "wall_s": 3.5, "weights": "raw",
                        "recipe": {"stages": 2}, "eval": {"gap_sigma0": 1.25}})
    monkeypatch.setattr(zoo, "weights_path", lambda name: f)
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")  # an unrelated run folder: not read when the file records how it was made
    card = write_card(NAME, run, command="accel train x --card-only", quality=None, latency=None,
                      out_dir=tmp_path).read_text()
    made = card.split("```")[1].strip().splitlines()
    assert made == ["python a.py --x 1", "python b.py", "accel train x --card-only"]
    assert "| steps | 7 |" in card and "| wall time (s, all sessions) | 3.5 |" in card and "| weights | raw |" in card
    assert '"gap_sigma0": 1.25' in card and '"stages": 2' in card


def test_card_without_made_by_names_accel_train(tmp_path, monkeypatch):
    f = tmp_path / f"{NAME}.safetensors.xz"
    save_zoo_file(f, {"w": torch.ones(2)}, kind="mar", config={}, info={"step": 3, "weights": "ema", "recipe": {}})
    monkeypatch.setattr(zoo, "weights_path", lambda name: f)
    card = write_card(NAME, tmp_path / "absent", command="c", quality=None, latency=None, out_dir=tmp_path).read_text()
    assert card.split("```")[1].strip().splitlines() == [f"accel train {NAME}", "c"]
    assert "is not in this checkout" in card
