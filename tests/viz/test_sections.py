"""Samples and FOVs of a data set: rows, the side-by-side layout, outlines, the camera."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_spatial_impute import InputError
from napari_spatial_impute.io.files import MAX_SAMPLES, find_sample_key
from napari_spatial_impute.viz import sections as sec
from napari_spatial_impute.viz.coords import to_napari


def _cells(n_samples: int, per_sample: int, fovs_per_sample: int, seed: int = 0) -> ad.AnnData:
    """Samples that share coordinates (as sections imaged separately do), FOVs tiling each."""
    rng = np.random.default_rng(seed)
    n = n_samples * per_sample
    xy = rng.uniform(0, 1000, (n, 2))
    sample = np.repeat([f"s{i}" for i in range(n_samples)], per_sample)
    tile = np.minimum((xy[:, 0] // (1000 / fovs_per_sample)).astype(int), fovs_per_sample - 1)
    fov = np.char.add(np.char.add(sample.astype(str), "_"), tile.astype(str))
    obs = pd.DataFrame(
        {"sample": pd.Categorical(sample), "fov": pd.Categorical(fov)},
        index=[f"c{i}" for i in range(n)],
    )
    adata = ad.AnnData(X=np.zeros((n, 1), dtype=np.float32), obs=obs)
    adata.obsm["spatial"] = xy
    return adata


def _drawn_boxes(adata: ad.AnnData, key: str | None) -> dict[str, np.ndarray]:
    yx = sec.display_yx(adata, None, key)
    return {
        s: np.r_[yx[rows].min(0), yx[rows].max(0)]
        for s, rows in sec.sample_rows(adata, key).items()
    }


def test_find_sample_key_usual_names_and_refusals():
    a = _cells(3, 50, 2)
    assert find_sample_key(a, "fov") == "sample"
    assert sec.resolve_sample_key(a, None, "fov") == "sample"
    assert sec.resolve_sample_key(a, "", "fov") is None  # "" = no samples, explicitly
    a.obs["batch"] = pd.Categorical(np.arange(a.n_obs) % 2)  # splits FOVs: not a section
    del a.obs["sample"]
    assert find_sample_key(a, "fov") is None
    a.obs["donor"] = pd.Categorical(np.repeat(["d1", "d2", "d3"], 50))  # holds whole FOVs
    assert find_sample_key(a, "fov") == "donor"
    a.obs["size"] = np.linspace(0, 1, a.n_obs)  # per-cell numbers
    with pytest.raises(InputError, match="distinct values") as err:
        find_sample_key(a, "fov", "size")
    assert "\n" not in str(err.value)
    a.obs["many"] = pd.Categorical(np.arange(a.n_obs) % (MAX_SAMPLES + 1))
    with pytest.raises(InputError, match=f"at most {MAX_SAMPLES}"):
        find_sample_key(a, "fov", "many")
    assert find_sample_key(a, "fov", "fov") == "fov"  # each section one FOV
    with pytest.raises(InputError, match="not in the spatial obs"):
        find_sample_key(a, "fov", "nope")


def test_rows_partition_cells_in_natural_order():
    a = _cells(2, 300, 12)
    fovs = sec.fov_rows(a, "fov", "sample")
    assert list(fovs)[:3] == ["s0_0", "s0_1", "s0_2"] and list(fovs)[9:12] == [
        "s0_9",
        "s0_10",
        "s0_11",
    ]
    every = np.sort(np.concatenate(list(fovs.values())))
    assert np.array_equal(every, np.arange(a.n_obs))
    samples = sec.sample_rows(a, "sample")
    assert list(samples) == ["s0", "s1"]
    assert list(sec.sample_rows(a, None)) == [""]
    del a.obs["fov"]
    assert list(sec.fov_rows(a, None)) == ["0"]


def test_fov_ids_repeated_across_samples_get_the_sample_name():
    a = _cells(2, 100, 3)
    a.obs["fov"] = pd.Categorical(a.obs["fov"].astype(str).str.split("_").str[1])  # "0", "1"...
    names = list(sec.fov_rows(a, "fov", "sample"))
    assert names == ["s0 · 0", "s0 · 1", "s0 · 2", "s1 · 0", "s1 · 1", "s1 · 2"]
    assert list(sec.fov_rows(a, "fov", None)) == ["0", "1", "2"]


@settings(max_examples=25, deadline=None)
@given(n_samples=st.integers(1, 9), per_sample=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_samples_sharing_coordinates_never_overlap_where_drawn(n_samples, per_sample, seed):
    a = _cells(n_samples, per_sample, 2, seed)
    boxes = list(_drawn_boxes(a, "sample").values())
    for i, p in enumerate(boxes):
        for q in boxes[i + 1 :]:
            apart = p[2] < q[0] or q[2] < p[0] or p[3] < q[1] or q[3] < p[1]
            assert apart, (p, q)
    # each sample only moves as a whole: shapes (and distances inside it) are kept
    yx = sec.display_yx(a, None, "sample")
    raw = to_napari(a, ndim=2)
    for s, rows in sec.sample_rows(a, "sample").items():
        shift = yx[rows] - raw[rows]
        assert np.allclose(shift, shift[0])
        assert np.allclose(shift[0], sec.sample_offsets(a, "sample")[s])


def test_samples_already_apart_stay_where_they_are():
    a = _cells(3, 50, 2)
    xy = a.obsm["spatial"].copy()
    xy[a.obs["sample"] == "s1", 0] += 5000
    xy[a.obs["sample"] == "s2", 0] += 10_000
    a.obsm["spatial"] = xy
    assert all(np.allclose(v, 0) for v in sec.sample_offsets(a, "sample").values())
    assert np.allclose(sec.display_yx(a, None, "sample"), to_napari(a, ndim=2))


def test_fov_bounds_outlines_and_the_fov_at_a_position():
    a = _cells(2, 400, 4)
    center, size = sec.fov_bounds(a, "fov", "s1_2", "sample")
    rows = sec.fov_rows(a, "fov", "sample")["s1_2"]
    yx = sec.display_yx(a, rows, "sample")
    assert np.allclose(center, (yx.min(0) + yx.max(0)) / 2)
    assert np.allclose(size, yx.max(0) - yx.min(0))
    assert sec.fov_at(a, "fov", center, "sample") == "s1_2"
    assert sec.fov_at(a, "fov", center + 1e6, "sample") is None
    zoom = sec.camera_for_box(center, size, (600, 800))
    assert zoom * size.max() <= 800
    shapes, feats = sec.outline_data(a, "fov", "sample")
    assert len(shapes) == 8 + 2 and list(feats["kind"]).count("sample") == 2
    assert list(feats["name"][feats["kind"] == "sample"]) == ["s0", "s1"]
    with pytest.raises(InputError, match="not in the data; FOVs are s0_0"):
        sec.fov_bounds(a, "fov", "nope", "sample")


def test_focus_colours_dim_or_hide_every_fov_but_one():
    a = _cells(2, 200, 3)
    _, feats = sec.outline_data(a, "fov", "sample")
    is_fov = (feats["kind"] == "fov").to_numpy()
    focus = "s0_1"
    chosen = (feats["name"] == focus).to_numpy()
    assert np.all(sec.focus_colors(feats, focus, "shown")[:, 3] == 0)
    dim = sec.focus_colors(feats, focus, "dimmed")
    assert np.all(dim[chosen, 3] == 0) and np.all(dim[~is_fov, 3] == 0)
    assert np.allclose(dim[is_fov & ~chosen, 3], sec.DIM_ALPHA)
    hide = sec.focus_colors(feats, focus, "hidden", (0.1, 0.2, 0.3))
    assert np.allclose(hide[is_fov & ~chosen], (0.1, 0.2, 0.3, 1.0))
    assert np.all(sec.focus_colors(feats, None, "hidden")[:, 3] == 0)  # no focus: all shown
    with pytest.raises(InputError, match="shown, dimmed, hidden"):
        sec.focus_colors(feats, focus, "blurred")


def test_too_many_fovs_for_outlines_is_refused_quickly():
    a = _cells(1, 3 * sec.MAX_OUTLINES, 1)
    a.obs["fov"] = pd.Categorical(np.arange(a.n_obs) % (sec.MAX_OUTLINES + 1))
    with pytest.raises(InputError, match="too many outlines") as err:
        sec.outline_data(a, "fov", None)  # refused from the counts, never thousands of shapes
    assert "\n" not in str(err.value)


def test_categorical_labels_keep_codes_and_natural_order():
    from napari_spatial_impute.io.files import fov_labels

    a = _cells(1, 30, 1)
    a.obs["fov"] = pd.Categorical(
        np.array(["10", "2", "1"])[np.arange(30) % 3], categories=["10", "2", "1", "unused"]
    )
    labels = fov_labels(a, "fov")
    assert list(labels.categories) == ["1", "2", "10"]
    assert (np.asarray(labels.astype(str)) == a.obs["fov"].astype(str).to_numpy()).all()


def test_an_anndata_changed_in_place_is_laid_out_again():
    a = _cells(2, 200, 2)
    assert not all(np.allclose(v, 0) for v in sec.sample_offsets(a, "sample").values())
    xy = a.obsm["spatial"].copy()
    xy[(a.obs["sample"] == "s1").to_numpy(), 0] += 10_000  # now apart: no layout needed
    a.obsm["spatial"] = xy
    assert all(np.allclose(v, 0) for v in sec.sample_offsets(a, "sample").values())
    a.obs["sample"] = pd.Categorical(np.repeat(["x", "y", "z", "w"], 100))
    assert list(sec.sample_rows(a, "sample")) == ["w", "x", "y", "z"]


def test_cells_of_a_store_stay_over_its_images():
    """Overlapping samples are laid out side by side, except cells placed in a SpatialData
    store's coordinate system: its images and labels are drawn there, the cells must be too."""
    a = _cells(2, 200, 2)
    assert not all(np.allclose(v, 0) for v in sec.sample_offsets(a, "sample").values())
    b = _cells(2, 200, 2)
    b.uns["spatialdata"] = {"store": "/x.zarr", "coordinate_system": "global"}
    assert all(np.allclose(v, 0) for v in sec.sample_offsets(b, "sample").values())


