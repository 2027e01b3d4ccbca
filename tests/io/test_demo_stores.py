"""The small real SpatialData stores (CosMx lung, ISS CA1): written, reopened and checked against
the source files, with frame checks that a shifted or flipped frame would fail."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
import scipy.sparse as sp

from napari_spatial_impute import InputError
from napari_spatial_impute.io.demo_stores import build_cosmx_lung_store, build_iss_ca1_store

sd = pytest.importorskip("spatialdata")
from spatialdata.models import get_table_keys  # noqa: E402
from spatialdata.transformations import (  # noqa: E402
    get_transformation,
    get_transformation_between_coordinate_systems,
    set_transformation,
)

FOVS = (2, 3)
SHIFT = 20.0  # pixels: a frame this far off must be caught


@pytest.fixture(scope="module")
def cosmx(shared_data, tmp_path_factory):
    out = build_cosmx_lung_store(shared_data, tmp_path_factory.mktemp("cosmx") / "cosmx.zarr")
    assert out.is_dir()
    return sd.read_zarr(out)


@pytest.fixture(scope="module")
def iss(shared_data, tmp_path_factory):
    out = build_iss_ca1_store(shared_data, tmp_path_factory.mktemp("iss") / "iss.zarr")
    assert out.is_dir()
    return sd.read_zarr(out)


def _apply(transformation, xy: np.ndarray) -> np.ndarray:
    """``transformation`` applied to ``(x, y)`` rows."""
    m = transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    return xy @ m[:2, :2].T + m[:2, 2]


def _landing(labels: np.ndarray, pixel_xy: np.ndarray, ids: np.ndarray) -> float:
    """Fraction of points whose pixel (intrinsic ``[i, i + 1)`` convention) holds their own id."""
    col, row = np.floor(pixel_xy).astype(np.int64).T
    inside = (row >= 0) & (row < labels.shape[0]) & (col >= 0) & (col < labels.shape[1])
    hit = np.zeros(len(ids), dtype=bool)
    hit[inside] = labels[row[inside], col[inside]] == ids[inside]
    return float(hit.mean())


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# --- CosMx lung ---------------------------------------------------------------------------------


def test_cosmx_layout(cosmx):
    assert set(cosmx.coordinate_systems) == {"fov2", "fov3", "global"}
    assert set(cosmx.images) == {"fov2_image", "fov3_image"}
    assert set(cosmx.labels) == {"fov2_labels", "fov3_labels"}
    assert set(cosmx.points) == {"transcripts"}
    for n in FOVS:
        image, labels = cosmx.images[f"fov{n}_image"], cosmx.labels[f"fov{n}_labels"]
        assert image.dims == ("c", "y", "x") and image.shape[0] == 3
        assert list(image.coords["c"].values) == ["r", "g", "b"]
        assert image.dtype == np.uint8
        assert labels.dims == ("y", "x") and labels.shape == image.shape[1:]
        assert np.issubdtype(labels.dtype, np.integer)
        for element in (image, labels):
            assert set(get_transformation(element, get_all=True)) == {f"fov{n}", "global"}
    points = cosmx.points["transcripts"]
    assert set(get_transformation(points, get_all=True)) == {"global"}
    df = points.compute()
    assert {"x", "y", "fov", "cell_ID", "target", "z_plane"} <= set(df.columns)
    assert isinstance(df["target"].dtype, pd.CategoricalDtype)


def test_cosmx_table_annotates_the_labels(cosmx, shared_data):
    table = cosmx.tables["table"]
    region, region_key, instance_key = get_table_keys(table)
    assert sorted(region) == ["fov2_labels", "fov3_labels"]
    assert (region_key, instance_key) == ("fov_labels", "cell_ID")
    source = ad.read_h5ad(shared_data / "cosmx_lung" / "spatial.h5ad")
    assert table.shape == source.shape
    assert list(table.obs_names) == list(source.obs_names)
    # raw counts kept as they are
    assert abs(table.X - source.X).max() == 0
    assert np.array_equal(table.X.data, np.round(table.X.data))
    # fov: text categories that agree with the obs names and the region
    assert isinstance(table.obs["fov"].dtype, pd.CategoricalDtype)
    assert set(table.obs["fov"].cat.categories) == {"2", "3"}
    from_names = table.obs_names.str.extract(r"^fov(\d+)_c(\d+)$")
    assert list(from_names[0]) == list(table.obs["fov"].astype(str))
    assert list(from_names[1].astype(int)) == list(table.obs["cell_ID"])
    assert list(table.obs[region_key].astype(str)) == [f"fov{f}_labels" for f in from_names[0]]
    # every cell is a label of its FOV
    for name in region:
        ids = table.obs.loc[table.obs[region_key] == name, instance_key].to_numpy()
        assert len(ids) > 0
        assert np.isin(ids, np.unique(cosmx.labels[name].values)).all()
    # centroids in the global system: (x, -y) of the file's global pixels
    xy = np.asarray(source.obsm["spatial"])
    assert np.allclose(table.obsm["spatial"], np.column_stack([xy[:, 0], -xy[:, 1]]))


def _transcripts_of(cosmx, fov: int) -> pd.DataFrame:
    df = cosmx.points["transcripts"].compute()
    return df[(df["fov"] == fov) & (df["cell_ID"] > 0)]


def _pixels_via_global(cosmx, fov: int, shift: float = 0.0) -> np.ndarray:
    """Transcripts (global) -> inverse of the labels' global transform -> pixel (x, y)."""
    labels = cosmx.labels[f"fov{fov}_labels"]
    df = _transcripts_of(cosmx, fov)
    to_pixels = get_transformation(labels, "global").inverse()
    return _apply(to_pixels, df[["x", "y"]].to_numpy()) + shift


