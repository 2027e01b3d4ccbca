"""``map --batch-key``: the map chosen once, then sections mapped on their own with it from the
command line; bad input in one line."""

from __future__ import annotations

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
