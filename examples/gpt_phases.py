"""Prefill and decode of one GPT-style model as one serving program.

`serve(prompt, next_token)` runs prefill over the prompt (building the KV cache)
and one decode step for the next token against that cache. Placing this program
on a mixed cluster decides where each phase runs; when they land on different
devices the KV cache becomes an explicit `comm.send`/`comm.recv` between them
(disaggregated prefill/decode). Pins address the phases by module path:
`--pin 'prefill=gpu0,decode=acc0'`.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from gpt import GPT  # noqa: E402


class Prefill(nn.Module):
    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, ids: torch.Tensor):
        g = self.gpt
        x = g.wte(ids) + g.wpe(torch.arange(ids.shape[1], device=ids.device))
        keys, values = [], []
        for block in g.h:
            b, t, d = x.shape
            q, k, v = block.qkv(block.ln_1(x)).split(d, dim=2)
            q, k, v = (
                z.view(b, t, block.heads, d // block.heads).transpose(1, 2) for z in (q, k, v)
            )
            keys.append(k)
            values.append(v)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + block.proj(y.transpose(1, 2).reshape(b, t, d))
            x = x + block.out(F.gelu(block.fc(block.ln_2(x)), approximate="tanh"))
        return g.lm_head(g.ln_f(x[:, -1:])), torch.stack(keys), torch.stack(values)


class Decode(nn.Module):
    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, token: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        g = self.gpt
        x = g.wte(token) + g.wpe(torch.full((1,), keys.shape[3], device=token.device))
        for i, block in enumerate(g.h):
            b, t, d = x.shape
            q, k, v = block.qkv(block.ln_1(x)).split(d, dim=2)
            q, k, v = (
                z.view(b, t, block.heads, d // block.heads).transpose(1, 2) for z in (q, k, v)
            )
            k = torch.cat([keys[i], k], dim=2)
            v = torch.cat([values[i], v], dim=2)
            y = F.scaled_dot_product_attention(q, k, v)
            x = x + block.proj(y.transpose(1, 2).reshape(b, t, d))
            x = x + block.out(F.gelu(block.fc(block.ln_2(x)), approximate="tanh"))
        return g.lm_head(g.ln_f(x))


class Serve(nn.Module):
    def __init__(self, gpt: GPT):
        super().__init__()
        self.prefill = Prefill(gpt)
        self.decode = Decode(gpt)

    def forward(self, prompt: torch.Tensor, next_token: torch.Tensor):
        first, keys, values = self.prefill(prompt)
        return first, self.decode(next_token, keys, values)


def serve():
    """A small configuration (tests, demo)."""
    torch.manual_seed(0)
    gpt = GPT(vocab=512, ctx=128, d=64, heads=4, layers=2)
    return Serve(gpt), (torch.randint(0, 512, (1, 32)), torch.randint(0, 512, (1, 1)))


def serve_gpt2_small():
    """GPT-2 small's shape in bf16 with a 512-token prompt (the docs' worked scenario)."""
    torch.manual_seed(0)
    gpt = GPT(vocab=50257, ctx=1024, d=768, heads=12, layers=12).to(torch.bfloat16)
    return Serve(gpt), (torch.randint(0, 50257, (1, 512)), torch.randint(0, 50257, (1, 1)))
