"""GPT-2 small from Hugging Face `transformers` (GPT2LMHeadModel with the default config:
12 layers, d=768, 12 heads, vocab 50257; random weights, no download), for compile-time
benchmarks: `gimletc compile examples/gpt2_small.py:model -o out/`."""

import torch
import transformers
from torch import nn


class Logits(nn.Module):
    """transformers returns a ModelOutput dataclass; the program returns the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, return_dict=True).logits


def model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(use_cache=False)
    return Logits(transformers.GPT2LMHeadModel(config)), (torch.randint(0, 50257, (1, 128)),)