def _pixels_via_fov(cosmx, fov: int) -> np.ndarray:
    """Transcripts moved into the FOV's own system with spatialdata.transform, then to pixels."""
    labels = cosmx.labels[f"fov{fov}_labels"]
    to_fov = get_transformation_between_coordinate_systems(
        cosmx, "global", f"fov{fov}", intermediate_coordinate_systems=labels
    )
    points = sd.deepcopy(cosmx.points["transcripts"])
    set_transformation(points, to_fov, to_coordinate_system=f"fov{fov}")
    moved = sd.transform(points, to_coordinate_system=f"fov{fov}").compute()
    moved = moved[(moved["fov"] == fov) & (moved["cell_ID"] > 0)]
    to_pixels = get_transformation(labels, f"fov{fov}").inverse()
    return _apply(to_pixels, moved[["x", "y"]].to_numpy())


@pytest.mark.parametrize("fov", FOVS)
def test_cosmx_transcripts_land_on_their_cells(cosmx, fov):
    labels = cosmx.labels[f"fov{fov}_labels"].values
    ids = _transcripts_of(cosmx, fov)["cell_ID"].to_numpy()
    assert len(ids) > 1000
    via_global = _pixels_via_global(cosmx, fov)
    via_fov = _pixels_via_fov(cosmx, fov)
    assert np.allclose(via_global, via_fov)
    landed = _landing(labels, via_global, ids)
    assert landed >= 0.98
    assert _landing(labels, via_fov, ids) == landed
    # cells are about 60 pixels across: a frame off by 20 pixels along either axis misses many
    # more (about 70 % land), one flipped upside down nearly all
    for shift in ([SHIFT, 0.0], [0.0, SHIFT], [-SHIFT, -SHIFT]):
        assert _landing(labels, via_global + np.array(shift), ids) < landed - 0.2
    flipped = via_global * [1, -1] + [0, labels.shape[0]]
    assert _landing(labels, flipped, ids) < 0.2


@pytest.mark.parametrize("fov", FOVS)
def test_cosmx_global_frame_matches_the_transcript_file(cosmx, shared_data, fov):
    """Independent of the store: local pixel coordinates map to the crop as the README says."""
    tx = pd.read_csv(shared_data / "cosmx_lung" / "Lung12_tx_file.csv")
    tx = tx[(tx["fov"] == fov) & (tx["cell_ID"] > 0)]
    x0 = {2: 4800, 3: 0}[fov]
    pixel_xy = np.column_stack([tx["x_local_px"] - x0, 3648 - tx["y_local_px"]])
    labels = cosmx.labels[f"fov{fov}_labels"]
    # the labels' global transform takes these pixels to (x_global_px, -y_global_px)
    global_xy = _apply(get_transformation(labels, "global"), pixel_xy)
    expected = np.column_stack([tx["x_global_px"], -tx["y_global_px"]])
    assert np.abs(global_xy - expected).max() < 1e-6
    assert get_transformation(labels, f"fov{fov}").to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y")
    ) == pytest.approx(np.eye(3))