def test_sample_names_sit_clear_of_the_fov_names():
    """Issue 24 (10): a sample's name (at its outline's upper left corner) was drawn on the
    name of its top-left FOV (the same corner). The sample's outline now has a margin: its
    corner is outside every FOV's outline, and the outlines of samples side by side stay apart."""
    a = _cells(4, 300, 3)
    shapes, feats = sec.outline_data(a, "fov", "sample")
    kinds = feats["kind"].astype(str).to_numpy()
    names = feats["name"].astype(str).to_numpy()
    fov_boxes = [
        (np.min(b, 0), np.max(b, 0)) for b, k in zip(shapes, kinds, strict=True) if k == "fov"
    ]
    fov_names = names[kinds == "fov"]
    sample_boxes = {}
    for box, kind, name in zip(shapes, kinds, names, strict=True):
        if kind != "sample":
            continue
        lo, hi = np.min(box, 0), np.max(box, 0)
        sample_boxes[name] = (lo, hi)
        own = [fb for fb, f in zip(fov_boxes, fov_names, strict=True) if f.startswith(name)]
        size = np.max(hi - lo)
        for f_lo, f_hi in own:  # the FOVs inside, the corner clear of each by a margin
            assert np.all(lo < f_lo - 0.01 * size) and np.all(hi > f_hi + 0.01 * size)
    boxes = list(sample_boxes.values())
    for i, (lo1, hi1) in enumerate(boxes):
        for lo2, hi2 in boxes[i + 1 :]:
            assert np.any(hi1 < lo2) or np.any(hi2 < lo1)  # never overlapping
