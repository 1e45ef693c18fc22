"""The model families every stage is tested on: hand-written modules and small
random-weight Hugging Face configs (no download). Each factory returns
(module, example_inputs, dynamic_shapes or None)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Factory = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...], Any]]


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)
        for bn in (self.bn1, self.bn2):  # non-trivial running statistics
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = F.avg_pool2d(x, 2, stride=1, padding=1)
        return self.head(self.avg(x).flatten(1))


class RMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class LlamaBlock(nn.Module):
    """RMSNorm, rotary embeddings, grouped-query attention, SiLU-gated MLP."""

    def __init__(self, d: int = 32, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.heads, self.kv, self.hd = heads, kv_heads, d // heads
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.v = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate, self.up = nn.Linear(d, 64, bias=False), nn.Linear(d, 64, bias=False)
        self.down = nn.Linear(64, d, bias=False)

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[2]
        inv = 1.0 / (10000 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        ang = torch.arange(t).float()[:, None] * inv[None, :]
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # as HF Llama: f16/bf16 stay 16-bit
        x1, x2 = x[..., : self.hd // 2], x[..., self.hd // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        q = self.rope(self.q(h).view(b, t, self.heads, self.hd).transpose(1, 2))
        k = self.rope(self.k(h).view(b, t, self.kv, self.hd).transpose(1, 2))
        v = self.v(h).view(b, t, self.kv, self.hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def mlp() -> Any:
    return MLP(), (torch.randn(4, 16),), ({0: torch.export.Dim("batch", max=64)},)


def cnn() -> Any:
    return CNN(), (torch.randn(2, 3, 16, 16),), None


def gpt() -> Any:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from gpt import GPT

    seq = torch.export.Dim("seq", min=2, max=64)
    return (
        GPT(vocab=97, ctx=64, d=32, heads=4, layers=2),
        (torch.randint(0, 97, (2, 12)),),
        ({1: seq},),
    )


def llama_block() -> Any:
    return LlamaBlock(), (torch.randn(2, 10, 32),), None


class _LastHidden(nn.Module):
    """Hugging Face models return dataclasses; export wants tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, return_dict=True)[0]


def _hf(config: Any, cls_name: str) -> nn.Module:
    import transformers

    config.use_cache = False
    model = getattr(transformers, cls_name)(config)
    return _LastHidden(model)


def hf_gpt2() -> Any:
    import transformers

    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64)
    return _hf(cfg, "GPT2LMHeadModel"), (torch.randint(0, 97, (1, 12)),), None


def hf_llama() -> Any:
    import transformers

    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=97,
        max_position_embeddings=64,
    )
    return _hf(cfg, "LlamaForCausalLM"), (torch.randint(0, 97, (1, 12)),), None


def hf_bert() -> Any:
    import transformers

    cfg = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=97,
        max_position_embeddings=64,
    )
    return _hf(cfg, "BertModel"), (torch.randint(0, 97, (2, 12)),), None


def hf_vit() -> Any:
    import transformers

    cfg = transformers.ViTConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
    )
    return _hf(cfg, "ViTModel"), (torch.randn(1, 3, 16, 16),), None


def gpt_bf16() -> Any:
    """A small GPT in bf16, static shapes (bf16 through the C++ backend and channels)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from gpt import GPT

    torch.manual_seed(0)
    return GPT(vocab=97, ctx=64, d=32, heads=4, layers=2).to(torch.bfloat16), (
        torch.randint(0, 97, (1, 12)),
    )


FAMILIES: dict[str, Factory] = {
    "mlp": mlp,
    "cnn": cnn,
    "gpt": gpt,
    "llama_block": llama_block,
    "hf_gpt2": hf_gpt2,
    "hf_llama": hf_llama,
    "hf_bert": hf_bert,
    "hf_vit": hf_vit,
}


def family_with_bundle_weights(name: str, bundle: Any) -> tuple[nn.Module, tuple[Any, ...]]:
    """FAMILIES[name]'s module holding the (randomly initialised) weights a bundle at
    `bundle` (a Path) was compiled with, in eval mode, and its example inputs."""
    from gimlet.artifacts import load_weights

    module, inputs, _ = FAMILIES[name]()
    state = {}
    for f in (bundle / "weights").iterdir():
        state.update({k: torch.from_numpy(v) for k, v in load_weights(str(f)).items()})
    missing = set(module.state_dict()) - set(state)
    assert all(k.endswith("num_batches_tracked") for k in missing), missing
    module.load_state_dict(state, strict=False)
    return module.eval(), inputs
