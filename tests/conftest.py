"""Suite-wide settings: tests run tiny models on a 2-core CI machine."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny matmuls: a second OpenMP thread only adds sync cost, and spins badly when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
