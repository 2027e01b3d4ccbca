"""``map --batch-key``: the map chosen once, then sections mapped on their own with it from the
command line; bad input in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import napari_spatial_impute as nsi
from _data import make_synthetic
from napari_spatial_impute.cli import main
from napari_spatial_impute.core.export import result_to_anndata

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batches")
    ref, sp = make_synthetic(n_ref=150, n_sp=240, n_genes=14, seed=6)
    sp.obs["section"] = pd.Categorical(np.repeat(["a", "b", "c"], 80))
    sp.obs["cell_id"] = [f"id{i}" for i in range(sp.n_obs)]
    ref.write_h5ad(folder / "reference.h5ad")
    sp.write_h5ad(folder / "spatial.h5ad")
    return folder, ref, sp


def _args(folder, out, *extra):
    return [
        "map",
        "-r",
        str(folder / "reference.h5ad"),
        "-s",
        str(folder / "spatial.h5ad"),
        "--cluster-key",
        "cell_type",
        "--batch-key",
        "section",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.parametrize(("name", "workers"), [("out.zarr", "0"), ("out.h5ad", "1")])
def test_map_by_batch_writes_each_section_as_mapped_alone(files, tmp_path, capsys, name, workers):
    folder, ref, sp = files
    out = tmp_path / name
    assert main(_args(folder, out, "--workers", workers)) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("map chosen once for all 3 sections on ")
    assert "drawn from each of them" in lines[0]
    assert lines[1].startswith("batch 1/3 'a' (80 cells) mapped")
    assert "mapped 3 of 3 batches (240 cells)" in text and f"wrote {out}" in text
    result = ad.read_zarr(out) if name.endswith(".zarr") else ad.read_h5ad(out)
    info = result.uns["spatial_impute"]
    chosen = info["map_choice"]["chosen"]
    assert info["map_choice"]["batch_summary"] == lines[0]
    assert {run["params"]["method"] for run in info["batches"]["runs"].values()} == {chosen}
    rows = np.flatnonzero(sp.obs["section"].to_numpy() == "b")
    alone = result_to_anndata(
        nsi.map_cells_to_space(ref, sp[rows].copy(), cluster_key="cell_type", method=chosen)
    )
    np.testing.assert_allclose(result.X[rows], alone.X, rtol=1e-5, atol=1e-6)
    assert result.uns["spatial_impute"]["batch_key"] == "section"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--batch-key", "cell_id"], "names cells or fields of view"),
        (["--batch-key", "section", "--scheduler", "tcp://127.0.0.1:9"], "does not answer"),
        (["--batch-key", "section", "--workers", "1", "--memory-limit", "2MB"], "needs about"),
        (["--batch-key", "section", "--memory-limit", "plenty"], "not a size"),
        (["--batch-key", "section", "--memory-limit", "1e400"], "'1e400' is not a size"),
        (["--batch-key", "section", "--memory-limit", "inf"], "'inf' is not a size"),
        (["--batch-key", "section", "--memory-limit", "nan"], "'nan' is not a size"),
        (
            ["--batch-key", "section", "--scheduler", "ucx://127.0.0.1:9"],
            "cannot connect with ucx://; give the scheduler's address with one of",
        ),
        (["--batch-key", "section", "--scheduler", "tcp://"], "does not answer"),
        (
            ["--batch-key", "section", "--workers", "0", "--memory-limit", "1MB"],
            "with --workers 0 the batches run in this process",
        ),
        (["--batch-key", "nope"], "'nope' is not a column"),
        (["--workers", "2"], "give --batch-key"),
        (["--batch-key", "section", "--result-table", "t"], "results go to --out"),
    ],
)
def test_bad_batch_input_is_one_line_and_writes_nothing(files, tmp_path, capsys, extra, match):
    folder, _, _ = files
    out = tmp_path / "out.h5ad"
    args = _args(folder, out)
    args = args[: args.index("--batch-key")] + args[args.index("--out") :] + extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_existing_zarr_output_is_never_replaced(files, tmp_path, capsys):
    folder, _, _ = files
    out = tmp_path / "done.zarr"
    out.mkdir()
    (out / "mine.txt").write_text("earlier")
    assert main(_args(folder, out)) == 2
    assert "exists" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "earlier"


def test_a_store_maps_by_batch_with_cells_where_the_store_puts_them(tmp_path, capsys):
    """A SpatialData store's table, one batch per FOV: the rows keep the store's positions."""
    from _data import make_store, tree_digest
    from napari_spatial_impute.io.sdata import read_spatial

    store, ref = make_store(tmp_path / "s.zarr", n_fovs=2)
    ref.write_h5ad(tmp_path / "ref.h5ad")
    before = tree_digest(store)
    out = tmp_path / "out.h5ad"
    args = ["map", "-r", str(tmp_path / "ref.h5ad"), "-s", str(store), "--cluster-key"]
    args += ["cell_type", "--batch-key", "fov", "--workers", "0", "--out", str(out)]
    assert main(args) == 0
    assert "mapped 2 of 2 batches (48 cells)" in capsys.readouterr().out
    result = ad.read_h5ad(out)
    cells = read_spatial(store)
    np.testing.assert_allclose(result.obsm["spatial"], cells.obsm["spatial"])
    assert list(result.obs["fov"].astype(str)) == list(cells.obs["fov"].astype(str))
    assert tree_digest(store) == before  # the store is read only


@pytest.mark.parametrize("name", ["out.zarr", "out.h5ad"])
@pytest.mark.parametrize("loop", [False, True], ids=["dangling", "loop"])
def test_an_output_link_to_nothing_is_refused_before_any_work(
    files, tmp_path, capsys, monkeypatch, name, loop
):
    """``Path.exists`` is False for a dangling link or a loop: refused before the data are read
    (the rename at the end would fail, or replace the link)."""
    from napari_spatial_impute.io import files as io_files

    folder, _, _ = files
    out = tmp_path / name
    if loop:
        other = tmp_path / f"other{out.suffix}"
        out.symlink_to(other)
        other.symlink_to(out)
    else:
        out.symlink_to(tmp_path / "nowhere" / name)
    target = os.readlink(out)
    before = sorted(os.listdir(tmp_path))

    def no_reading(*args, **kwargs):
        raise AssertionError("the data were read")

    monkeypatch.setattr(io_files, "read_h5ad", no_reading)
    assert main(_args(folder, out, "--workers", "0")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"napari-spatial-impute: error: output {str(out)!r} is a symbolic link")
    assert os.path.islink(out) and os.readlink(out) == target
    assert sorted(os.listdir(tmp_path)) == before


def test_workers_are_lowered_to_the_batches_and_cores_in_one_line(files, tmp_path, capsys):
    """--workers 8 for 3 batches starts at most one worker per batch and per core, says so once,
    and the last line names the workers the run had."""
    folder, _, _ = files
    out = tmp_path / "out.h5ad"
    assert main(_args(folder, out, "--workers", "8", "--method", "ensemble")) == 0
    cores = os.cpu_count() or 1
    n = min(3, cores)
    captured = capsys.readouterr()
    lowered = [line for line in captured.err.splitlines() if "lowered" in line]
    assert lowered == [
        f"napari-spatial-impute: warning: --workers 8 lowered to {n} (at most one per batch and "
        f"one per core: 3 batches, {cores} core{'s' if cores != 1 else ''})."
    ]
    assert f"mapped 3 of 3 batches (240 cells) on {n} worker{'s' if n != 1 else ''} in" in (
        captured.out
    )


def test_a_zarr_output_prints_no_zarr_notes(files, tmp_path, capsys):
    """zarr's notes on its future defaults (one per array written) are not shown to users."""
    import warnings

    folder, _, _ = files
    out = tmp_path / "out.zarr"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(_args(folder, out, "--workers", "0", "--method", "ensemble")) == 0
    shown = capsys.readouterr().err + "\n".join(str(w.message) for w in caught)
    assert "autosharding" not in shown and "onsolidated metadata" not in shown
    assert ad.read_zarr(out).n_obs == 240


