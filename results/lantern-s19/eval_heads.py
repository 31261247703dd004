"""One-off (issue 18, session 19): held-out statistics (the recipe's ``evaluate``) of EAGLE head files on chunk 383
of runs/eagle-cfg-data (the stage-4 run's held-out chunk; no stage trained on it). Samples the chunk if missing.

    PYTHONPATH=$PWD python results/lantern-s19/eval_heads.py FILE [FILE ...]
"""
import json
import sys

import torch

from accel import zoo
from accel.train.drafter_cfg import EagleCFGRecipe
from accel.train.drafter import load_eagle
torch.set_num_threads(1)
r = EagleCFGRecipe(n_samples=95750, init="")
for f in sys.argv[1:]:
    model = r.build()
    path = f if f.endswith(".xz") or "/" in f else zoo.weights_path(f)
    model.head.load_state_dict(load_eagle(path)[0].state_dict())
    print(json.dumps({"head": f, "chunks": [p.name for p in r.val_paths()], **r.evaluate(model.eval(), None)}))
