"""Cross-validation (no leak of held-out genes) and per-cell-type validation."""

from __future__ import annotations

import numpy as np
import pytest

import napari_spatial_impute as nsi
from _data import size_pair
from napari_spatial_impute import InputError
from napari_spatial_impute.core import evaluate
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.core.metrics import gene_folds, pearson_per_gene


def test_gene_folds_partition_and_seed():
    genes = [f"g{i}" for i in range(23)]
    folds = gene_folds(genes, 5, seed=0)
    assert sorted(sum(folds, [])) == sorted(genes)
    assert [len(f) for f in folds] == [5, 5, 5, 4, 4]
    assert gene_folds(genes, 5, seed=0) == folds
    assert gene_folds(genes, 5, seed=1) != folds
    with pytest.raises(InputError, match="fewer folds"):
        gene_folds(genes[:3], 5)


def test_pearson_per_gene():
    rng = np.random.default_rng(0)
    a = rng.random((50, 3))
    b = a.copy()
    b[:, 1] = -a[:, 1]
    b[:, 2] = 1.0  # constant -> NaN
    r = pearson_per_gene(a, b)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(-1.0) and np.isnan(r[2])


def test_cross_validation_never_trains_on_held_out_genes(synthetic, monkeypatch):
    ref, spa = synthetic
    calls = []
    real = evaluate.map_cells_to_space

    def spy(reference, spatial, *, genes, **kw):
        calls.append(list(genes))
        return real(reference, spatial, genes=genes, **kw)

    monkeypatch.setattr(evaluate, "map_cells_to_space", spy)
    df = nsi.cross_validate(ref, spa, folds=4, seed=0, epochs=30)
    assert len(calls) == 4
    for f, train in enumerate(calls):
        held = set(df.loc[df["fold"] == f, "gene"])
        assert held and not (held & set(train))
        assert len(held) + len(train) == spa.n_vars
    assert sorted(df["gene"]) == sorted(ref.var_names[: spa.n_vars])
    assert {"gene", "fold", "pearson", "cosine", "spearman"} <= set(df.columns)


def test_cross_validation_beats_chance_on_synthetic(synthetic):
    ref, spa = synthetic
    df = nsi.cross_validate(ref, spa, folds=3, seed=0, epochs=200)
    assert np.nanmedian(df["pearson"]) > 0.3


def test_cross_validation_on_real_pair(merfish_pair):
    ref, spa = merfish_pair
    df = nsi.cross_validate(ref, spa, folds=5, seed=0, epochs=100)
    s = nsi.summarize_cv(df)
    assert s["n_genes"] == 134
    assert 0.05 < s["median_pearson"] < 0.9


def test_validate_cell_types(merfish):
    ref, spa = merfish
    r = nsi.map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=100)
    df = nsi.validate_cell_types(r, markers=["Gad1", "Slc17a6", "Mbp", "Cbln2", "NotAGene"])
    assert set(df["gene"]) == {"Gad1", "Slc17a6", "Cbln2"}
    vals = df[["measured", "predicted"]].to_numpy()
    assert np.nanmin(vals) >= 0 and np.nanmax(vals) <= 1
    # measured and predicted cell-type profiles of these markers agree
    for _, g in df.groupby("gene"):
        assert np.corrcoef(g["measured"], g["predicted"])[0, 1] > 0.5
    df2 = nsi.validate_cell_types(result_to_anndata(r))
    assert len(df2) > 0
    with pytest.raises(InputError, match="cell type column"):
        nsi.validate_cell_types(r, markers=["Gad1"], cell_type_key="nope")


def test_sorted_gene_folds_are_kfold_blocks_of_sorted_names():
    """Li et al. 2022's folds: scikit-learn KFold without shuffling over the sorted genes."""
    from sklearn.model_selection import KFold

    genes = [f"G{i}" for i in (7, 3, 11, 0, 5, 9, 2, 10, 1, 4, 8, 6, 12)] + ["a1", "B2"]
    folds = gene_folds(genes, 4, seed=123, order="sorted")
    ordered = sorted(genes, key=str.lower)
    expected = [[ordered[i] for i in test] for _, test in KFold(n_splits=4).split(ordered)]
    assert folds == expected
    assert gene_folds(genes, 4, seed=0, order="sorted") == folds  # the seed plays no part
    with pytest.raises(InputError, match="fold order 'shuffled' is not known"):
        gene_folds(genes, 4, order="shuffled")