@pytest.mark.parametrize("fov", FOVS)
def test_cosmx_image_lies_on_the_label_grid(cosmx, fov):
    """The composite is brighter inside cells, and less so once flipped off the grid."""
    image = cosmx.images[f"fov{fov}_image"].values.astype(float).mean(axis=0)
    inside = (cosmx.labels[f"fov{fov}_labels"].values > 0).ravel()
    r = np.corrcoef(image.ravel(), inside)[0, 1]
    flipped = max(
        np.corrcoef(image[::-1].ravel(), inside)[0, 1],
        np.corrcoef(image[:, ::-1].ravel(), inside)[0, 1],
    )
    assert r > 0.3 and r > flipped + 0.3


def test_cosmx_centroids_lie_in_their_cells(cosmx):
    """The table's centroids (mean transcript position), taken to pixels, mostly hit their cell."""
    table = cosmx.tables["table"]
    for n in FOVS:
        labels = cosmx.labels[f"fov{n}_labels"]
        cells = table.obs["fov_labels"] == f"fov{n}_labels"
        to_pixels = get_transformation(labels, "global").inverse()
        pixel_xy = _apply(to_pixels, table.obsm["spatial"][cells.to_numpy()])
        ids = table.obs.loc[cells, "cell_ID"].to_numpy()
        landed = _landing(labels.values, pixel_xy, ids)
        assert landed >= 0.95
        assert _landing(labels.values, pixel_xy + SHIFT, ids) < landed - 0.2


# --- ISS CA1 ------------------------------------------------------------------------------------


def test_iss_layout_and_table(iss, shared_data):
    assert set(iss.coordinate_systems) == {"global"}
    assert not iss.images and not iss.points
    labels = iss.labels["cells"]
    assert labels.dims == ("y", "x") and labels.dtype == np.uint32
    source_labels = sp.load_npz(shared_data / "iss_ca1" / "label_image.coo.npz")
    assert labels.shape == source_labels.shape
    assert np.array_equal(labels.values, source_labels.toarray())
    assert get_transformation(labels, "global").to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y")
    ) == pytest.approx(np.eye(3))
    table = iss.tables["table"]
    assert get_table_keys(table) == ("cells", "region", "cell_id")
    source = ad.read_h5ad(shared_data / "iss_ca1" / "spatial.h5ad")
    assert table.shape == source.shape and abs(table.X - source.X).max() == 0
    ids = table.obs["cell_id"].to_numpy()
    assert list(ids) == [int(name.removeprefix("cell_")) for name in table.obs_names]
    assert np.isin(ids, np.unique(labels.values)).all()
    assert set(table.obs["region"]) == {"cells"}


def test_iss_centroids_are_cell_centres(iss, shared_data):
    """obsm['spatial'] = each cell's mean pixel centre in ``"global"`` (pixel i spans [i, i+1))."""
    labels = iss.labels["cells"].values
    table = iss.tables["table"]
    ids = table.obs["cell_id"].to_numpy()
    row, col = np.asarray(ndi.center_of_mass(np.ones(labels.shape, np.float32), labels, ids)).T
    assert np.allclose(table.obsm["spatial"], np.column_stack([col, row]) + 0.5)
    to_pixels = get_transformation(iss.labels["cells"], "global").inverse()
    pixel_xy = _apply(to_pixels, np.asarray(table.obsm["spatial"]))
    landed = _landing(labels, pixel_xy, ids)
    assert landed >= 0.99
    assert _landing(labels, pixel_xy[:, ::-1], ids) < 0.1  # (row, col) read as (x, y)
    assert _landing(labels, pixel_xy + SHIFT, ids) < landed - 0.3


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [build_cosmx_lung_store, build_iss_ca1_store])
def test_refuses_an_existing_output(build, tmp_path: Path):
    out = tmp_path / "store.zarr"
    out.mkdir()
    with pytest.raises(InputError) as exc:
        build(tmp_path / "no-data", out)
    assert "already exists" in _one_line(exc)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("build", [build_cosmx_lung_store, build_iss_ca1_store])
def test_missing_data_is_a_one_line_error(build, tmp_path: Path):
    with pytest.raises(InputError) as exc:
        build(tmp_path / "no-data", tmp_path / "store.zarr")
    assert "missing" in _one_line(exc)
    assert not (tmp_path / "store.zarr").exists()
