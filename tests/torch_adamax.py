"""MindSpore ``nn.AdaMax`` written in torch (float32), the reference of the whole-model tests.

From MindSpore's ``nn.AdaMax`` (shared/reference/mindspore-nn-AdaMax.txt) and README "The
update", without weight decay, gradient centralization or loss scale::

    global_step += 1;  beta1_power *= beta1
    m = beta1*m + (1-beta1)*g
    v = max(beta2*v, |g|)
    w = w - lr/(1-beta1_power) * (m/(v+eps))

Every operation is one float32 op in MindSpore's order (the CPU kernel's), so the update itself
matches the ONNX one to the last bit for equal gradients.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class TorchAdaMax:
    """MindSpore ``nn.AdaMax`` over torch parameters (float32, no weight decay)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        learning_rate: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.lr = torch.tensor(learning_rate, dtype=torch.float32)
        self.beta1 = torch.tensor(beta1, dtype=torch.float32)
        self.beta2 = torch.tensor(beta2, dtype=torch.float32)
        self.eps = torch.tensor(eps, dtype=torch.float32)
        self.one = torch.tensor(1.0, dtype=torch.float32)
        self.beta1_power = torch.tensor(1.0, dtype=torch.float32)
        self.global_step = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.global_step += 1
        self.beta1_power = self.beta1_power * self.beta1
        scale = self.lr / (self.one - self.beta1_power)
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            m.copy_(self.beta1 * m + (self.one - self.beta1) * g)
            v.copy_(torch.maximum(self.beta2 * v, g.abs()))
            p.sub_(scale * (m / (v + self.eps)))
