import os

import pytest
import torch

# Two cores here and in CI: keep intra-op threads from oversubscribing when pytest runs.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
