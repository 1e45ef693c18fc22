"""A two-layer MLP with a dynamic batch dim: `gimletc compile examples/mlp.py:model -o out/`."""

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in: int = 32, d_hidden: int = 64, d_out: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def model():
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=1024)
    return MLP(), (torch.randn(4, 32),), ({0: batch},)
