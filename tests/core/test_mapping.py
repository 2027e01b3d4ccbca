"""The mapping engine: reproducibility, modes, densities, callbacks, cancel, devices, memory."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import napari_spatial_impute as nsi
from napari_spatial_impute import InputError, InputWarning, MappingCancelled, MemoryEstimateError
from napari_spatial_impute.core.engine import resources
from napari_spatial_impute.core.project import project_genes


def test_seeded_runs_are_reproducible(synthetic):
    ref, spa = synthetic
    a = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=30, seed=3)
    b = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=30, seed=3)
    c = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=30, seed=4)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert not np.allclose(a.probabilities, c.probabilities)


def test_training_improves_score_and_keeps_history(synthetic):
    ref, spa = synthetic
    r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=200, seed=0, tol=0)
    h = r.history["main_loss"]
    assert len(h) == 200
    assert h[-1] > h[0] + 0.05
    assert r.probabilities.shape == (ref.n_obs, spa.n_obs)
    np.testing.assert_allclose(r.probabilities.sum(1), 1.0, rtol=1e-5)
    assert set(r.train_genes_df.columns) == {
        "train_score",
        "sparsity_sc",
        "sparsity_sp",
        "sparsity_diff",
    }
    assert r.training_score == pytest.approx(r.train_genes_df["train_score"].mean())
    # density prior by default: uniform, and the KL term is recorded and small at the end
    assert r.params["density"] == "uniform"
    assert r.history["kl_reg"][-1] < r.history["kl_reg"][0]


def test_callback_and_cancel(synthetic):
    ref, spa = synthetic
    seen = []
    nsi.map_cells_to_space(ref, spa, method="tangram", epochs=7, callback=seen.append)
    assert [i.epoch for i in seen] == list(range(1, 8))
    assert all(np.isfinite(i.score) for i in seen)

    flag = threading.Event()

    def stop_at_3(info):
        if info.epoch == 3:
            flag.set()

    with pytest.raises(MappingCancelled, match="after 3 of 50"):
        nsi.map_cells_to_space(
            ref, spa, method="tangram", epochs=50, callback=stop_at_3, cancel=flag
        )
    with pytest.raises(MappingCancelled):
        nsi.map_cells_to_space(ref, spa, method="tangram", epochs=5, cancel=lambda: True)


@pytest.mark.parametrize("density", ["uniform", "rna_count_based", "none"])
def test_density_priors(synthetic, density):
    ref, spa = synthetic
    r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=40, density=density)
    assert r.params["density"] == density
    assert np.isnan(r.history["kl_reg"]).all() == (density == "none")


def test_custom_density_vector(synthetic):
    ref, spa = synthetic
    vec = np.linspace(1, 2, spa.n_obs)
    r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=300, density=vec)
    assert r.params["density"] == "custom"
    m = r.probabilities.sum(0) / ref.n_obs
    # the learned density follows the prior: cells with more weight get more mass
    assert np.corrcoef(m, vec)[0, 1] > 0.5
    with pytest.raises(InputError, match="one per spatial cell"):
        nsi.map_cells_to_space(ref, spa, method="tangram", epochs=1, density=vec[:-1])


def test_clusters_mode(synthetic):
    ref, spa = synthetic
    r = nsi.map_cells_to_space(
        ref, spa, method="tangram", mode="clusters", cluster_key="cell_type", epochs=200
    )
    assert r.probabilities.shape == (3, spa.n_obs)
    assert r.unit_names == ["T0", "T1", "T2"]
    np.testing.assert_allclose(r.unit_weights.sum(), 1.0, rtol=1e-6)
    with pytest.raises(InputError, match="needs a cluster key"):
        nsi.map_cells_to_space(ref, spa, method="tangram", mode="clusters", epochs=1)


def test_constrained_mode_runs(synthetic):
    ref, spa = synthetic
    r = nsi.map_cells_to_space(
        ref, spa, method="tangram", mode="constrained", target_count=30, epochs=50
    )
    assert r.filter_probabilities is not None and r.filter_probabilities.shape == (ref.n_obs,)
    assert len(r.history["count_reg"]) == 50


def test_bad_arguments_are_one_line_errors(synthetic):
    ref, spa = synthetic
    with pytest.raises(InputError, match="mode 'nope'"):
        nsi.map_cells_to_space(ref, spa, method="tangram", mode="nope", epochs=1)
    with pytest.raises(InputError, match="columns there are: cell_type"):
        nsi.map_cells_to_space(ref, spa, method="tangram", cluster_key="celltype", epochs=1)
    with pytest.raises(InputError, match="density 'weird'"):
        nsi.map_cells_to_space(ref, spa, method="tangram", density="weird", epochs=1)
    with pytest.raises(InputError, match="lambda_g1 cannot be 0"):
        nsi.map_cells_to_space(ref, spa, method="tangram", lambda_g1=0, epochs=1)


def test_cuda_request_without_gpu(synthetic):
    ref, spa = synthetic
    if torch.cuda.is_available():
        r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=20, device="cuda")
        cpu = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=20, device="cpu")
        assert abs(r.training_score - cpu.training_score) < 1e-3
    else:
        with pytest.raises(InputError, match="no CUDA GPU"):
            nsi.map_cells_to_space(ref, spa, method="tangram", epochs=1, device="cuda")
        r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=1, device="auto")
        assert r.params["device"] == "cpu"


def test_memory_refused_before_allocation(synthetic, monkeypatch):
    ref, spa = synthetic
    monkeypatch.setattr(resources, "available_bytes", lambda device: 1024)
    with pytest.raises(MemoryEstimateError) as e:
        nsi.map_cells_to_space(ref, spa, method="tangram", epochs=1)
    msg = str(e.value)
    assert "needs about" in msg and "--mode clusters" in msg and "\n" not in msg


def test_estimate_at_seed_scale_is_plausible():
    est = resources.estimate_dense_mapping(9448, 40864, 132)
    # logits + two Adam moments + final probabilities: 4 x 1.44 GiB
    assert 5.5 < est.total_bytes / resources.GIB < 6.5


def test_transform_normalize_log1p(synthetic):
    ref, spa = synthetic
    r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=20, transform="normalize_log1p")
    assert r.params["transform"] == "normalize_log1p"
    assert r.reference_values.X.max() < np.log1p(ref.X.max() * 100)
    with pytest.raises(InputError, match="transform 'log'"):
        nsi.map_cells_to_space(ref, spa, method="tangram", epochs=1, transform="log")


def test_early_stopping_with_tol(synthetic):
    ref, spa = synthetic
    r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=2000, tol=1e-4, patience=20)
    assert r.params["epochs_done"] < 2000 and r.params["stop_reason"] == "plateau"
    h = r.history["main_loss"]
    assert len(h) == r.params["epochs_done"]
    assert h[-1] - h[-21] < 1e-4
    assert np.all(h[20:-1] - h[:-21] >= 1e-4)  # not earlier


def test_the_default_tangram_map_stops_at_a_plateau(merfish_pair):
    """Issue 14: by default training stops once the score gains under 0.001 over 50 epochs."""
    ref, spa = merfish_pair
    r = nsi.map_cells_to_space(ref, spa, method="tangram", engine="exact")
    p = r.params
    assert (p["tol"], p["patience"], p["epochs"]) == (1e-3, 50, 1000)
    assert p["stop_reason"] == "plateau" and 50 < p["epochs_done"] < 1000
    h = r.history["main_loss"]
    assert len(h) == p["epochs_done"] and h[-1] - h[-51] < 1e-3
    assert np.all(h[50:-1] - h[:-51] >= 1e-3)  # the first plateau, not a later one


@pytest.mark.parametrize("tol", [0, None])
def test_tol_0_or_unset_runs_every_epoch(synthetic, tol):
    ref, spa = synthetic
    r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=120, tol=tol, patience=5)
    assert r.params["epochs_done"] == 120 and r.params["stop_reason"] == "epochs"
    assert r.params["tol"] == (0.0 if tol == 0 else -1.0)  # unset is stored as -1


def _costs(lean_s: float, exact_s: float):
    from napari_spatial_impute.core.engine.mapper import EngineCosts

    return EngineCosts(lean_s, 0.0, exact_s, (7,), 7)


def test_auto_engine_runs_the_one_measured_cheaper(merfish_pair, monkeypatch):
    """Issue 14: auto chooses by the measured cost per epoch, and records the costs."""
    from napari_spatial_impute.core.maps import tangram as mapping

    monkeypatch.setattr(mapping, "SMALL_PAIRS", 0)  # the pair is small: the exact engine runs
    ref, spa = merfish_pair
    seen = []

    def fake(*args, **kwargs):
        seen.append(kwargs)
        return cost

    monkeypatch.setattr(mapping, "probe_engine_costs", fake)
    for cost, engine in ((_costs(0.001, 0.007), "lean"), (_costs(0.009, 0.003), "exact")):
        r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=3)
        assert r.params["engine"] == engine and r.params["engine_note"] == cost.describe()
        assert sp.issparse(r.probabilities) == (engine == "lean")
        assert r.params["candidates"] == (50 if engine == "lean" else 0)
    assert len(seen) == 2


def test_auto_gives_the_result_of_the_engine_it_chose(merfish_pair, monkeypatch):
    """The probe epochs are thrown away: auto's map is the chosen engine's map, same seed."""
    from napari_spatial_impute.core.maps import tangram

    monkeypatch.setattr(tangram, "SMALL_PAIRS", 0)
    ref, spa = merfish_pair
    auto = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=15, seed=2)
    assert auto.params["engine_note"].startswith("auto chose the ")
    same = nsi.map_cells_to_space(
        ref, spa, method="tangram", epochs=15, seed=2, engine=auto.params["engine"]
    )
    a, b = auto.probabilities, same.probabilities
    if sp.issparse(a):
        assert (a != b).nnz == 0
    else:
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(auto.history["main_loss"], same.history["main_loss"])


def test_auto_measures_only_where_the_lean_engine_can_save_work(synthetic, monkeypatch):
    from napari_spatial_impute.core.maps import tangram as mapping

    monkeypatch.setattr(mapping, "SMALL_PAIRS", 0)

    def never(*args, **kwargs):
        raise AssertionError("no probe expected")

    monkeypatch.setattr(mapping, "probe_engine_costs", never)
    ref, spa = synthetic  # 60 x 40: 50 candidates per spatial cell keep most pairs
    r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=2)
    assert r.params["engine"] == "exact" and r.params["engine_note"] == ""
    r = nsi.map_cells_to_space(
        ref, spa, method="tangram", epochs=2, mode="clusters", cluster_key="cell_type"
    )
    assert r.params["engine"] == "exact"
    # initial logits are a dense mapping: the exact engine runs them, with no probe
    init = np.zeros((ref.n_obs, spa.n_obs), dtype=np.float32)
    r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=2, candidates=5, init=init)
    assert r.params["engine"] == "exact"
    r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=0, candidates=5)
    assert r.params["engine"] == "exact" and r.params["stop_reason"] == "epochs"
    monkeypatch.setattr(mapping, "probe_engine_costs", lambda *a, **k: _costs(1e-3, 2e-3))
    r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=2, candidates=5)
    assert r.params["engine"] == "lean"  # 5 candidates: worth measuring


def test_auto_runs_lean_when_the_exact_mapping_would_not_fit(synthetic, monkeypatch):
    from napari_spatial_impute.core.maps import tangram as mapping

    monkeypatch.setattr(mapping, "SMALL_PAIRS", 0)
    ref, spa = synthetic
    monkeypatch.setattr(mapping, "available_bytes", lambda dev: 1024)
    monkeypatch.setattr(mapping, "probe_engine_costs", lambda *a, **k: _costs(1.0, 1e-6))
    r = nsi.map_cells_to_space(
        ref, spa, method="tangram", epochs=2, candidates=5, check_memory=False
    )
    assert r.params["engine"] == "lean"
    assert r.params["engine_note"].startswith("auto chose the lean engine: the exact engine")
    assert "GiB is free" in r.params["engine_note"]


def test_csr_array_and_dense_inputs_give_the_same_map(synthetic):
    ref, spa = synthetic
    a = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=20, seed=1)
    ref2, spa2 = ref.copy(), spa.copy()
    ref2.X = sp.csr_array(ref.X)
    spa2.X = spa.X.toarray()
    b = nsi.map_cells_to_space(ref2, spa2, method="tangram", epochs=20, seed=1)
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(project_genes(a).X, project_genes(b).X, rtol=1e-4, atol=1e-6)
    assert a.params["reference_values"] == "raw counts"


# ------------------------------------------------------------------------ the ensemble map
def test_default_map_is_the_ensemble_and_trains_nothing(merfish_pair):
    """Issue 15: the default spends no epochs on a map whose output it would not use."""
    ref, spa = merfish_pair
    seen = []
    r = nsi.map_cells_to_space(ref, spa, epochs=500, callback=seen.append)
    assert seen == [] and r.params["method"] == "ensemble" and r.params["epochs_done"] == 0
    assert r.params["stop_reason"] == "not trained"
    assert all(len(v) == 0 for v in r.history.values())
    assert r.params["n_pairs"] == r.neighbours.nnz == r.probabilities.nnz
    assert r.calibration is not None and r.timings["train_s"] == 0
    assert 0 < r.training_score < 1


def test_ensemble_map_can_be_cancelled(merfish_pair):
    ref, spa = merfish_pair
    with pytest.raises(MappingCancelled, match="cancelled after 0 of 750 spatial cells"):
        nsi.map_cells_to_space(ref, spa, cancel=lambda: True)


def test_tangram_only_settings_with_the_ensemble_warn(merfish_pair):
    ref, spa = merfish_pair
    with pytest.warns(InputWarning, match="engine applies to the Tangram map only"):
        r = nsi.map_cells_to_space(ref, spa, engine="lean", uncertainty=False)
    assert r.params["method"] == "ensemble"


def test_ensemble_memory_is_checked_before_any_work(merfish_pair, monkeypatch):
    from napari_spatial_impute.core.engine import resources

    ref, spa = merfish_pair
    monkeypatch.setattr(resources, "available_bytes", lambda device: 10 * 1024**2)
    with pytest.raises(InputError, match="needs about .* map one FOV or section at a time"):
        nsi.map_cells_to_space(ref, spa)


def test_ensemble_ignores_and_records_no_tangram_settings(merfish_pair):
    """A Tangram-only device, density or weight neither stops nor is recorded for the ensemble."""
    from napari_spatial_impute.core.settings import TANGRAM_ONLY, MappingSettings

    ref, spa = merfish_pair
    with pytest.warns(InputWarning, match="device applies to the Tangram map only"):
        r = nsi.map_cells_to_space(
            ref,
            spa,
            method="ensemble",
            device="cuda:7",
            density="none",
            lambda_d=2.0,
            epochs=3,
            uncertainty=False,
        )
    defaults = MappingSettings()
    for name in TANGRAM_ONLY:
        assert MappingSettings.from_params(r.params).__getattribute__(name) == getattr(
            defaults, name
        ), name
