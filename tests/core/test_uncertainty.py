"""Prediction intervals and per-gene reliability."""

from __future__ import annotations

import numpy as np
import pytest

import napari_spatial_impute as nsi
from napari_spatial_impute.core import evaluate
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.core.project import project_genes
from napari_spatial_impute.core.uncertainty import _conformal_quantile, intervals, reliability


@pytest.fixture
def result(synthetic):
    ref, spa = synthetic
    return nsi.map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=30, seed=0)


def test_conformal_quantile():
    scores = np.arange(1, 101, dtype=float)  # 1..100
    assert _conformal_quantile(scores, 0.9) == 91  # ceil(101 * 0.9) = 91st smallest
    assert _conformal_quantile(scores, 0.999) == 100
    assert _conformal_quantile(np.array([]), 0.9) == np.inf


def test_intervals_monotone_in_level_and_stored(result):
    cal = result.calibration
    assert cal is not None and cal.levels == (0.9, 0.67)
    hw = intervals(result, cal)
    assert hw[0.9].shape == (result.spatial.n_obs, result.reference.n_vars)
    assert np.all(hw[0.9] >= hw[0.67]) and np.all(hw[0.67] > 0)
    out = result_to_anndata(result)
    np.testing.assert_array_equal(out.layers["interval_90_halfwidth"], hw[0.9])
    assert "predicted_pearson" in out.var and out.obs["uncertainty_group"].dtype == "category"
    assert set(out.uns["spatial_impute"]["uncertainty"]["calibration_genes"]) <= set(
        result.genes.training_reference
    )


def test_calibration_is_reproducible(synthetic):
    ref, spa = synthetic
    a = nsi.map_cells_to_space(ref, spa, epochs=10, seed=2).calibration
    b = nsi.map_cells_to_space(ref, spa, epochs=10, seed=2).calibration
    np.testing.assert_array_equal(a.quantiles, b.quantiles)
    np.testing.assert_array_equal(a.coef, b.coef)


def test_coverage_columns_are_fractions_of_cells_inside(synthetic, monkeypatch):
    ref, spa = synthetic
    seen = {}
    real = evaluate.map_cells_to_space

    def spy(reference, spatial, *, genes, **kw):
        r = real(reference, spatial, genes=genes, **kw)
        seen[len(seen)] = r
        return r

    monkeypatch.setattr(evaluate, "map_cells_to_space", spy)
    df = nsi.cross_validate(
        ref, spa, folds=3, seed=0, epochs=10, uncertainty=True, transform="none"
    )  # measured as given below
    for f, r in seen.items():
        held = df.loc[df["fold"] == f, "gene"].tolist()
        # no leak: calibration used only the fold's training genes
        assert not set(held) & set(r.calibration.calibration_genes)
        pred = project_genes(r, held).X
        measured = spa[:, [g.lower() for g in held]].X.toarray()
        hw = intervals(r, r.calibration, held)[0.9]
        expected = (np.abs(measured / r.calibration.scale - pred) <= hw).mean(0)
        np.testing.assert_allclose(df.loc[df["fold"] == f, "coverage_90"], expected)
    s = nsi.summarize_cv(df)
    assert 0 <= s["mean_coverage_67"] <= s["mean_coverage_90"] <= 1
    assert "reliability_spearman" in s


def test_coverage_near_nominal_on_real_pair(merfish_pair):
    """5 folds over genes on the MERFISH pair: intervals cover held-out genes near nominal."""
    ref, spa = merfish_pair
    df = nsi.cross_validate(ref, spa, folds=5, seed=0, epochs=30, uncertainty=True)
    s = nsi.summarize_cv(df)
    assert abs(s["mean_coverage_90"] - 0.90) < 0.05
    assert abs(s["mean_coverage_67"] - 0.67) < 0.06
    assert s["reliability_spearman"] > 0.3


def test_reliability_for_every_gene(result):
    rel = reliability(result, result.calibration)
    assert len(rel) == result.reference.n_vars and np.all(np.abs(rel) <= 1)


def test_calibration_on_a_cell_subset(synthetic, monkeypatch):
    from napari_spatial_impute.core.maps import choose

    ref, spa = synthetic
    monkeypatch.setattr(choose, "CHOICE_CELLS", 15)
    r = nsi.map_cells_to_space(ref, spa, epochs=5)
    cal = r.calibration
    assert cal.groups.shape == (spa.n_obs,)  # groups for every cell
    hw = intervals(r, cal, ["Gene0"])[0.9]
    assert hw.shape == (spa.n_obs, 1) and np.all(np.isfinite(hw))


def test_platform_scale():
    from napari_spatial_impute.core.uncertainty import platform_scale

    rng = np.random.default_rng(0)
    pred = rng.random((50, 6)) + 0.1
    assert platform_scale(pred * 8.0, pred) == pytest.approx(8.0)
    assert platform_scale(np.zeros((3, 2)), np.ones((3, 2))) == 1.0


@pytest.mark.parametrize("n_sp", [1, 2])
def test_no_reliability_model_from_fewer_than_three_cells(merfish_pair, n_sp):
    """Over two cells every cross-validated Pearson is +-1 whatever the prediction (and NaN over
    one): the reliability model then has no evidence and predicts 0 for every gene."""
    ref, spa = merfish_pair
    r = nsi.map_cells_to_space(ref, spa[:n_sp].copy(), cluster_key="cell_type", epochs=5, seed=0)
    cal = r.calibration
    assert np.all(np.isnan(cal.inner_pearson))
    rel = reliability(r, cal)
    np.testing.assert_array_equal(rel.to_numpy(), 0.0)
    hw = intervals(r, cal, ["Gad1", "Slc17a6"])
    assert all(np.all(np.isfinite(h)) and np.all(h > 0) for h in hw.values())
