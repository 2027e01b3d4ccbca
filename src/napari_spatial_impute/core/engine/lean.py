"""The Tangram objective restricted to candidate pairs (the lean engine).

Same equation as :mod:`napari_spatial_impute.core.engine.objective`, with the mapping's logits kept only on a
fixed set of (reference, spatial) pairs (``rows``, ``cols``); every other entry of M is exactly
zero. Each reference row is still a softmax over its own entries, so rows sum to 1 and the
density, gene-wise and cell-wise terms keep their meaning. Memory and time are linear in the
number of pairs instead of ``n_reference x n_spatial``.
"""

from __future__ import annotations

import warnings

import torch

from napari_spatial_impute.core.engine.objective import SimilarityTerms, Weights


class CandidateObjective:
    """Objective value and gradient on candidate pairs.

    Parameters
    ----------
    S, G
        Reference and spatial training matrices (float32).
    weights
        Term weights.
    rows, cols
        Reference and spatial index of every pair, sorted by ``cols`` (then ``rows``).
    d
        Target density over spatial cells or ``None``.
    w
        Weight of each reference unit in the density (``1/n`` per cell by default).
    """

    def __init__(
        self,
        S: torch.Tensor,
        G: torch.Tensor,
        weights: Weights,
        rows: torch.Tensor,
        cols: torch.Tensor,
        d: torch.Tensor | None = None,
        w: torch.Tensor | None = None,
    ) -> None:
        self.S = S
        self.G = G
        self.St = S.t().contiguous()
        self.weights = weights
        self._similarity = SimilarityTerms(G, weights)
        self.rows = rows
        self.cols = cols
        self.n, self.s = S.shape[0], G.shape[0]
        self.d_report = d
        self.d = d if weights.lambda_d != 0 else None
        self.w = (
            w
            if w is not None
            else torch.full((self.n,), 1.0 / self.n, dtype=S.dtype, device=S.device)
        )
        self.w_e = self.w[rows]
        counts = torch.bincount(cols, minlength=self.s)
        self.crow = torch.zeros(self.s + 1, dtype=torch.int64, device=S.device)
        self.crow[1:] = torch.cumsum(counts, 0)

    def _csr(self, values: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(self.crow, self.rows, values, size=(self.s, self.n))

    def probabilities(self, L: torch.Tensor) -> torch.Tensor:
        """Row-wise softmax of the pair logits (reference rows)."""
        rmax = torch.full((self.n,), -torch.inf, dtype=L.dtype, device=L.device)
        rmax.scatter_reduce_(0, self.rows, L, reduce="amax", include_self=True)
        e = torch.exp(L - rmax[self.rows])
        rsum = torch.zeros(self.n, dtype=L.dtype, device=L.device).index_add_(0, self.rows, e)
        return e.div_(rsum[self.rows])

    def forward(self, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``Ĝ = Mᵀ S`` (spatial x genes) and the mapped density ``m``."""
        G_pred = self._csr(P) @ self.S
        m = torch.zeros(self.s, dtype=P.dtype, device=P.device).index_add_(
            0, self.cols, self.w_e * P
        )
        return G_pred, m

    def value_and_grad(
        self, L: torch.Tensor, want_entropy: bool = False
    ) -> tuple[dict[str, float], torch.Tensor]:
        """Terms at the pair logits ``L`` and the gradient of the total loss."""
        w = self.weights
        with torch.no_grad():
            P = self.probabilities(L)
            G_pred, m = self.forward(P)
            gv, vg, A = self._similarity(G_pred)
            total = -w.lambda_g1 * gv - w.lambda_g2 * vg
            need_ent = want_entropy or w.lambda_r != 0
            ent = float(torch.special.xlogy(P, P).sum()) if need_ent else float("nan")
            if w.lambda_r != 0:
                total -= w.lambda_r * ent
            kl = float("nan")
            grad_m = None
            if self.d_report is not None:
                m_safe = m.clamp_min(torch.finfo(m.dtype).tiny)
                kl = float(
                    torch.nn.functional.kl_div(torch.log(m_safe), self.d_report, reduction="sum")
                )
                if self.d is not None:
                    total += w.lambda_d * kl
                    grad_m = -w.lambda_d * self.d / m_safe
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dP = torch.sparse.sampled_addmm(
                    self._csr(torch.zeros_like(P)), A, self.St, beta=0.0
                ).values()
            dP = dP.clone()
            if grad_m is not None:
                dP.add_(self.w_e * grad_m[self.cols])
            if w.lambda_r != 0:
                dP.sub_(torch.log(P.clamp_min(torch.finfo(P.dtype).tiny)), alpha=w.lambda_r)
            inner = torch.zeros(self.n, dtype=P.dtype, device=P.device).index_add_(
                0, self.rows, P * dP
            )
            self._last = (A, grad_m, inner)
            grad = dP.sub_(inner[self.rows]).mul_(P)
        values = {
            "total_loss": total,
            "main_loss": gv,
            "vg_reg": vg,
            "kl_reg": kl,
            "entropy_reg": ent,
        }
        return values, grad

    def propose(self, k_add: int, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs outside the set whose mass would lower the loss most (column generation).

        Moving probability of reference row ``i`` to spatial cell ``j`` changes the loss at the
        rate ``∂L/∂P_ij - Σ_j' P_ij' ∂L/∂P_ij'``; for each spatial cell the ``k_add`` most
        negative rates (from the last gradient evaluation) are returned. Costs one
        ``n_spatial x n_reference x n_genes`` product, done in chunks.
        """
        A, grad_m, inner = self._last
        chunk = chunk or max(256, (1 << 25) // max(self.n, 1))
        k_add = max(1, min(k_add, self.n))
        # rate = A Sᵀ + grad_m wᵀ - 1 innerᵀ as one matmul of augmented matrices (the two rank-one
        # terms as separate passes cost half as much again as the matmul, measured here)
        St_aug = torch.cat([self.St, self.w[None, :], -inner[None, :]], dim=0)
        gm = grad_m if grad_m is not None else torch.zeros(self.s, dtype=A.dtype, device=A.device)
        new_rows = torch.empty((self.s, k_add), dtype=torch.int64, device=self.S.device)
        for a in range(0, self.s, chunk):
            b = min(self.s, a + chunk)
            ones = torch.ones((b - a, 1), dtype=A.dtype, device=A.device)
            A_aug = torch.cat([A[a:b], gm[a:b, None], ones], dim=1)
            rate = A_aug @ St_aug  # (c, n): the rate of every pair of the chunk
            new_rows[a:b] = torch.topk(rate, k_add, dim=1, largest=False, sorted=False).indices
        new_cols = torch.arange(self.s, device=self.S.device).repeat_interleave(k_add)
        return new_rows.reshape(-1), new_cols
