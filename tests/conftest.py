"""Test-wide settings. Tests use small tensors, for which one intra-op thread (torch and OpenBLAS) is as
fast as two and immune to oversubscription when other processes share the cores (ACCEL_TEST_THREADS
overrides). Set before torch/numpy load their thread pools."""
import os

_threads = os.environ.get("ACCEL_TEST_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", _threads)

import torch  # noqa: E402

torch.set_num_threads(int(_threads))


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (its module fixtures included), restored afterwards, whatever
    ACCEL_TEST_THREADS says: the MAR/VAR modules' tiny matmuls run far slower when two threads hand off on a
    shared, oversubscribed CPU. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