_INTERRUPTING = textwrap.dedent(
    """
    import os, signal, sys
    import distributed

    from napari_spatial_impute.core import batch_run

    sig = signal.SIGINT if sys.argv[1] == "int" else signal.SIGTERM
    where = sys.argv[2]
    if where == "start":  # while the local cluster starts
        original_init = distributed.LocalCluster.__init__

        def init(self, *a, **k):
            os.kill(os.getpid(), sig)
            original_init(self, *a, **k)

        distributed.LocalCluster.__init__ = init
    else:  # when the first batch is done, the others on the workers
        original = batch_run.BatchProgress.describe

        def describe(self):
            os.kill(os.getpid(), sig)
            return original(self)

        batch_run.BatchProgress.describe = describe
    if __name__ == "__main__":  # Dask's worker processes import this module too
        from napari_spatial_impute.cli import main

        raise SystemExit(main(sys.argv[3:]))
    """
)


@pytest.mark.parametrize("where", ["start", "batch"])
@pytest.mark.parametrize(("how", "code"), [("int", 130), ("term", 143)])
def test_an_interrupted_cluster_run_ends_in_one_line(files, tmp_path, where, how, code):
    """Ctrl-C or SIGTERM while the local cluster starts or while batches run on it: one line,
    the exit status, nothing written, and no report from Dask, its workers or asyncio."""
    import socket

    folder, _, _ = files
    driver = tmp_path / "driver.py"
    driver.write_text(_INTERRUPTING)
    out = tmp_path / "out.zarr"
    busy = socket.socket()  # another Dask on this machine holds its default port
    try:
        busy.bind(("127.0.0.1", 8787))
        busy.listen()
    except OSError:
        pass  # already taken
    try:
        proc = subprocess.run(
            [sys.executable, str(driver), how, where, *_args(folder, out, "--workers", "2")],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        busy.close()
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    word = "cancelled" if how == "int" else "terminated"
    assert lines == [f"napari-spatial-impute: {word}; nothing written"], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driver.py"]
