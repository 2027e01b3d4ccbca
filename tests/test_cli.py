"""The command line: map, evaluate, demo, and clean failures on bad input."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from _data import size_pair
from napari_spatial_impute.cli import main


def _write_pair(ref, spa, folder):
    """The pair as ``r.h5ad`` and ``s.h5ad`` in ``folder``; their paths."""
    r, s = folder / "r.h5ad", folder / "s.h5ad"
    ref.write_h5ad(r)
    spa.write_h5ad(s)
    return r, s


def _run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_map_real_pair_writes_all_genes_and_probabilities(shared_data, tmp_path, capsys):
    d = shared_data / "merfish_hypothalamus"
    out = tmp_path / "o.h5ad"
    code, stdout, err = _run(
        [
            "map",
            "--reference",
            str(d / "reference.h5ad"),
            "--spatial",
            str(d / "spatial.h5ad"),
            "--out",
            str(out),
            "--cluster-key",
            "cell_type",
            "--epochs",
            "50",
        ],
        capsys,
    )
    assert code == 0, err
    assert "wrote 750 spatial cells x 134 imputed genes and 14 cluster probabilities" in stdout
    assert "reference raw counts, spatial raw counts; transform applied: none" in stdout
    res = ad.read_h5ad(out)
    assert res.shape == (750, 134)
    assert res.obsm["cluster_probabilities"].shape == (750, 14)
    np.testing.assert_allclose(res.obsm["cluster_probabilities"].sum(1), 1.0, rtol=1e-5)
    assert err == ""  # quiet when not on a terminal


def test_map_options(merfish_pair, tmp_path, capsys):
    ref, spa = merfish_pair
    r, s = _write_pair(ref, spa, tmp_path)
    genes = tmp_path / "genes.txt"
    genes.write_text("gad1\nSLC17A6\nMbp\n")
    out = tmp_path / "o.h5ad"
    code, stdout, err = _run(
        [
            "map",
            "-r",
            str(r),
            "-s",
            str(s),
            "-o",
            str(out),
            "--cluster-key",
            "cell_type",
            "--mode",
            "clusters",
            "--genes",
            str(genes),
            "--density",
            "rna_count_based",
            "--epochs",
            "20",
            "--impute",
            "Gad1,Ermn",
            "--projection",
            "argmax",
        ],
        capsys,
    )
    assert code == 0, err
    res = ad.read_h5ad(out)
    assert list(res.var_names) == ["Gad1", "Ermn"]
    assert res.uns["spatial_impute"]["params"]["mode"] == "clusters"
    assert list(res.uns["spatial_impute"]["training_genes"]) == ["Gad1", "Slc17a6"]


def test_evaluate_writes_cv_table(merfish_pair, tmp_path, capsys):
    ref, spa = merfish_pair
    r, s = _write_pair(ref, spa, tmp_path)
    out = tmp_path / "cv.csv"
    code, stdout, err = _run(
        [
            "evaluate",
            "-r",
            str(r),
            "-s",
            str(s),
            "--folds",
            "3",
            "--seed",
            "0",
            "--epochs",
            "30",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out)
    assert {"pearson", "size_pearson", "knn_pearson"} <= set(df.columns) and len(df) == 134
    assert "median pearson" in stdout and "mean" in stdout
    # the default scores log-normalised counts, and says so in one line
    assert (
        "values scored (--transform auto): reference raw counts -> normalised to median total, "
        "log1p; spatial raw counts -> normalised to median total, log1p\n" in stdout
    )
    # the trivial predictors of the same folds, one line, their medians as in the table
    line = next(x for x in stdout.splitlines() if x.startswith("trivial predictors"))
    size = df["size_pearson"].median()
    assert (
        f"size baseline (each cell's total over the training genes) median pearson {size:.3f};"
        in line
    )
    assert (
        f"10-NN (mean of the 10 nearest reference cells) {df['knn_pearson'].median():.3f}" in line
    )
    assert "warning" not in err  # the method beats the size baseline here


def test_evaluate_warns_when_the_size_baseline_is_as_good(tmp_path, capsys):
    """Non-integer values proportional to cell size (kept as given by ``auto``): the size
    baseline predicts every gene, the CLI says so on stderr; with counts and ``--transform
    none`` too."""
    for counts, extra in ((False, []), (True, ["--transform", "none"])):
        folder = tmp_path / f"counts{counts}"
        folder.mkdir()
        r, s = _write_pair(*size_pair(counts=counts), folder)
        out = folder / "cv.csv"
        code, stdout, err = _run(
            ["evaluate", "-r", str(r), "-s", str(s), "--folds", "4", "-o", str(out), *extra],
            capsys,
        )
        assert code == 0, err
        assert pd.read_csv(out)["size_pearson"].median() > 0.7
        given = "raw counts" if counts else "non-integer (normalised)"
        assert f"reference {given} -> as given; spatial {given} -> as given" in stdout
        warning = [x for x in err.splitlines() if "is not above the size baseline's" in x]
        assert len(warning) == 1 and "warning: the median pearson" in warning[0]
        assert ("--transform auto" in warning[0]) == counts


def _bad_inputs(tmp_path, ref, spa):
    cases = {}
    s = spa.copy()
    del s.obsm["spatial"]
    cases["missing_spatial"] = (ref, s, "obsm['spatial']")
    s = spa.copy()
    s.var_names = [f"ENSMUSG{i:011d}" for i in range(s.n_vars)]
    cases["no_shared"] = (ref, s, "no shared genes")
    s = spa.copy()
    X = s.X.toarray()
    X[0, 0] = np.nan
    s.X = sp.csr_matrix(X)
    cases["nan"] = (ref, s, "NaN or infinite")
    s = spa.copy()
    X = s.X.toarray()
    X[0, 0] = -3
    s.X = sp.csr_matrix(X)
    cases["negative"] = (ref, s, "negative values")
    s = spa.copy()
    s.obs_names = ["c"] * s.n_obs
    cases["dup_cells"] = (ref, s, "duplicated cell names")
    s = spa[:0].copy()
    cases["empty"] = (ref, s, "empty")
    return cases


@pytest.mark.parametrize(
    "case", ["missing_spatial", "no_shared", "nan", "negative", "dup_cells", "empty"]
)
def test_bad_input_one_line_exit_2_nothing_written(merfish_pair, tmp_path, capsys, case):
    ref, spa = merfish_pair
    r_ad, s_ad, expected = _bad_inputs(tmp_path, ref, spa)[case]
    r, s = tmp_path / "r.h5ad", tmp_path / "s.h5ad"
    r_ad.write_h5ad(r)
    s_ad.write_h5ad(s)
    out = tmp_path / "o.h5ad"
    code, stdout, err = _run(
        ["map", "-r", str(r), "-s", str(s), "-o", str(out), "--epochs", "2"], capsys
    )
    assert code == 2
    assert expected in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5ad", "s.h5ad"]


def test_unknown_cluster_key_lists_columns(merfish_pair, tmp_path, capsys):
    ref, spa = merfish_pair
    r, s = _write_pair(ref, spa, tmp_path)
    code, _, err = _run(
        [
            "map",
            "-r",
            str(r),
            "-s",
            str(s),
            "-o",
            str(tmp_path / "o.h5ad"),
            "--cluster-key",
            "celltype",
            "--epochs",
            "2",
        ],
        capsys,
    )
    assert code == 2 and "cell_type, nUMI_full_transcriptome" in err


def test_unreadable_file_and_memory(merfish_pair, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.h5ad"
    bad.write_text("hello")
    code, _, err = _run(
        ["map", "-r", str(bad), "-s", str(bad), "-o", str(tmp_path / "o.h5ad")], capsys
    )
    assert code == 2 and "cannot read spatial file" in err  # read first, then the reference

    from napari_spatial_impute.core.engine import resources

    ref, spa = merfish_pair
    r, s = _write_pair(ref, spa, tmp_path)
    monkeypatch.setattr(resources, "available_bytes", lambda device: 10 * 1024**2)
    code, _, err = _run(["map", "-r", str(r), "-s", str(s), "-o", str(tmp_path / "o.h5ad")], capsys)
    assert code == 2 and "needs about" in err and "GiB" in err
    assert not (tmp_path / "o.h5ad").exists()


def test_demo_runs_offline_without_shared_data(tmp_path):
    out = tmp_path / "demo.h5ad"
    env = {"NSI_DATA_DIR": str(tmp_path / "absent"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_spatial_impute.cli",
            "demo",
            "--epochs",
            "40",
            "--folds",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "imputed 134 genes at 750 cells" in proc.stdout
    assert "3-fold leave-genes-out CV: median pearson" in proc.stdout
    assert f"wrote {out}" in proc.stdout
    assert ad.read_h5ad(out).shape == (750, 134)


def test_map_lean_engine(merfish_pair, tmp_path, capsys):
    ref, spa = merfish_pair
    r, s = _write_pair(ref, spa, tmp_path)
    out = tmp_path / "o.h5ad"
    code, stdout, err = _run(
        [
            "map",
            "-r",
            str(r),
            "-s",
            str(s),
            "-o",
            str(out),
            "--method",
            "tangram",
            "--engine",
            "lean",
            "--candidates",
            "20",
            "--epochs",
            "30",
            "--cluster-key",
            "cell_type",
        ],
        capsys,
    )
    assert code == 0, err
    assert "lean engine" in stdout
    res = ad.read_h5ad(out)
    assert res.uns["spatial_impute"]["params"]["engine"] == "lean"
    assert res.shape == (750, 134)


def test_projection_neighbours_with_a_tangram_map_is_refused_before_work(tmp_path, capsys):
    """Issue 15: a Tangram map has no ensemble weights; say so before reading or training."""
    missing = tmp_path / "absent.h5ad"
    code, _, err = _run(
        ["map", "-r", str(missing), "-s", str(missing), "-o", str(tmp_path / "o.h5ad")]
        + ["--method", "tangram", "--projection", "neighbours"],
        capsys,
    )
    assert code == 2 and "--projection neighbours needs the ensemble map" in err
    assert "cannot read" not in err  # refused before the files were read


def test_default_map_prints_the_ensemble_and_no_epochs(merfish_pair, tmp_path, capsys):
    ref, spa = merfish_pair
    r, s = _write_pair(ref, spa, tmp_path)
    code, out, err = _run(
        ["map", "-r", str(r), "-s", str(s), "-o", str(tmp_path / "o.h5ad")], capsys
    )
    assert code == 0, err
    assert "ensemble map (no training)" in out and "epochs" not in out
    assert ad.read_h5ad(tmp_path / "o.h5ad").uns["spatial_impute"]["params"]["epochs_done"] == 0


def test_map_records_the_sample_key(merfish_pair, tmp_path, capsys):
    """Issue 12: the result says which column holds the samples (found by its usual name, or
    given, or none), so the plugin draws one layer per sample; a per-cell column is refused
    before any work, in one line."""
    ref, spa = (a.copy() for a in merfish_pair)  # the session's pair stays as it is
    x = spa.obsm["spatial"][:, 0]
    spa.obs["section"] = pd.Categorical(np.where(x < np.median(x), "s1", "s2"))
    spa.obs["area"] = np.linspace(0, 1, spa.n_obs)
    r, s = _write_pair(ref, spa, tmp_path)
    for option, expected in (([], "section"), (["--sample-key", ""], "")):
        out = tmp_path / f"o{len(option)}.h5ad"
        code, _, err = _run(["map", "-r", str(r), "-s", str(s), "-o", str(out), *option], capsys)
        assert code == 0, err
        assert ad.read_h5ad(out).uns["spatial_impute"]["sample_key"] == expected
    out = tmp_path / "bad.h5ad"
    code, stdout, err = _run(
        ["map", "-r", str(r), "-s", str(s), "-o", str(out), "--sample-key", "area"], capsys
    )
    assert code == 2 and "distinct values" in err and err.count("\n") == 1
    assert not out.exists()


def test_tangram_map_summary_says_how_training_ended(merfish_pair, tmp_path, capsys, monkeypatch):
    """Issue 14: the summary gives the epochs done and why training stopped, and auto's costs."""
    from napari_spatial_impute.core.maps import tangram

    monkeypatch.setattr(tangram, "SMALL_PAIRS", 0)  # the pair is small: no probe otherwise
    ref, spa = merfish_pair
    r, s = _write_pair(ref, spa, tmp_path)
    base = ["map", "-r", str(r), "-s", str(s), "-o", str(tmp_path / "o.h5ad"), "--method"]
    code, out, err = _run([*base, "tangram", "--engine", "exact", "--impute", "Gad1"], capsys)
    assert code == 0, err
    params = ad.read_h5ad(tmp_path / "o.h5ad").uns["spatial_impute"]["params"]
    assert params["stop_reason"] == "plateau" and params["epochs_done"] < 1000
    assert (
        f"stopped at a plateau after {params['epochs_done']} of 1,000 epochs (score gain under "
        "0.001 over 50 epochs), exact engine" in out
    )
    code, out, err = _run(
        [*base, "tangram", "--epochs", "5", "--tol", "0", "--candidates", "5", "--impute", "Gad1"],
        capsys,
    )
    assert code == 0, err
    assert "all 5 epochs" in out and "\nauto chose the " in out and "ms/epoch" in out


def test_evaluate_scores_intervals_when_asked(merfish_pair, tmp_path, capsys):
    ref, spa = merfish_pair
    r, s = _write_pair(ref, spa, tmp_path)
    tables = {}
    for flag in ("--no-uncertainty", "--uncertainty"):
        out = tmp_path / f"cv{flag}.csv"
        code, stdout, err = _run(
            ["evaluate", "-r", str(r), "-s", str(s), "--folds", "3", flag, "-o", str(out)], capsys
        )
        assert code == 0, err
        tables[flag] = pd.read_csv(out)
        scored = "prediction intervals on held-out genes: 90% covers" in stdout
        assert scored == (flag == "--uncertainty")
        assert ("prediction intervals not scored" in stdout) == (not scored)
    assert (
        "coverage_90" in tables["--uncertainty"] and "coverage_90" not in tables["--no-uncertainty"]
    )
    pd.testing.assert_series_equal(
        tables["--uncertainty"]["pearson"], tables["--no-uncertainty"]["pearson"]
    )
