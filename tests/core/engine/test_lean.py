"""The lean engine: candidate pairs, gradient on pairs, working-set refresh, sparse results."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import napari_spatial_impute as nsi
from napari_spatial_impute import InputError
from napari_spatial_impute.core.engine.candidates import candidate_pairs, merge_pairs
from napari_spatial_impute.core.engine.lean import CandidateObjective
from napari_spatial_impute.core.engine.objective import Weights, tangram_loss
from napari_spatial_impute.core.export import result_to_anndata


def test_candidate_pairs_cover_every_cell_and_are_sorted():
    torch.manual_seed(0)
    S, G = torch.rand(40, 6), torch.rand(30, 6)
    rows, cols = candidate_pairs(S, G, k=5, r=2, chunk=7)
    key = cols * 40 + rows
    assert torch.all(key[1:] > key[:-1])  # unique, sorted by spatial then reference
    assert set(rows.tolist()) == set(range(40))  # reverse candidates: every reference cell
    assert torch.all(torch.bincount(cols, minlength=30) >= 5)
    # the chosen candidates of spatial cell 0 are its most similar reference cells
    from napari_spatial_impute.core.engine.candidates import _normalised

    sim = _normalised(G)[0] @ _normalised(S).t()
    best = set(torch.topk(sim, 5).indices.tolist())
    assert best <= set(rows[cols == 0].tolist())


def _pairs_before_the_search_option(S, G, k, r, chunk):
    """candidate_pairs as it was before ``search`` existed (one exact pass in blocks)."""
    from napari_spatial_impute.core.engine.candidates import _normalised

    n, s = S.shape[0], G.shape[0]
    Sn, g_norm = _normalised(S), G.norm(dim=0, keepdim=True)
    best, ref_val, ref_idx = [], torch.full((r, n), -2.0), torch.zeros((r, n), dtype=torch.int64)
    for a in range(0, s, chunk):
        sim = _normalised(G[a : a + chunk], g_norm) @ Sn.t()
        best.append(torch.topk(sim, k, dim=1, sorted=False).indices)
        v, i = torch.topk(sim, min(r, sim.shape[0]), dim=0, sorted=False)
        keep = torch.topk(torch.cat([ref_val, v]), r, dim=0, sorted=False).indices
        ref_idx = torch.gather(torch.cat([ref_idx, i + a]), 0, keep)
        ref_val = torch.gather(torch.cat([ref_val, v]), 0, keep)
    rows = torch.cat([torch.cat(best).reshape(-1), torch.arange(n).repeat(r)])
    cols = torch.cat([torch.arange(s).repeat_interleave(k), ref_idx.reshape(-1)])
    key = torch.unique(cols * n + rows)
    return key % n, key // n


@pytest.mark.parametrize("n, s, chunk", [(300, 500, None), (40, 30, 7), (2000, 1500, 300)])
def test_small_data_give_the_candidates_of_before(n, s, chunk):
    torch.manual_seed(n)
    S, G = torch.rand(n, 12) ** 3, torch.rand(s, 12) ** 3
    before = _pairs_before_the_search_option(S, G, 10, 3, chunk or max(256, (1 << 25) // n))
    for search in ("auto", "exact"):
        rows, cols = candidate_pairs(S, G, k=10, r=3, chunk=chunk, search=search)
        assert torch.equal(rows, before[0]) and torch.equal(cols, before[1]), search


def _typed(n: int, s: int, genes: int = 30, types: int = 25, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    programs = torch.rand(types, genes, generator=g) ** 4 + 0.01
    S = torch.poisson(programs[torch.randint(0, types, (n,), generator=g)] * 8, generator=g)
    G = torch.poisson(programs[torch.randint(0, types, (s,), generator=g)] * 4, generator=g)
    return S, G


def test_approximate_candidates_cover_every_cell_and_match_the_exact_ones():
    n, s, k, r = 4000, 3000, 20, 3
    S, G = _typed(n, s)
    rows, cols = candidate_pairs(S, G, k=k, r=r, search="approximate", seed=0)
    key = cols * n + rows
    assert torch.all(key[1:] > key[:-1])  # unique, sorted by spatial then reference
    assert torch.all(torch.bincount(cols, minlength=s) >= k)  # k per spatial cell
    assert set(rows.tolist()) == set(range(n))  # every reference cell is mapped somewhere
    ex_rows, ex_cols = candidate_pairs(S, G, k=k, r=r, search="exact")
    exact = set((ex_cols * n + ex_rows).tolist())
    assert len(exact & set(key.tolist())) / len(exact) > 0.95
    again = candidate_pairs(S, G, k=k, r=r, search="approximate", seed=0)
    assert torch.equal(again[0], rows) and torch.equal(again[1], cols)


def test_approximate_candidates_with_few_cells():
    """Fewer reference cells than k, one cell on either side, no reverse candidates."""
    S, G = _typed(6, 9, seed=1)
    for a, b, k, r in ((S, G, 50, 5), (S[:1], G, 3, 2), (S, G[:1], 4, 5), (S, G, 2, 0)):
        rows, cols = candidate_pairs(a, b, k=k, r=r, search="approximate")
        ex = candidate_pairs(a, b, k=k, r=r, search="exact")
        # with every list probed the pairs are the exact ones (up to ties)
        assert rows.shape == ex[0].shape
        assert torch.all(torch.bincount(cols, minlength=b.shape[0]) >= min(k, a.shape[0]))


def test_merge_pairs_keeps_old_positions():
    rows, cols = torch.tensor([1, 0, 2]), torch.tensor([0, 1, 1])
    r2, c2, pos = merge_pairs(rows, cols, torch.tensor([0, 1]), torch.tensor([0, 1]), n=3)
    assert list(zip(r2.tolist(), c2.tolist(), strict=True)) == [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
        (2, 1),
    ]
    assert [(r2[p].item(), c2[p].item()) for p in pos] == [(1, 0), (0, 1), (2, 1)]


def _small_pairs(seed: int, n: int, s: int, g: int, k: int, r: int):
    """Seeded small data, candidate pairs, a density and random pair logits."""
    torch.manual_seed(seed)
    S, G = torch.rand(n, g) * 3, torch.rand(s, g) * 3
    rows, cols = candidate_pairs(S, G, k=k, r=r)
    d = torch.rand(s)
    return S, G, rows, cols, d / d.sum(), torch.randn(len(rows))


@pytest.mark.parametrize("weights", [Weights(), Weights(lambda_d=1.0, lambda_g2=0.5)])
def test_pair_gradient_matches_autograd(weights):
    n, s = 30, 25
    S, G, rows, cols, d, L = _small_pairs(1, n, s, 8, k=6, r=2)
    values, grad = CandidateObjective(S, G, weights, rows, cols, d=d).value_and_grad(L)
    Lr = L.clone().requires_grad_(True)
    M = torch.full((n, s), -torch.inf).index_put((rows, cols), Lr)
    ref = tangram_loss(M, S, G, weights, d=d)
    ref["total_loss"].backward()
    assert values["total_loss"] == pytest.approx(float(ref["total_loss"].detach()), rel=1e-5)
    torch.testing.assert_close(grad, Lr.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("weights", [Weights(), Weights(lambda_d=1.0)])
def test_propose_returns_the_most_negative_rates(weights):
    """Proposals equal a brute-force ranking of dL/dP_ij - <P_i, dL/dP_i> from autograd."""
    n, s = 40, 30
    S, G, rows, cols, d, L = _small_pairs(2, n, s, 7, k=5, r=1)
    obj = CandidateObjective(S, G, weights, rows, cols, d=d)
    obj.value_and_grad(L)
    new_rows, new_cols = obj.propose(3, chunk=7)
    # brute force: the loss as a function of a dense P (zeros off the pairs)
    P = torch.zeros(n, s)
    P[rows, cols] = obj.probabilities(L)
    P.requires_grad_(True)
    G_pred = P.t() @ S
    loss = -weights.lambda_g1 * torch.nn.functional.cosine_similarity(G_pred, G, dim=0).mean()
    if weights.lambda_d:
        m = P.sum(0) / n
        loss = loss + weights.lambda_d * torch.nn.functional.kl_div(
            torch.log(m.clamp_min(1e-30)), d, reduction="sum"
        )
    loss.backward()
    dLdP = P.grad
    inner = (P.detach() * dLdP).sum(1)
    rate = (dLdP - inner[:, None]).t()  # spatial x reference
    for j in range(s):
        got = set(new_rows[new_cols == j].tolist())
        best = torch.sort(rate[j]).values
        # the proposed rows have the 3 smallest rates (ties at float precision aside)
        assert len(got) == 3
        assert rate[j, list(got)].max() <= best[2] + 1e-6
    assert torch.equal(new_cols, torch.arange(s).repeat_interleave(3))


def test_lean_with_all_pairs_equals_exact(synthetic):
    ref, spa = synthetic
    exact = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=80, engine="exact")
    lean = nsi.map_cells_to_space(
        ref,
        spa,
        method="tangram",
        epochs=80,
        engine="lean",
        candidates=ref.n_obs - 1,
        reverse_candidates=spa.n_obs,
    )
    assert lean.params["engine"] == "lean" and sp.issparse(lean.probabilities)
    assert lean.params["n_pairs"] == ref.n_obs * spa.n_obs  # all pairs to start with
    assert abs(lean.training_score - exact.training_score) < 0.01


def test_lean_refresh_reaches_exact_score_on_real_pair(merfish_pair):
    ref, spa = merfish_pair
    exact = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=300, engine="exact")
    lean = nsi.map_cells_to_space(
        ref, spa, method="tangram", epochs=300, engine="lean", candidates=20
    )
    assert lean.probabilities.nnz < 0.2 * ref.n_obs * spa.n_obs
    assert lean.training_score > exact.training_score - 0.01
    np.testing.assert_allclose(np.asarray(lean.probabilities.sum(1)).ravel(), 1.0, rtol=1e-4)


def test_lean_results_project_like_dense(merfish_pair, tmp_path):
    ref, spa = merfish_pair
    r = nsi.map_cells_to_space(
        ref, spa, method="tangram", cluster_key="cell_type", epochs=60, engine="lean", candidates=20
    )
    out = result_to_anndata(r, method="probabilistic")
    P = r.probabilities.toarray()
    np.testing.assert_allclose(out.X, P.T @ ref.X.toarray(), rtol=1e-4, atol=1e-5)
    probs = out.obsm["cluster_probabilities"]
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out.obsm["mapping_top_index"][:, 0], P.argmax(0))
    nsi.write_h5ad_atomic(out, tmp_path / "lean.h5ad")


def test_lean_rejects_constrained(synthetic):
    ref, spa = synthetic
    with pytest.raises(InputError, match="lean engine does not support constrained"):
        nsi.map_cells_to_space(
            ref, spa, method="tangram", mode="constrained", engine="lean", epochs=1
        )
    with pytest.raises(InputError, match="engine 'fast'"):
        nsi.map_cells_to_space(ref, spa, method="tangram", engine="fast", epochs=1)