def test_cross_validation_protocol_is_reproducible(merfish_pair):
    """--transform normalize_log1p with sorted folds: the same table twice, folds as stated."""
    ref, spa = merfish_pair
    kw = {"folds": 5, "fold_order": "sorted", "transform": "normalize_log1p"}
    a = nsi.cross_validate(ref, spa, **kw)
    b = nsi.cross_validate(ref, spa, **kw)
    assert a.equals(b)
    shared = list(a.sort_values(["fold", "gene"])["gene"])
    folds = gene_folds(shared, 5, order="sorted")
    for f, held in enumerate(folds):
        assert set(a.loc[a["fold"] == f, "gene"]) == set(held)
    assert np.nanmedian(a["pearson"]) > 0.25  # the ensemble on the published pair


def test_intervals_are_scored_only_when_asked_and_accuracy_is_the_same(merfish_pair, monkeypatch):
    """Issue 14: the held-out genes' imputation does not use the calibration, so the default
    cross-validation skips it; ``uncertainty=True`` calibrates each fold and scores the
    intervals, with the same held-out scores."""
    from napari_spatial_impute.core import mapping

    ref, spa = merfish_pair
    calls = []
    real = mapping.calibrate
    monkeypatch.setattr(mapping, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = nsi.cross_validate(ref, spa, folds=4, seed=0)
    assert calls == [] and not {"coverage_90", "predicted_pearson"} & set(plain.columns)
    scored = nsi.cross_validate(ref, spa, folds=4, seed=0, uncertainty=True)
    assert len(calls) == 4
    assert {"coverage_90", "coverage_67", "width_90", "predicted_pearson"} <= set(scored.columns)
    cols = ["gene", "fold", "pearson", "cosine", "spearman", "n_training_genes", "sparsity_sp"]
    assert scored[cols].equals(plain[cols])


def test_cross_validation_does_not_depend_on_torch_threads(merfish_pair):
    """Small maps run on one torch thread whatever torch's setting (issue 14): same table."""
    import torch

    ref, spa = merfish_pair
    before = torch.get_num_threads()
    tables = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            tables.append(nsi.cross_validate(ref, spa, folds=3, seed=0, uncertainty=True))
            assert torch.get_num_threads() == n  # restored after each map
    finally:
        torch.set_num_threads(before)
    assert tables[0].equals(tables[1])


def _log_normalised(X: np.ndarray) -> np.ndarray:
    """normalize_log1p by hand: each cell to the median total, then log1p."""
    totals = X.sum(1)
    return np.log1p(X * (np.median(totals[totals > 0]) / totals)[:, None])


def _brute_knn(S: np.ndarray, G: np.ndarray, H: np.ndarray, k: int = 10) -> np.ndarray:
    """Each row of G: the mean of H over the k rows of S most cosine-similar (ties: lower index)."""
    Sn = S / np.linalg.norm(S, axis=1, keepdims=True)
    Gn = G / np.linalg.norm(G, axis=1, keepdims=True)
    sims = Gn @ Sn.T
    out = np.empty((G.shape[0], H.shape[1]))
    for i in range(G.shape[0]):
        nearest = sorted(range(S.shape[0]), key=lambda j: (-sims[i, j], j))[:k]
        out[i] = H[nearest].mean(0)
    return out


def test_knn_predict_is_a_brute_force_knn():
    rng = np.random.default_rng(3)
    S, G, H = rng.random((40, 6)), rng.random((25, 6)), rng.random((40, 3))
    for chunk in (None, 7):  # one block, and blocks of spatial cells
        np.testing.assert_allclose(
            evaluate.knn_predict(S, G, H, chunk=chunk), _brute_knn(S, G, H), rtol=1e-6
        )
    np.testing.assert_allclose(evaluate.knn_predict(S, G, H, k=3), _brute_knn(S, G, H, k=3))
    # fewer reference cells than k: the mean of all of them
    np.testing.assert_allclose(
        evaluate.knn_predict(S[:4], G, H[:4]), np.tile(H[:4].mean(0), (25, 1))
    )
    # duplicated reference cells (tied similarities across the k-th place)
    Sd, Hd = np.repeat(S[:8], 3, axis=0), np.repeat(H[:8], 3, axis=0)
    np.testing.assert_allclose(evaluate.knn_predict(Sd, G, Hd), _brute_knn(Sd, G, Hd), rtol=1e-6)


def test_baselines_equal_hand_computations(synthetic):
    """size_pearson: Pearson of each spatial cell's total over the training genes (values as
    given) with the measured held-out gene (log-normalised by ``auto``); knn_pearson: the
    brute-force 10-NN mean on the log-normalised values."""
    ref, spa = synthetic
    df = nsi.cross_validate(ref, spa, folds=3, seed=0)
    assert {"size_pearson", "knn_pearson"} <= set(df.columns)
    raw_sp = spa.X.toarray().astype(np.float64)
    raw_ref = ref.X.toarray().astype(np.float64)
    log_sp, log_ref = _log_normalised(raw_sp), _log_normalised(raw_ref)
    ref_col = {g: j for j, g in enumerate(ref.var_names)}
    sp_col = {g: j for j, g in enumerate(spa.var_names)}
    for _, fold in df.groupby("fold"):
        held = list(fold["gene"])
        train = [g for g in spa.var_names if g not in {h.lower() for h in held}]
        assert (fold["n_training_genes"] == len(train)).all()  # no gene dropped from training
        size = raw_sp[:, [sp_col[g] for g in train]].sum(1)
        knn = _brute_knn(
            log_ref[:, [ref_col[g.capitalize()] for g in train]],
            log_sp[:, [sp_col[g] for g in train]],
            log_ref[:, [ref_col[h] for h in held]],
        )
        for i, h in enumerate(held):
            measured = log_sp[:, sp_col[h.lower()]]
            row = fold.iloc[i]
            assert row["size_pearson"] == pytest.approx(np.corrcoef(size, measured)[0, 1], abs=1e-5)
            assert row["knn_pearson"] == pytest.approx(
                np.corrcoef(knn[:, i], measured)[0, 1], abs=1e-5
            )
    s = nsi.summarize_cv(df)
    assert s["median_size_pearson"] == pytest.approx(np.nanmedian(df["size_pearson"]))
    assert s["median_knn_pearson"] == pytest.approx(np.nanmedian(df["knn_pearson"]))
    # optional: without baselines, no columns and the same method scores
    plain = nsi.cross_validate(ref, spa, folds=3, seed=0, baselines=False)
    assert not {"size_pearson", "knn_pearson"} & set(plain.columns)
    assert "median_size_pearson" not in nsi.summarize_cv(plain)
    assert plain["pearson"].equals(df["pearson"])


def test_size_baseline_on_counts_proportional_to_cell_size():
    """Raw counts that carry only cell size: scored as given (``none``) the size baseline is
    high; the default ``auto`` normalises the size away."""
    ref, spa = size_pair(counts=True)
    raw = nsi.summarize_cv(nsi.cross_validate(ref, spa, folds=4, seed=0, transform="none"))
    auto = nsi.summarize_cv(nsi.cross_validate(ref, spa, folds=4, seed=0))
    assert raw["median_size_pearson"] > 0.7
    assert abs(auto["median_size_pearson"]) < 0.3
    assert auto["median_pearson"] < 0.2  # nothing but size to impute


def test_default_transform_is_auto(merfish_pair):
    """The default scores log-normalised values of raw counts: the same table as
    ``normalize_log1p`` on this raw-count pair, and not the raw-value table."""
    ref, spa = merfish_pair
    kw = {"folds": 3, "seed": 0, "baselines": False}
    default = nsi.cross_validate(ref, spa, **kw)
    assert default.equals(nsi.cross_validate(ref, spa, transform="normalize_log1p", **kw))
    assert not default["pearson"].equals(
        nsi.cross_validate(ref, spa, transform="none", **kw)["pearson"]
    )
