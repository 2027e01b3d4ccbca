"""The command line never leaves a traceback or a broken store: bad options and paths in one line
before any mapping, and Ctrl-C / SIGTERM at the write-back leave the store as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from _data import make_store, tree_digest
from napari_spatial_impute.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def store_template(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_store")
    path, ref = make_store(folder / "cells.zarr")
    ref_path = folder / "reference.h5ad"
    ref.write_h5ad(ref_path)
    return path, ref_path


@pytest.fixture
def store(store_template, tmp_path):
    import shutil

    src, ref = store_template
    dst = tmp_path / "cells.zarr"
    shutil.copytree(src, dst)
    return dst, ref


@pytest.fixture
def no_mapping(monkeypatch):
    """Fail the test if the mapping starts: the refusals come before any work."""
    import napari_spatial_impute.core.mapping as mapping

    def refuse(*a, **k):
        raise AssertionError("the mapping started")

    monkeypatch.setattr(mapping, "map_cells_to_space", refuse)


def _run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-spatial-impute: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["map", "-r"], "expected one argument (see napari-spatial-impute map --help)"),
        (["map", "--epochs", "x"], "invalid int value: 'x'"),
        (["mop"], "invalid choice: 'mop'"),
        (["map", "-r", "r.h5ad"], "the following arguments are required: --spatial/-s"),
    ],
)
def test_usage_errors_are_one_line(args, expected, capsys):
    code, out, err = _run(args, capsys)
    assert code == 2 and expected in _one_line(err) and out == ""


def test_bad_store_options_are_one_line_before_mapping(store, tmp_path, capsys, no_mapping):
    path, ref = store
    before = tree_digest(path)
    cases = {
        "empty name": (["--result-table="], "table name is empty"),
        "long name": (["--result-table", "t" * 300], "is 300 characters long"),
        "missing store": (["-s", tmp_path / "x.zarr"], "spatial input"),
    }
    for what, (extra, expected) in cases.items():
        args = ["map", "-r", ref, "-s", path, *extra]
        code, out, err = _run(args, capsys)
        assert code == 2, (what, err)
        line = _one_line(err)
        assert expected in line, (what, line)
        if what == "missing store":
            assert "does not exist" in line and "--out is required" not in line
    dangling = tmp_path / "dangling.zarr"
    os.symlink(tmp_path / "nowhere.zarr", dangling)
    loop = tmp_path / "loop.zarr"
    os.symlink(loop, loop)
    for out_path in (dangling, loop):
        code, out, err = _run(["map", "-r", ref, "-s", path, "-o", out_path], capsys)
        assert code == 2 and "a link to a missing path or a link loop" in _one_line(err)
    assert tree_digest(path) == before


_DRIVER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import zarr.storage

    sig = signal.SIGINT if sys.argv[1] == "int" else signal.SIGTERM
    original = zarr.storage.LocalStore.set
    sent = []

    async def set_and_interrupt(self, key, value):
        # the first chunk the write-back writes: the signal reaches the main thread while it
        # waits on zarr's event loop, which is still busy with a slow disk
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), sig)
            await asyncio.sleep(1)
        return await original(self, key, value)

    zarr.storage.LocalStore.set = set_and_interrupt
    from napari_spatial_impute.cli import main
    raise SystemExit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize(("how", "code"), [("int", 130), ("term", 128 + signal.SIGTERM)])
def test_interrupt_during_write_back_leaves_the_store_and_no_traceback(store, tmp_path, how, code):
    path, ref = store
    before = tree_digest(path)
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    proc = subprocess.run(
        [sys.executable, str(driver), how, "map", "-r", str(ref), "-s", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == code, proc.stderr
    reports = ("Traceback", "RuntimeError", "Exception ignored", "Error in atexit", "destroyed")
    for text in reports:
        assert text not in proc.stderr, proc.stderr
    if how == "int":
        assert proc.stderr.strip().splitlines()[-1].endswith("cancelled; nothing written")
    assert tree_digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.zarr", "driver.py"]


_H5AD_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import anndata

    sig = signal.SIGINT if sys.argv[1] == "int" else signal.SIGTERM
    original = anndata.AnnData.write_h5ad

    class Callback:  # as h5py's callbacks: an exception raised in them is only reported
        def __del__(self):
            os.kill(os.getpid(), sig)

    def interrupted_write(self, path, *a, **k):
        original(self, path, *a, **k)
        Callback()

    anndata.AnnData.write_h5ad = interrupted_write
    from napari_spatial_impute.cli import main
    raise SystemExit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize(("how", "code"), [("int", 130), ("term", 128 + signal.SIGTERM)])
def test_interrupt_swallowed_during_h5ad_write_prints_no_report(store, tmp_path, how, code):
    path, ref = store
    out = tmp_path / "o.h5ad"
    out.write_bytes(b"earlier result")
    driver = tmp_path / "driver.py"
    driver.write_text(_H5AD_DRIVER)
    proc = subprocess.run(
        [sys.executable, str(driver), how, "map", "-r", str(ref), "-s", str(path), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == code, proc.stderr
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_bytes() == b"earlier result"


def test_reference_names_a_store_table_cannot_hold(store, tmp_path, capsys):
    """A reference gene column 'gene name' (spatialdata refuses the space) is written as
    'gene_name'; a cluster key 'cell type' would make a column the table cannot hold: refused in
    one line before the mapping."""
    import anndata as ad
    import spatialdata as sd

    path, ref_path = store
    ref = ad.read_h5ad(ref_path)
    ref.var["gene name"] = ref.var_names.str.upper()
    ref.var["Gene_Name"] = 1  # the same name as the fixed one, ignoring case
    ref.obs["cell type"] = ref.obs["cell_type"]
    ref_path = tmp_path / "named.h5ad"
    ref.write_h5ad(ref_path)
    before = tree_digest(path)
    code, out, err = _run(["map", "-r", ref_path, "-s", path, "--cluster-key", "cell type"], capsys)
    assert code == 2 and "cluster key 'cell type'" in _one_line(err) and out == ""
    assert tree_digest(path) == before
    code, out, err = _run(["map", "-r", ref_path, "-s", path, "--cluster-key", "cell_type"], capsys)
    assert code == 0, err
    var = sd.read_zarr(path).tables["spatial_impute"].var
    assert {"gene_name", "Gene_Name_2"} <= set(var.columns)


_REPORT_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from napari_spatial_impute import cli

    sig = signal.SIGINT if sys.argv[1] == "int" else signal.SIGTERM
    original = cli._map_summary

    def summary_interrupted(result):
        os.kill(os.getpid(), sig)  # after the write, while the report is printed
        return original(result)

    cli._map_summary = summary_interrupted
    raise SystemExit(cli.main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize("how", ["int", "term"])
def test_interrupt_after_the_write_says_it_was_written(store, tmp_path, how):
    """Ctrl-C or SIGTERM while the report is printed: the table is in the store, and the one
    line says so (not 'nothing written')."""
    import spatialdata as sd

    path, ref = store
    driver = tmp_path / "driver.py"
    driver.write_text(_REPORT_DRIVER)
    proc = subprocess.run(
        [sys.executable, str(driver), how, "map", "-r", str(ref), "-s", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == (130 if how == "int" else 143), proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "stopped after the result was written to table 'spatial_impute'" in last
    assert "nothing written" not in proc.stderr and "Traceback" not in proc.stderr
    assert "spatial_impute" in sd.read_zarr(path).tables
