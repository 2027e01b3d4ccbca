"""Smoke tests of the benchmark scripts: tiny sizes, seconds, no timing asserts.

They check that each script's ``main`` runs end to end with minimal arguments and writes its
tables (into a temporary folder, never into docs/). tangram-sc is optional: without it the
scripts run the other methods only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def _has(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


HAS_TANGRAM = _has("tangram")


def test_simulator_is_seeded_and_sparse():
    common = _load("common")
    a_ref, a_sp = common.simulate_pair(50, 80, 20, seed=3)
    b_ref, b_sp = common.simulate_pair(50, 80, 20, seed=3)
    assert (a_ref.X != b_ref.X).nnz == 0 and (a_sp.X != b_sp.X).nnz == 0
    assert a_sp.obsm["spatial"].shape == (80, 2)
    assert 0.3 < common.sparsity(a_sp) < 0.98


def test_normalize_log1p_matches_protocol():
    import numpy as np
    import scipy.sparse as sp

    common = _load("common")
    ref, _ = common.simulate_pair(30, 10, 12, seed=0)
    out = common.normalize_log1p(ref)
    assert isinstance(out.X, sp.csr_matrix)
    totals = np.asarray(ref.X.sum(1)).ravel()
    back = np.expm1(out.X.toarray()).sum(1)
    target = np.median(totals[totals > 0])
    assert np.allclose(back[totals > 0], target, rtol=1e-4)


def test_accuracy_main_tiny(tmp_path, merfish_pair, monkeypatch):
    acc = _load("accuracy")
    common = sys.modules["common"]
    ref, spa = merfish_pair

    def fake_load(name, root=None):  # the bundled pair; no shared folder needed
        return common.Pair(
            name, common.normalize_log1p(ref), common.normalize_log1p(spa), None, None, "bundled"
        )

    monkeypatch.setattr(common, "load_pair", fake_load)
    methods = ["ours", "knn"] + (["tangram"] if HAS_TANGRAM else [])
    df = acc.main(
        [
            "--datasets",
            "merfish_hypothalamus",
            "--folds",
            "2",
            "--epochs",
            "3",
            "--max-cells",
            "120",
            "--methods",
            *methods,
            "--out-dir",
            str(tmp_path),
            "--image-dir",
            str(tmp_path),
        ]
    )
    assert set(df["method"]).issuperset({"knn"})
    assert any(m.startswith("ours") for m in df["method"])
    per_gene = pd.read_csv(tmp_path / "accuracy_merfish_hypothalamus_per_gene.csv")
    assert per_gene["gene"].nunique() > 100
    if HAS_TANGRAM:
        assert (tmp_path / "bench_accuracy_merfish_hypothalamus.png").exists()


def test_accuracy_annotations_on_cell_split(tmp_path, monkeypatch):
    acc = _load("accuracy")
    common = sys.modules["common"]
    ref, spa = common.simulate_pair(120, 90, 24, seed=1)
    monkeypatch.setattr(
        common,
        "load_pair",
        lambda name, root=None: common.Pair(
            name,
            common.normalize_log1p(ref),
            common.normalize_log1p(spa),
            "cell_type",
            "cell_type",
            "simulated",
        ),
    )
    df = acc.main(
        [
            "--datasets",
            "starmap_mpfc",
            "--folds",
            "2",
            "--epochs",
            "3",
            "--methods",
            "ours",
            "knn",
            "--out-dir",
            str(tmp_path),
            "--image-dir",
            str(tmp_path),
        ]
    )
    assert df["annot_acc"].between(0, 1).all()


def test_speed_main_tiny(tmp_path):
    speed = _load("speed")
    # one worker subprocess (ours, first engine) keeps this fast; tangram-sc is exercised by the
    # in-process parity check
    args = [
        "--sizes",
        "40x60x12:3",
        "--repeats",
        "1",
        "--methods",
        "ours",
        "--threads",
        "1",
        "--parity-size",
        "30x40x10",
        "--parity-epochs",
        "3",
        "--tag",
        "smoke",
        "--out-dir",
        str(tmp_path),
        "--image-dir",
        str(tmp_path),
    ]
    if not HAS_TANGRAM:
        args.append("--no-parity")
    engines = sys.modules["common"].engine_names()
    if engines:
        args += ["--engines", engines[0]]
    summary = speed.main(args)
    assert (summary["status"] == "measured").all()
    assert (tmp_path / "bench_speed_scaling_smoke.png").exists()
    meta = json.loads((tmp_path / "speed_meta_smoke.json").read_text())
    if HAS_TANGRAM:
        par = meta["parity"]
        assert par["at_M0"]["total_loss"]["abs_diff"] < 1e-4


@pytest.mark.skipif(not (_has("napari") and _has("qtpy")), reason="napari/Qt not installed")
@pytest.mark.skipif(
    os.environ.get("QT_QPA_PLATFORM") != "offscreen"
    and not os.environ.get("DISPLAY")
    and shutil.which("Xvfb") is None,
    reason="no display",
)
def test_gui_responsiveness_tiny(tmp_path, qapp):
    gui = _load("gui_responsiveness")
    info = gui.main(
        [
            "--n-ref",
            "40",
            "--n-sp",
            "200",
            "--n-genes",
            "12",
            "--epochs",
            "3",
            "--repeats",
            "1",
            "--genes",
            "1",
            "--out-dir",
            str(tmp_path),
        ]
    )
    phases = {p["phase"] for p in info["phases"]}
    assert any(p.startswith("mapping") for p in phases)
    assert any(p.startswith("adding result layers") for p in phases)
    assert info["driver"].startswith("the plugin's Map widget"), info["driver"]


def test_seed_shape_pairs_have_samples_fovs_and_a_panel(tmp_path):
    import anndata as ad
    import numpy as np

    seed_shape = _load("seed_shape")
    assert (
        seed_shape.main(
            ["--cells", "600", "--fovs", "10", "--samples", "2", "--reference-cells", "80"]
            + ["--genes", "40", "--panel", "12", "--out", str(tmp_path)]
        )
        == 0
    )
    ref = ad.read_h5ad(tmp_path / "reference.h5ad")
    spa = ad.read_h5ad(tmp_path / "spatial.h5ad")
    assert ref.shape == (80, 40) and spa.shape == (600, 12)
    assert set(spa.var_names) <= set(ref.var_names)
    per_sample = spa.obs.groupby("sample", observed=True)["fov"].nunique()
    assert per_sample.to_dict() == {"s0": 5, "s1": 5}
    # the samples share coordinates (sections imaged separately): their extents overlap
    xy = spa.obsm["spatial"]
    spans = [np.ptp(xy[(spa.obs["sample"] == s).to_numpy()], axis=0) for s in ("s0", "s1")]
    assert np.allclose(spans[0], spans[1], rtol=0.2)
    again = seed_shape.make_pair(600, 10, 2, 80, 40, 12)[1]
    np.testing.assert_array_equal(again.obsm["spatial"], xy)
    assert (again.X != spa.X).nnz == 0


def test_candidate_search_tiny(tmp_path, shared_data):
    """Issue 14's candidate-search benchmark: each subcommand at a tiny size."""
    cs = _load("candidate_search")
    out = ["--out-dir", str(tmp_path)]
    shape = cs.main(
        out
        + ["shape", "--n-ref", "400", "--n-sp", "300", "--genes", "30"]
        + ["--work-dir", str(tmp_path / "work")]
    )
    assert set(shape["what"]) == {"ensemble", "lean"}
    assert shape["pair_recall"].between(0, 1).all()
    assert 0 < shape.loc[shape["what"] == "ensemble", "weight_recall"].iloc[0] <= 1 + 1e-6
    spaces = cs.main(out + ["spaces", "--n-ref", "400", "--n-sp", "300", "--genes", "30"])
    assert set(spaces["space"]) == {"raw", "z", "pca", "lean", "lean_reverse"}
    acc = cs.main(
        out + ["accuracy", "--pairs", "merfish_hypothalamus", "--folds", "2", "--max-cells", "300"]
    )
    assert list(acc["variant"]) == ["exact", "approximate", "approximate_stress"]
    assert acc["weight_recall_full_map"].iloc[0] == pytest.approx(1.0)
    for name in ("shape", "shape_summary", "spaces", "accuracy", "accuracy_per_gene"):
        assert (tmp_path / f"candidate_search_{name}.csv").exists(), name


