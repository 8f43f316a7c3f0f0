"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW): an item-item model fitted in
closed form. With X the users × items 0/1 matrix of training interactions (``values=rating``: their ratings instead
of 1s, a variant of ours that ranks ratings ≥ 4 better where ratings are given: λ then scales with r²),

    min_B ‖X − XB‖²_F + λ‖B‖²_F   subject to diag(B) = 0

has the solution P = (XᵀX + λI)⁻¹, B = I − P·diag(1/diag P) (so B_ij = −P_ij / P_jj, B_jj = 0), and user u's
score of item i is X_u·B_:i = Σ_{j∈N(u)} B_ji.

The scoring, histories, fold-in and cold rows are the item-item models' shared part
(:class:`~recsys.models.item_item.ItemItem`); EASE adds its fit, from the training interactions it is given
(``fit_closed_form(train)``; with implicit feedback, which its ranking task sets, every positive is a 1).
``model.solver=closed_form`` fits it once: the Gram matrix by one sparse product, then one float32 Cholesky
factorization and inverse on the training device. Memory is O(n_items²): the model refuses, naming the size,
where B and the solve's two work matrices will not fit. EASE's scores are not ratings: it reports no RMSE; it is
selected and judged by ranking (``val/ndcg@10``).
"""

from __future__ import annotations

import numpy as np
import torch

from recsys.data.interactions import Interactions
from recsys.models.item_item import ItemItem, Values
from recsys.validation import Reg


class EASE(ItemItem):
    """EASE: item-item B = I − P·diag(1/diag P), P = (XᵀX + λI)⁻¹, scores X_u·B (Steck 2019)."""

    def __init__(self, reg: Reg = 250.0, values: Values = "binary"):
        super().__init__(values=values)
        self.reg = reg

    @torch.no_grad()
    def fit_closed_form(self, train: Interactions) -> None:
        """B = I − P·diag(1/diag P), P = (XᵀX + λI)⁻¹ of the training interactions X: one Gram product, one
        Cholesky factorization and inverse."""
        gram = self.gram(train)
        gram.diagonal().add_(float(self.reg))
        chol, info = torch.linalg.cholesky_ex(gram)
        if int(info) != 0:
            raise FloatingPointError(f"EASE: XᵀX + λI is not positive definite (model.reg={self.reg}); use reg > 0")
        del gram
        p = torch.cholesky_inverse(chol)
        del chol
        b = p.div_(-p.diagonal().clone().unsqueeze(0))  # −P_ij / P_jj
        b.diagonal().zero_()
        self.weights.copy_(b)

    def reference_weights(self) -> np.ndarray:
        """Steck 2019, eq. 8: P = (XᵀX + λI)⁻¹, B_ij = −P_ij / P_jj off the diagonal, B_jj = 0."""
        x = self.training_matrix()
        p = np.linalg.inv(x.T @ x + self.reg * np.eye(x.shape[1]))
        b = -p / np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
        return b
