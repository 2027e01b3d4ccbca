"""method="auto": the user's own held-out training genes choose the map (issue 22)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import napari_spatial_impute as nsi
from _data import make_profile_pair
from napari_spatial_impute import InputWarning
from napari_spatial_impute.core.export import write_result
from napari_spatial_impute.core.maps import choose, registry
from napari_spatial_impute.core.maps.problem import prepare_problem
from napari_spatial_impute.core.metrics import pearson_per_gene
from napari_spatial_impute.core.project import project_genes
from napari_spatial_impute.core.settings import MappingSettings


def _outer(ref: ad.AnnData, spa: ad.AnnData, held: list[str], **kw) -> tuple[float, object]:
    """Median Pearson of ``held`` genes (never trained on) imputed by a map of the other genes."""
    train = [g for g in map(str, ref.var_names) if g not in held]
    r = nsi.map_cells_to_space(ref, spa, genes=train, uncertainty=False, **kw)
    assert not set(held) & set(r.genes.training_reference)
    pred = project_genes(r, held).X
    X = spa[:, held].X
    measured = X.toarray() if sp.issparse(X) else np.asarray(X)
    return float(np.nanmedian(pearson_per_gene(pred, measured))), r


def test_auto_picks_the_tangram_map_where_the_ensemble_loses():
    """One reference cell per type: the ensemble blends types, the Tangram map does not."""
    ref, spa = make_profile_pair()
    held = [f"G{i}" for i in range(30, 40)]
    ens, _ = _outer(ref, spa, held, method="ensemble")
    tan, _ = _outer(ref, spa, held, method="tangram")
    assert tan > ens + 0.1  # the ensemble loses on genes no map saw
    auto, r = _outer(ref, spa, held)
    assert r.params["method"] == "tangram" and r.choice["chosen"] == "tangram"
    assert auto == pytest.approx(tan)
    scores = dict(zip(r.choice["candidates"], r.choice["inner_median_pearson"], strict=True))
    assert scores["tangram"] > scores["ensemble"]
    assert r.params["map_choice"].startswith("map: tangram, chosen on ")


def test_auto_keeps_the_ensemble_where_it_wins(merfish_pair):
    ref, spa = merfish_pair
    held = [str(g) for g in ref.var_names[::10]]
    ens, _ = _outer(ref, spa, held, method="ensemble")
    tan, _ = _outer(ref, spa, held, method="tangram")
    assert ens > tan
    auto, r = _outer(ref, spa, held)
    assert r.params["method"] == "ensemble" and r.neighbours is not None
    assert auto == pytest.approx(ens)
    assert r.params["stop_reason"] == "not trained" and r.params["epochs"] == 1000


def test_every_promise_comes_from_the_chosen_map(tmp_path):
    """Cluster probabilities, mapped cell, intervals and reliability of a chosen Tangram map."""
    ref, spa = make_profile_pair(per_type=2)
    r = nsi.map_cells_to_space(ref, spa, cluster_key="cell_type")
    assert r.params["method"] == "tangram" and r.calibration is not None
    path = tmp_path / "r.h5ad"
    write_result(r, path)
    out = ad.read_h5ad(path)
    info = out.uns["spatial_impute"]
    assert info["map_choice"]["chosen"] == "tangram"
    assert list(info["map_choice"]["candidates"]) == ["ensemble", "tangram"]
    assert info["projection"] == "probabilistic"
    assert {"interval_90_halfwidth", "interval_67_halfwidth"} <= set(out.layers)
    assert np.isfinite(out.var["predicted_pearson"]).all()
    # the mapped cell is the Tangram map's largest weight, and types are found
    P = np.asarray(r.probabilities)
    assert (out.obs["mapped_unit"].astype(str) == ref.obs_names[P.argmax(0)]).all()
    agree = (out.obs["cell_type_predicted"].astype(str) == spa.obs["true_type"]).mean()
    assert agree > 0.9


def test_held_out_genes_never_reach_the_inner_maps(merfish_pair, monkeypatch):
    ref, spa = merfish_pair
    seen: list[tuple[str, list[str]]] = []
    for name in choose.CANDIDATES:
        kind = registry.get_map(name)
        real = kind.build

        def spy(problem, *, _real=real, _name=name, **kw):
            seen.append((_name, list(problem.genes)))
            return _real(problem, **kw)

        monkeypatch.setattr(kind, "build", spy)
    r = nsi.map_cells_to_space(ref, spa, uncertainty=False)
    held = set(r.choice["held_genes"])
    inner = [genes for _, genes in seen[:2]]
    assert [n for n, _ in seen] == ["ensemble", "tangram", r.params["method"]]
    assert all(not held & set(g) for g in inner)
    assert len(held) + len(inner[0]) == len(r.genes.training_reference)
    assert set(seen[2][1]) == set(r.genes.training_reference)  # the final map: every gene


def test_an_explicit_method_makes_no_choice(merfish_pair, monkeypatch):
    ref, spa = merfish_pair

    def never(*a, **k):
        raise AssertionError("no choice expected")

    monkeypatch.setattr("napari_spatial_impute.core.mapping.choose_map", never)
    r = nsi.map_cells_to_space(ref, spa, method="ensemble", uncertainty=False)
    assert r.choice is None and r.params["map_choice"] == ""
    r = nsi.map_cells_to_space(ref, spa, mode="clusters", cluster_key="cell_type", epochs=5)
    assert r.params["method"] == "tangram" and r.choice is None


def test_too_few_training_genes_make_the_ensemble_and_say_why(merfish_pair):
    ref, spa = merfish_pair
    r = nsi.map_cells_to_space(ref, spa, genes=list(ref.var_names[:5]), uncertainty=False)
    assert r.params["method"] == "ensemble"
    assert "too few to hold some out" in r.choice["reason"]
    assert "too few" in r.params["map_choice"]


def test_weak_imputation_warns_with_the_figure(merfish_pair):
    """Spatial values unrelated to the reference: the warning names the figure and what to try."""
    ref, spa = merfish_pair
    rng = np.random.default_rng(0)
    noise = spa.copy()
    noise.X = sp.csr_matrix(rng.poisson(2.0, size=spa.shape).astype(np.float32))
    with pytest.warns(InputWarning, match=r"imputation is weak .* median Pearson of -?0\.\d{3}"):
        r = nsi.map_cells_to_space(ref, noise, uncertainty=False)
    assert r.choice["warning"].startswith("imputation is weak")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        good = nsi.map_cells_to_space(ref, spa, uncertainty=False)
    assert good.choice["warning"] == ""


def test_a_chosen_tangram_map_reuses_the_measured_engine(merfish_pair, monkeypatch):
    """The inner map measured the engines; the map of all genes does not probe again."""
    from napari_spatial_impute.core.engine.mapper import EngineCosts
    from napari_spatial_impute.core.maps import tangram

    calls = []

    def fake(*a, **k):
        calls.append(1)
        return EngineCosts(0.001, 0.0, 0.004, (5,), 5)

    monkeypatch.setattr(tangram, "SMALL_PAIRS", 0)
    monkeypatch.setattr(tangram, "probe_engine_costs", fake)
    ref, spa = make_profile_pair(n_types=30)
    r = nsi.map_cells_to_space(ref, spa, candidates=5)
    assert r.params["method"] == "tangram" and r.params["engine"] == "lean"
    assert len(calls) == 1  # inner map only (the calibration reuses the engine too)
    assert r.params["engine_note"].endswith("(measured on the automatic choice's inner map)")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 300), seed=st.integers(0, 2**32 - 1))
def test_held_genes_are_a_seeded_proper_subset(n, seed):
    genes = [f"g{i}" for i in range(n)]
    held = choose.held_genes(genes, seed)
    assert 1 <= len(held) < n and held == sorted(set(held))
    assert held == choose.held_genes(genes, seed)
    assert abs(len(held) - n / 4) <= 1 or n < 4


def test_choice_cells_are_a_seeded_sorted_subset():
    assert choose.choice_cells(100, 0, limit=200) is None
    c = choose.choice_cells(10_000, 3, limit=500)
    assert c is not None and len(c) == 500 and (np.diff(c) > 0).all()
    np.testing.assert_array_equal(c, choose.choice_cells(10_000, 3, limit=500))


def test_size_baseline_is_the_cell_total(merfish_pair):
    """By hand: each held-out gene against the cell's total over the other training genes."""
    ref, spa = merfish_pair
    problem = prepare_problem(ref, spa, MappingSettings().validate())
    held = [0, 5, 9]
    _, G = problem.similarity()
    got = choose.size_baseline(problem.G, G, held)
    total = np.delete(problem.G, held, axis=1).sum(1, dtype=np.float64)
    for j, h in enumerate(held):
        assert got[j] == pytest.approx(np.corrcoef(total, G[:, h])[0, 1], abs=1e-9)


