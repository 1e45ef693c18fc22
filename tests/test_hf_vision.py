"""Hugging Face MobileNetV2 and ResNet compile and match torch (interpreter and C++).

MobileNetV2 pads with aten.constant_pad_nd ("same" padding in TF style) and clamps with
ReLU6; ResNet pools with max_pool2d and ends in adaptive pooling. Both were refused
before gml.pad. Small random configs (no download), eval mode; the tolerance is the
families' usual f32 one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import gimlet


def mobilenet_v2() -> tuple[torch.nn.Module, torch.Tensor]:
    import transformers

    cfg = transformers.MobileNetV2Config(image_size=32, depth_multiplier=0.35)
    return transformers.MobileNetV2Model(cfg), torch.randn(1, 3, 32, 32)


def resnet() -> tuple[torch.nn.Module, torch.Tensor]:
    import transformers

    cfg = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])
    return transformers.ResNetModel(cfg), torch.randn(1, 3, 32, 32)


class _Pooled(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, return_dict=True).pooler_output


@pytest.mark.parametrize("factory", [mobilenet_v2, resnet], ids=["mobilenet_v2", "resnet"])
def test_hf_vision_model_matches_torch(factory: Any) -> None:
    from gimlet.backends.cpu import compile_module

    torch.manual_seed(0)
    model, x = factory()
    model = _Pooled(model.eval())
    with torch.no_grad():
        want = model(x).numpy()
    compiled = gimlet.compile(model, (x,))
    if factory is mobilenet_v2:
        assert "gml.pad" in compiled.ir
    (got,) = compiled(x)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    (cpp,) = compile_module(compiled.module, opt="-O1")([x.numpy()], compiled.weights)
    np.testing.assert_allclose(cpp, want, rtol=1e-4, atol=1e-5)
