"""Test-wide settings. Tests use small tensors, for which one intra-op thread is as fast as two and
immune to oversubscription when other processes share the cores (ACCEL_TEST_THREADS overrides)."""
import os

import torch

torch.set_num_threads(int(os.environ.get("ACCEL_TEST_THREADS", "1")))
