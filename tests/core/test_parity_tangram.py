"""Parity with tangram-sc 1.0.4: same objective value for the same M, same final training score."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import napari_spatial_impute as nsi
from napari_spatial_impute.core.engine.objective import DenseObjective, Weights

tg = pytest.importorskip(
    "tangram", reason="tangram-sc is a dev/bench extra: pip install -e '.[dev]'"
)
logging.getLogger().setLevel(logging.WARNING)


def _subset(merfish_pair, n_ref=300, n_sp=200, seed=0):
    ref, spa = merfish_pair
    rng = np.random.default_rng(seed)
    r = ref[np.sort(rng.choice(ref.n_obs, n_ref, replace=False))].copy()
    s = spa[np.sort(rng.choice(spa.n_obs, n_sp, replace=False))].copy()
    return r, s


@pytest.mark.parametrize(
    ("lambdas", "with_density"),
    [
        ({}, False),
        ({"lambda_d": 1.0}, True),
        ({"lambda_d": 0.5, "lambda_g2": 1.0, "lambda_r": 0.1}, True),
    ],
)
def test_same_objective_value_for_same_M(merfish_pair, lambdas, with_density):
    ref, spa = _subset(merfish_pair)
    genes = list(ref.var_names)
    S = ref[:, genes].X.toarray().astype(np.float32)
    G = spa[:, genes].X.toarray().astype(np.float32)
    keep = (S.sum(0) > 0) & (G.sum(0) > 0)
    S, G = S[:, keep], G[:, keep]
    d = np.full(G.shape[0], 1.0 / G.shape[0], dtype=np.float32) if with_density else None
    mapper = tg.mapping_optimizer.Mapper(S=S, G=G, d=d, random_state=1, **lambdas)
    theirs = mapper._loss_fn(verbose=False)
    ours = DenseObjective(
        torch.tensor(S),
        torch.tensor(G),
        Weights(**lambdas),
        d=None if d is None else torch.tensor(d),
    ).terms(mapper.M.detach())
    assert ours["total_loss"] == pytest.approx(float(theirs[0]), rel=1e-5, abs=1e-6)
    assert ours["main_loss"] == pytest.approx(theirs[1], rel=1e-5)


def test_final_training_score_within_001(merfish_pair):
    ref, spa = _subset(merfish_pair)
    epochs = 300
    # every epoch (tol=0), like tangram-sc, on the exact engine (whose objective is tangram-sc's)
    ours = nsi.map_cells_to_space(
        ref, spa, method="tangram", epochs=epochs, density="uniform", seed=0, tol=0, engine="exact"
    )
    a, b = ref.copy(), spa.copy()
    tg.pp_adatas(a, b, genes=None)
    ad_map = tg.map_cells_to_space(
        a,
        b,
        mode="cells",
        num_epochs=epochs,
        density_prior="uniform",
        random_state=0,
        verbose=False,
    )
    theirs = float(ad_map.uns["train_genes_df"]["train_score"].mean())
    assert abs(ours.training_score - theirs) < 0.01, (ours.training_score, theirs)
    # and per gene, the same genes score alike
    per_gene = ours.train_genes_df["train_score"]
    tdf = ad_map.uns["train_genes_df"]["train_score"]
    lower = {g.lower(): v for g, v in per_gene.items()}
    common = [g for g in tdf.index if g in lower]
    assert len(common) == len(per_gene)
    diff = np.abs(np.array([lower[g] for g in common]) - tdf.loc[common].to_numpy())
    assert np.median(diff) < 0.02
