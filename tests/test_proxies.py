"""Zero-cost proxies: finite on ordinary networks, the network left untouched, and each one
responds to what its formula measures."""

from __future__ import annotations

import math

import torch
from torch import nn

from nas_service.scoring.proxies import PROXIES, naswot, proxy_scores, synflow


def _cnn(width: int = 8, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), act(),
                         nn.Conv2d(width, width, 3, padding=1), act(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def _batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(n, 1, 12, 12), torch.randint(0, 10, (n,))


def test_every_proxy_is_finite_and_leaves_the_network_alone():
    net = _cnn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scores = proxy_scores(net, *_batch())
    assert set(scores) == set(PROXIES)
    assert all(math.isfinite(v) for v in scores.values()), scores
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in net.parameters())


def test_synflow_grows_with_width():
    x, y = _batch()
    assert synflow(_cnn(16), x, y) > synflow(_cnn(4), x, y)


def test_naswot_prefers_a_network_that_tells_inputs_apart():
    x, y = _batch()
    dead = _cnn()
    with torch.no_grad():
        dead[0].weight.zero_()
        dead[0].bias.fill_(-1.0)  # every code the same for every input
        dead[1].bias.fill_(-1.0)
    assert naswot(_cnn(), x, y) > naswot(dead, x, y)


def test_a_failing_proxy_is_nan_not_an_exception():
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no")

    scores = proxy_scores(Broken(), *_batch())
    assert all(math.isnan(v) for v in scores.values())