def test_cross_validation_does_not_repeat_the_weak_warning_per_fold(merfish_pair):
    """evaluate's own size baseline says it once; each fold's choice stays quiet."""
    ref, spa = merfish_pair
    rng = np.random.default_rng(1)
    noise = spa.copy()
    noise.X = sp.csr_matrix(rng.poisson(2.0, size=spa.shape).astype(np.float32))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        df = nsi.cross_validate(ref, noise, folds=3, seed=0)
    assert not [w for w in seen if "imputation is weak" in str(w.message)]
    assert np.nanmedian(df["pearson"]) < 0.1  # weak indeed


def test_the_best_map_is_chosen_gene_by_gene():
    """Paired: the median per-gene gain over the ensemble decides; no gain keeps the ensemble."""
    ens = np.array([0.30, 0.31, 0.32, 0.05, 0.06])
    # medians equal (0.30 vs 0.30 rounded), but the Tangram map is better on most genes
    better = ens + np.array([0.01, 0.01, 0.01, -0.2, 0.24])
    assert choose._best({"ensemble": ens, "tangram": better}, ["ensemble", "tangram"]) == "tangram"
    worse = ens - 0.01
    assert choose._best({"ensemble": ens, "tangram": worse}, ["ensemble", "tangram"]) == "ensemble"
    same = ens.copy()
    assert choose._best({"ensemble": ens, "tangram": same}, ["ensemble", "tangram"]) == "ensemble"
    nan = np.full(5, np.nan)
    assert choose._best({"ensemble": ens, "tangram": nan}, ["ensemble", "tangram"]) == "ensemble"


def test_processed_references_are_detected_and_said_in_one_line(merfish_pair):
    """A log1p'd or z-scored reference is compared as given; raw spatial counts are normalised."""
    ref, spa = merfish_pair
    logged = ref.copy()
    logged.X = logged.X.log1p()
    r = nsi.map_cells_to_space(logged, spa, method="ensemble", uncertainty=False)
    line = r.params["values_note"]
    assert "\n" not in line and line.startswith("values: reference log-transformed, spatial raw")
    assert "the reference as given and the spatial counts log-normalised" in line
    scaled = ref.copy()
    X = np.log1p(scaled.X.toarray())
    scaled.X = ((X - X.mean(0)) / (X.std(0) + 1e-6)).astype(np.float32)
    r = nsi.map_cells_to_space(scaled, spa, uncertainty=False)
    assert r.params["reference_values"] == "scaled (negative values)"
    assert np.isfinite(project_genes(r, ["Gad1"]).X).all()