def test_fast_defaults_tiny(tmp_path, merfish_pair):
    """Issue 14's fast-defaults benchmark: each subcommand at a tiny size (no before-checkout)."""
    fd = _load("fast_defaults")
    out = ["--out-dir", str(tmp_path)]
    assert fd.main(out + ["plateau", "--pairs", "sim:60x80x12", "--epochs", "60"]) == 0
    grid = pd.read_csv(tmp_path / "fast_defaults_plateau.csv")
    assert set(grid["patience"]) == {25, 50} and grid["stop_epoch"].between(26, 60).all()
    assert (grid["gap_to_all_epochs"] == grid["score_all_epochs"] - grid["score_at_stop"]).all()
    assert fd.main(out + ["engines", "--pairs", "sim:80x60x12", "--epochs", "3"]) == 0
    eng = pd.read_csv(tmp_path / "fast_defaults_engines.csv")
    assert list(eng["engine_asked"]) == ["exact", "lean", "auto"]
    assert set(eng["engine_ran"]) <= {"exact", "lean"} and (eng["s_per_epoch"] > 0).all()
    ref, spa = merfish_pair
    r, s = tmp_path / "r.h5ad", tmp_path / "s.h5ad"
    ref[:200].copy().write_h5ad(r)
    spa[:150].copy().write_h5ad(s)
    args = ["evaluate", "--reference", str(r), "--spatial", str(s), "--repeats", "1"]
    assert fd.main(out + args + ["--variants", ""]) == 0
    ev = pd.read_csv(tmp_path / "fast_defaults_evaluate.csv")
    assert list(ev["how"]) == ["cli", "in_process"] and (ev["seconds"] > 0).all()
    shape = "--cells 600 --fovs 10 --samples 2 --reference-cells 80 --genes 40 --panel 12"
    assert fd.main(out + ["map", "--shape", shape, "--map-args", "--impute Gene0000"]) == 0
    mp = pd.read_csv(tmp_path / "fast_defaults_map.csv")
    assert list(mp["side"]) == ["after"] and mp["t_total_s"].iloc[0] > 0


