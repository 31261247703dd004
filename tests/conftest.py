"""Test-wide settings. Tests use small tensors, for which one intra-op thread (torch and OpenBLAS) is as
fast as two and immune to oversubscription when other processes share the cores (ACCEL_TEST_THREADS
overrides). Set before torch/numpy load their thread pools."""
import os

_threads = os.environ.get("ACCEL_TEST_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", _threads)

import torch  # noqa: E402

torch.set_num_threads(int(_threads))
