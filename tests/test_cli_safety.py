"""Issue 10: nothing the user owns is replaced or left with debris, bad settings get one line.

Covers: an output that is an input (also via a symlink or another spelling), an output that is a
folder, interrupts (SIGINT, SIGTERM) while the output is written, stale temporary files of killed
runs, the written file's permissions, and settings that used to crash with a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from napari_spatial_impute.cli import main
from napari_spatial_impute.io.files import atomic_output, write_h5ad_atomic


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory, merfish_pair):
    folder = tmp_path_factory.mktemp("pair")
    ref, spa = merfish_pair
    r, s = folder / "ref.h5ad", folder / "sp.h5ad"
    ref.write_h5ad(r)
    spa.write_h5ad(s)
    return r, s


def _run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(err: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err, err


def _spellings(tmp_path: Path, target: Path) -> dict[str, Path]:
    link = tmp_path / "link.h5ad"
    link.symlink_to(target)
    hard = tmp_path / "hard.h5ad"
    os.link(target, hard)
    other = target.parent / ".." / target.parent.name / target.name
    return {"same": target, "symlink": link, "hardlink": hard, "spelling": other}


@pytest.mark.parametrize("role", ["reference", "spatial"])
def test_output_equal_to_an_input_is_refused_before_work(pair_files, tmp_path, capsys, role):
    r0, s0 = pair_files
    r, s = tmp_path / "r.h5ad", tmp_path / "s.h5ad"
    r.write_bytes(r0.read_bytes())
    s.write_bytes(s0.read_bytes())
    target = r if role == "reference" else s
    before = target.read_bytes()
    for kind, out in _spellings(tmp_path, target).items():
        code, stdout, err = _run(["map", "-r", r, "-s", s, "-o", out, "--epochs", "2"], capsys)
        assert code == 2, (kind, err)
        assert "is the input file" in err and "choose another --out" in err
        _one_line(err)
        assert stdout == ""  # refused before reading or mapping anything
        assert target.read_bytes() == before, kind
    (tmp_path / "link.h5ad").unlink()
    (tmp_path / "hard.h5ad").unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5ad", "s.h5ad"]


def test_gene_list_as_output_and_folder_output_refused(pair_files, tmp_path, capsys):
    r, s = pair_files
    folder = tmp_path / "x.h5ad"
    folder.mkdir()
    code, stdout, err = _run(["map", "-r", r, "-s", s, "-o", folder, "--epochs", "2"], capsys)
    assert code == 2 and "is an existing folder" in err and stdout == ""
    _one_line(err)
    assert list(folder.iterdir()) == []


def test_evaluate_output_equal_to_input_refused(tmp_path, capsys, pair_files):
    r, _ = pair_files
    csv = tmp_path / "cv.csv"
    csv.write_text("precious\n")
    code, _, err = _run(["evaluate", "-r", r, "-s", csv, "-o", csv, "--folds", "2"], capsys)
    assert code == 2 and "is the input file" in err
    assert csv.read_text() == "precious\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--learning-rate", "nan"], "learning rate must be a positive number"),
        (["--learning-rate", "inf"], "learning rate must be a positive number"),
        (["--learning-rate", "0"], "learning rate must be a positive number"),
        (["--lambda-g1", "nan"], "lambda_g1 must be a finite number"),
        (["--lambda-g2", "inf"], "lambda_g2 must be a finite number"),
        (["--lambda-d", "-1"], "lambda_d must be a finite number of 0 or more"),
        (["--lambda-r", "-0.5"], "lambda_r must be a finite number of 0 or more"),
        (["--seed", "-1"], "seed must be a whole number from 0 to"),
        (["--seed", str(2**40)], "seed must be a whole number from 0 to"),
        (["--tol", "nan"], "tol must be a finite number"),
        (
            ["--genes", "markers", "--cluster-key", "cell_type", "--n-markers", "0"],
            "n_markers must be 1 or more",
        ),
        (
            ["--engine", "lean", "--mode", "clusters", "--cluster-key", "cell_type"],
            "lean engine maps single cells",
        ),
    ],
)
def test_bad_settings_one_line_before_work(pair_files, tmp_path, capsys, args, expected):
    r, s = pair_files
    out = tmp_path / "o.h5ad"
    code, stdout, err = _run(["map", "-r", r, "-s", s, "-o", out, "--epochs", "2", *args], capsys)
    assert code == 2, err
    assert expected in err
    _one_line(err)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_binary_gene_list_is_one_line(pair_files, tmp_path, capsys):
    r, s = pair_files
    genes = tmp_path / "genes.txt"
    genes.write_bytes(bytes(range(256)) * 4)
    code, _, err = _run(
        ["map", "-r", r, "-s", s, "-o", tmp_path / "o.h5ad", "--genes", genes], capsys
    )
    assert code == 2 and "not a UTF-8 text file" in err
    _one_line(err)


def test_huge_values_refused_and_float16_totals_do_not_overflow(merfish_pair, tmp_path, capsys):
    ref, spa = merfish_pair
    r = tmp_path / "r.h5ad"
    ref.write_h5ad(r)
    dense = spa.X.toarray()
    big = spa.copy()
    big.X = dense.astype(np.float64) * 1e20
    big.write_h5ad(tmp_path / "big.h5ad")
    code, _, err = _run(
        [
            "map",
            "-r",
            r,
            "-s",
            tmp_path / "big.h5ad",
            "-o",
            tmp_path / "o.h5ad",
            "--density",
            "rna_count_based",
        ],
        capsys,
    )
    assert code == 2 and "too large for float32" in err
    _one_line(err)

    half = spa.copy()
    half.X = np.minimum(dense * 300, 60000).astype(np.float16)
    assert (
        np.isfinite(half.X).all()
        and half.X.astype(np.float64).sum(1).max() > np.finfo(np.float16).max
    )
    half.write_h5ad(tmp_path / "half.h5ad")
    out = tmp_path / "o16.h5ad"
    code, _, err = _run(
        [
            "map",
            "-r",
            r,
            "-s",
            tmp_path / "half.h5ad",
            "-o",
            out,
            "--density",
            "rna_count_based",
            "--epochs",
            "5",
            "--cluster-key",
            "cell_type",
        ],
        capsys,
    )
    assert code == 0, err
    res = ad.read_h5ad(out)
    assert np.isfinite(res.X).all()
    np.testing.assert_allclose(res.obsm["cluster_probabilities"].sum(1), 1.0, rtol=1e-4)


def test_backed_data_named(merfish_pair, tmp_path):
    import napari_spatial_impute as nsi

    ref, spa = merfish_pair
    ref.write_h5ad(tmp_path / "r.h5ad")
    backed = ad.read_h5ad(tmp_path / "r.h5ad", backed="r")
    with pytest.raises(
        nsi.InputError, match=r"backed mode .* is not supported; read it into memory"
    ):
        nsi.map_cells_to_space(backed, spa, epochs=1)


def test_mix_ups_warned_in_cli(pair_files, tmp_path, capsys):
    r, s = pair_files
    code, _, err = _run(
        ["map", "-r", s, "-s", s, "-o", tmp_path / "o.h5ad", "--epochs", "2"], capsys
    )
    assert code == 0
    assert "warning: the spatial data holds the reference's own cells" in err
    code, _, err = _run(
        [
            "map",
            "-r",
            r,
            "-s",
            s,
            "-o",
            tmp_path / "o2.h5ad",
            "--epochs",
            "2",
            "--cluster-key",
            "nUMI_full_transcriptome",
        ],
        capsys,
    )
    assert code == 0
    assert (
        "warning: cluster key 'nUMI_full_transcriptome' has 1,216 distinct values for 1,308" in err
    )
    assert err.count("\n") == 1
    # a real cluster column on a real pair: no warning
    code, _, err = _run(
        [
            "map",
            "-r",
            r,
            "-s",
            s,
            "-o",
            tmp_path / "o3.h5ad",
            "--epochs",
            "2",
            "--cluster-key",
            "cell_type",
        ],
        capsys,
    )
    assert code == 0 and err == ""


def test_lean_engine_on_tiny_reference_says_it_ran_exact(merfish_pair):
    import napari_spatial_impute as nsi

    ref, spa = merfish_pair
    with pytest.warns(nsi.InputWarning, match="the exact engine ran"):
        res = nsi.map_cells_to_space(
            ref[:30].copy(), spa, method="tangram", engine="lean", candidates=50, epochs=2
        )
    assert res.params["engine"] == "exact" and "exact engine ran" in res.params["engine_note"]


# --- interrupts while writing -------------------------------------------------------------------


def test_swallowed_ctrl_c_during_write_cancels_and_keeps_old_output(tmp_path):
    target = tmp_path / "out.h5ad"
    target.write_bytes(b"earlier result")

    def library_that_swallows(path: str) -> None:
        with open(path, "wb") as fh:
            fh.write(b"new half")
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:  # h5py's callbacks print "Exception ignored" and go on
            pass
        with open(path, "ab") as fh:
            fh.write(b" and the rest")

    with pytest.raises(KeyboardInterrupt), atomic_output(target) as tmp:
        library_that_swallows(tmp)
    assert target.read_bytes() == b"earlier result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5ad"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import anndata

    how = sys.argv[1]
    original = anndata.AnnData.write_h5ad

    def interrupted_write(self, path, *a, **k):
        original(self, path, *a, **k)
        sig = signal.SIGINT if how == "int" else signal.SIGTERM
        try:
            os.kill(os.getpid(), sig)
        except KeyboardInterrupt:
            pass  # swallowed, as h5py does inside its callbacks

    anndata.AnnData.write_h5ad = interrupted_write
    from napari_spatial_impute.cli import main
    raise SystemExit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize(("how", "code"), [("int", 130), ("term", 128 + signal.SIGTERM)])
def test_cli_interrupted_while_writing_keeps_earlier_output(pair_files, tmp_path, how, code):
    r, s = pair_files
    out = tmp_path / "o.h5ad"
    out.write_bytes(b"earlier result")
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    proc = subprocess.run(
        [
            sys.executable,
            str(driver),
            how,
            "map",
            "-r",
            str(r),
            "-s",
            str(s),
            "-o",
            str(out),
            "--epochs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    if how == "int":
        assert "cancelled; nothing written" in proc.stderr
    assert out.read_bytes() == b"earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driver.py", "o.h5ad"]


def test_stale_temp_of_killed_run_is_removed_and_live_one_kept(synthetic, tmp_path):
    ref, _ = synthetic
    target = tmp_path / "out.h5ad"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.h5ad.{dead.pid}.abcd1234.tmp"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".out.h5ad.{os.getppid()}.efgh5678.tmp"  # a running process: kept
    live.write_bytes(b"y")
    unrelated = tmp_path / ".other.h5ad.1.zz.tmp"
    unrelated.write_bytes(b"z")
    write_h5ad_atomic(ref, target)
    assert not stale.exists()
    assert live.exists() and unrelated.exists()
    assert ad.read_h5ad(target).shape == ref.shape


def test_sigkill_during_write_leaves_a_temp_the_next_run_removes(pair_files, tmp_path):
    r, s = pair_files
    out = tmp_path / "o.h5ad"
    script = textwrap.dedent(
        """
        import os, signal, sys
        import anndata
        original = anndata.AnnData.write_h5ad
        def killed(self, path, *a, **k):
            original(self, path, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        anndata.AnnData.write_h5ad = killed
        from napari_spatial_impute.cli import main
        main(sys.argv[1:])
        """
    )
    args = ["map", "-r", str(r), "-s", str(s), "-o", str(out), "--epochs", "2"]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    debris = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(debris) == 1 and not out.exists()
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.h5ad"]


def test_written_file_follows_umask(synthetic, tmp_path):
    ref, _ = synthetic
    old = os.umask(0o027)
    try:
        write_h5ad_atomic(ref, tmp_path / "a.h5ad")
    finally:
        os.umask(old)
    assert (tmp_path / "a.h5ad").stat().st_mode & 0o777 == 0o640


def test_ctrl_c_while_importing_is_one_line(pair_files, tmp_path):
    """The console script imports only the CLI module; a Ctrl-C during the heavy imports is one line."""
    r, s = pair_files
    script = textwrap.dedent(
        """
        import sys

        class CtrlCOnTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    raise KeyboardInterrupt
                return None

        sys.meta_path.insert(0, CtrlCOnTorch())
        from napari_spatial_impute.cli import main  # what the console script does
        assert "torch" not in sys.modules
        raise SystemExit(main(sys.argv[1:]))
        """
    )
    out = tmp_path / "o.h5ad"
    proc = subprocess.run(
        [sys.executable, "-c", script, "map", "-r", str(r), "-s", str(s), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "napari-spatial-impute: cancelled; nothing written\n"
    assert not out.exists()


def test_unknown_impute_gene_refused_before_mapping(pair_files, tmp_path, capsys, monkeypatch):
    from napari_spatial_impute.core import mapping

    def must_not_run(*a, **k):
        raise AssertionError("the mapping ran before the --impute genes were checked")

    monkeypatch.setattr(mapping, "map_cells_to_space", must_not_run)
    r, s = pair_files
    code, _, err = _run(
        ["map", "-r", r, "-s", s, "-o", tmp_path / "o.h5ad", "--impute", "nope,Gad1"], capsys
    )
    assert code == 2 and "requested genes are not in the reference (e.g. ['nope'])" in err
    _one_line(err)


def test_cluster_level_reference_is_not_warned(shared_data):
    """One text label per row is a cluster-level reference (iss_ca1's 71 class profiles), not a mix-up."""
    import napari_spatial_impute as nsi
    from napari_spatial_impute.io.files import input_warnings

    profiles = nsi.read_h5ad(shared_data / "iss_ca1" / "reference_class_profiles.h5ad", "reference")
    spatial = nsi.read_h5ad(shared_data / "iss_ca1" / "spatial.h5ad", "spatial")
    key = next(c for c in profiles.obs.columns if profiles.obs[c].nunique() == profiles.n_obs)
    assert input_warnings(profiles, spatial, key) == []
    numeric = profiles.copy()
    numeric.obs["row"] = np.arange(numeric.n_obs)
    assert "per-cell measurement" in input_warnings(numeric, spatial, "row")[0]


def test_a_gene_asked_for_twice_is_imputed_once(pair_files, tmp_path, capsys):
    r, s = pair_files
    out = tmp_path / "o.h5ad"
    code, _, err = _run(
        ["map", "-r", r, "-s", s, "-o", out, "--epochs", "2", "--impute", "Gad1,Rnd3,GAD1"], capsys
    )
    assert code == 0, err
    assert list(ad.read_h5ad(out).var_names) == ["Gad1", "Rnd3"]