def test_atlas_scale_tiny(tmp_path):
    """Issue 14's atlas benchmark: a tiny seeded atlas, the run through the CLI, one section compared."""
    import json
    import shutil

    if shutil.which("time") is None and not Path("/usr/bin/time").exists():
        pytest.skip("GNU time (/usr/bin/time) is not installed: the run is timed with it")
    atlas = _load("atlas_scale")
    data = tmp_path / "atlas"
    made = ["make", "--cells", "900", "--sections", "3", "--fovs-per-section", "2"]
    made += ["--reference-cells", "200", "--genes", "60", "--panel", "20", "--out", str(data)]
    assert atlas.main(made) == 0
    results = tmp_path / "results.jsonl"
    run = ["run", "--data", str(data), "--workers", "0", "--check-section", "s1"]
    run += ["--results", str(results), "--out", str(tmp_path / "out.zarr")]
    assert atlas.main(run) == 0
    row = json.loads(results.read_text().splitlines()[-1])
    assert row["cells"] == 900 and row["sections"] == 3 and row["genes_imputed"] == 60
    assert row["max_abs_diff"] <= 1e-5 * max(1.0, row["max_value"])
    assert row["predicted_agreement"] == 1.0
    assert row["client_peak_rss_gib"] > 0


def test_batched_vs_whole_tiny(tmp_path, capsys):
    """Issue 25's comparison: the whole map, then the batches (in process), measured and removed."""
    if not Path("/usr/bin/time").exists():
        pytest.skip("GNU time (/usr/bin/time) is not installed: every run is timed with it")
    seed_shape = _load("seed_shape")
    data = tmp_path / "pair"
    shape = ["--cells", "600", "--fovs", "6", "--samples", "3", "--reference-cells", "120"]
    assert seed_shape.main(shape + ["--genes", "40", "--panel", "12", "--out", str(data)]) == 0
    bvw = _load("batched_vs_whole")
    results, work = tmp_path / "results.jsonl", tmp_path / "work"
    work.mkdir()
    base = ["--data", str(data), "--batch-key", "sample", "--results", str(results)]
    base += ["--tmp-dir", str(work), "--map-args=--no-uncertainty"]
    # --workers 0 maps the batches in the client process: no LocalCluster, seconds not minutes
    assert bvw.main(base + ["--workers-list", "0"]) == 0
    whole, batched = (json.loads(x) for x in results.read_text().splitlines())
    assert [whole["run"], batched["run"]] == ["whole", "batched_w0"]
    assert whole["compare_id"] == batched["compare_id"] and whole["map_args"] == "--no-uncertainty"
    for row in (whole, batched):
        assert row["status"] == "ok" and row["cells"] == 600
        assert row["wall_s"] > 0 and row["client_peak_rss_gib"] > 0
        assert row["client_cpu_source"] in ("uns", "psutil") and row["client_cpu_s"] > 0
        assert row["client_cpu_share"] == pytest.approx(row["client_cpu_s"] / row["wall_s"])
    assert "sections" not in whole and batched["sections"] == 3
    assert batched["section_s_min"] <= batched["section_s_median"] <= batched["section_s_max"]
    assert batched["ms_per_cell"] == pytest.approx(1e3 * batched["section_s_sum"] / 600)
    assert batched["x_whole"] == pytest.approx(batched["wall_s"] / whole["wall_s"])
    assert len(batched["worker_peak_rss_gib"]) == 1
    assert list(work.iterdir()) == []  # each run's result removed
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("| run |") and printed[2].startswith("| whole | 600 |")
    assert printed[3].startswith("| batched_w0 | 600 |")
    # a run that fails is recorded with its error line, the others still run
    bad = ["--skip-whole", "--workers-list", "0", "--map-args=--method nonsense"]
    assert bvw.main(base[:-1] + bad) == 1
    row = json.loads(results.read_text().splitlines()[-1])
    assert row["status"] == "failed" and "nonsense" in row["error"]
