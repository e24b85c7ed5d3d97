"""Real models (random weights, tiny inputs): every activation call-site is captured.

For each model one training step runs under :func:`gradscope.watch` and one without
it, from the same weights and seed. The captured call-sites must equal the count of
activation ops the forward runs (``tests/fixtures/counting.py``: a
``TorchDispatchMode`` below autograd, sharing no code with gradscope), every
recorded value must be finite, and the two trainings must give bitwise-identical
weights. ``benchmarks/model_coverage.py`` prints the same counts as a table.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import pytest
import torch
from torch import nn

import gradscope
from tests.fixtures.counting import true_call_sites
from tests.fixtures.models import MixedActivations

torchvision = pytest.importorskip("torchvision")


def _vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                             hidden_dim=32, mlp_dim=64, num_classes=10)


def _encoder(activation: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, activation=activation,
                                           batch_first=True)
        return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    return make


def _tv(name: str, **kw: Any) -> Callable[[], nn.Module]:
    return lambda: getattr(torchvision.models, name)(weights=None, num_classes=10, **kw)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    # name: (factory, input shape, call-sites per forward)
    "googlenet": (_tv("googlenet", aux_logits=False, init_weights=False), (2, 3, 32, 32), 57),
    "mobilenet_v3_small": (_tv("mobilenet_v3_small"), (2, 3, 32, 32), 42),
    "swin_t": (_tv("swin_t"), (2, 3, 32, 32), 24),
    "densenet121": (_tv("densenet121"), (2, 3, 32, 32), 121),
    "vit": (_vit, (2, 3, 32, 32), 2),
    "transformer_relu": (_encoder("relu"), (2, 6, 16), 2),
    "transformer_gelu": (_encoder("gelu"), (2, 6, 16), 2),
    "mixed": (MixedActivations, (2, 3, 8, 8), 23),
}


def _step(model: nn.Module, x: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.manual_seed(1)  # dropout, RReLU
    model(x).float().pow(2).mean().backward()
    opt.step()


@pytest.mark.parametrize("name", list(MODELS))
def test_every_call_site_is_captured_and_training_is_unchanged(name: str) -> None:
    make, shape, sites = MODELS[name]
    torch.manual_seed(0)
    model = make().train()
    x = torch.randn(shape)
    plain, counted = copy.deepcopy(model), copy.deepcopy(model)
    assert true_call_sites(counted, x) == sites

    with gradscope.watch(model, summary=False, findings=False) as mon:
        _step(model, x)
    _step(plain, x)

    captured = mon.history.layers("activation")
    assert len(captured) == sites, captured
    cov = mon.coverage()
    assert cov.captured == sites and not cov.unknown
    assert not any("_orig_mod" in n for n in captured)
    for layer in captured:
        for metric in mon.history.metrics(layer):
            value = mon.history.series(layer, metric)[1][-1]
            assert math.isfinite(value), (layer, metric, value)
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(p, q), n
