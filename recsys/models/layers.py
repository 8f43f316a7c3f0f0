"""Scoring math shared by the factorization models, kept apart from the Lightning systems."""

from __future__ import annotations

import torch
from torch import nn


class Bilinear(nn.Module):
    """``s(u, i) = P_uᵀQ_i [+ b_u + b_i]``: user/item factor tables with optional bias tables.

    Dense embeddings on purpose: sparse gradients do not all-reduce under DDP on NCCL.
    """

    def __init__(self, num_users: int, num_items: int, dim: int, bias: bool, init_std: float):
        super().__init__()
        self.user = nn.Embedding(num_users, dim)
        self.item = nn.Embedding(num_items, dim)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)
        self.user_bias = nn.Embedding(num_users, 1) if bias else None
        self.item_bias = nn.Embedding(num_items, 1) if bias else None
        if bias:
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        score = (self.user(users) * self.item(items)).sum(-1)
        if self.user_bias is not None:
            score = score + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
        return score

    def row_penalty(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Per-rating ``(‖P_u‖² + ‖Q_i‖², b_u² + b_i²)``: the SGD-MF regularizer, one term per rating."""
        factors = self.user(users).square().sum(-1) + self.item(items).square().sum(-1)
        if self.user_bias is None:
            return factors, 0.0
        return factors, self.user_bias(users).squeeze(-1).square() + self.item_bias(items).squeeze(-1).square()
