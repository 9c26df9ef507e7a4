import os

import pytest
import torch

# Two cores here: keep each test process to one intra-op thread so multi-process tests do not
# oversubscribe the machine (and results do not depend on thread scheduling).
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def rng_seed():
    torch.manual_seed(0)
    return 0
