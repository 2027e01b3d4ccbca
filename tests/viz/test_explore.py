"""Pure exploration helpers: layer specs, colours, shared limits, hover text, linking maps, label
images."""

from __future__ import annotations

import functools
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from napari_spatial_impute import InputError, load_merfish_hypothalamus, map_cells_to_space
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.io import schema
from napari_spatial_impute.viz import explore as ex
from napari_spatial_impute.viz import image_link as il
from napari_spatial_impute.viz import plots


@functools.lru_cache(maxsize=1)
def _data():
    ref, spa = load_merfish_hypothalamus()
    x = spa.obsm["spatial"][:, 0]
    spa.obs["fov"] = pd.Categorical(
        np.where(x < np.quantile(x, 0.3), "10", np.where(x < np.quantile(x, 0.7), "2", "1"))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = result_to_anndata(map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=20))
    return ref, res


@pytest.fixture
def data():
    ref, res = _data()
    return ref.copy(), res.copy()


def test_robust_limits():
    v = np.r_[np.zeros(10), np.linspace(0, 1, 100), 1000.0]
    lo, hi = ex.robust_limits(v)
    assert lo == 0.0 and hi < 2.0  # the outlier does not stretch the scale
    assert ex.robust_limits(np.full(5, 3.0)) == (3.0, pytest.approx(3.003))
    assert ex.robust_limits(np.array([np.nan])) == (0.0, 1.0)
    assert ex.robust_limits(np.zeros(4))[1] > 0


def test_value_specs_one_layer_for_every_sample(data):
    ref, res = data
    specs = ex.value_layer_specs(res, "imputed", "GAD1", fov_key="fov")
    assert [s.name for s in specs] == ["Gad1 imputed"]  # no sample column: one layer, all cells
    assert np.array_equal(specs[0].meta["rows"], np.arange(res.n_obs))
    assert list(specs[0].features["fov"].cat.categories) == ["1", "2", "10"]  # FOV: a feature
    res.obs["sample"] = pd.Categorical(np.where(np.arange(res.n_obs) % 3 == 0, "B", "A"))
    (spec,) = ex.value_layer_specs(res, "imputed", "GAD1", fov_key="fov", sample_key="sample")
    assert spec.name == "Gad1 imputed" and spec.meta["sample"] == ""
    rows = spec.meta["rows"]
    assert np.array_equal(np.sort(rows), np.arange(res.n_obs))  # every cell once
    assert list(spec.features["sample"].astype(str)) == list(res.obs["sample"].astype(str)[rows])
    limits = ex.robust_limits(ex.values(res, "imputed", "Gad1"))
    assert spec.meta["limits"] == limits and spec.meta["colormap"] == "viridis"
    assert spec.meta["columns"] == ["Gad1", "90% interval ±"]
    kw = spec.add_kwargs()
    assert kw["face_color"].shape == (res.n_obs, 4) and kw["face_color"].dtype == np.float32
    assert "translate" not in kw and "face_colormap" not in kw
    assert spec.features["Gad1"].dtype == np.float32
    assert np.allclose(spec.features["Gad1"], ex.values(res, "imputed", "Gad1")[rows])
    assert np.array_equal(
        kw["face_color"], ex.colorize(spec.features["Gad1"].to_numpy(), "viridis", limits)
    )
    # the two samples share coordinates: laid out side by side in the layer's coordinates
    from napari_spatial_impute.viz.sections import display_yx

    assert np.allclose(spec.data, display_yx(res, rows, "sample"))
    a = spec.data[spec.features["sample"] == "A"]
    b = spec.data[spec.features["sample"] == "B"]
    assert a[:, 1].max() < b[:, 1].min() or a[:, 0].max() < b[:, 0].min()
    meas = ex.value_layer_specs(res, "measured", "Gad1", sample_key="sample", samples=["B"])
    assert meas[0].name == "Gad1 measured"
    assert set(meas[0].features["sample"].astype(str)) == {"B"}
    assert np.allclose(
        meas[0].features["Gad1"],
        res.obsm["measured"]["Gad1"].to_numpy()[meas[0].meta["rows"]],
    )
    cl = ex.cluster_names(res)[0]
    prob = ex.value_layer_specs(res, "probability", cl, sample_key="")
    assert prob[0].name == f"{cl} probability"
    assert prob[0].meta["limits"][0] == 0.0 and prob[0].meta["colormap"] == "magma"


def test_colorize_is_napari_s_colormap_per_cell():
    """The vectorised lookup gives each cell the colour napari's colormap path gives it (one
    cell at a time), to the table's precision; NaN gets its own colour, out of range clips."""
    from napari.utils.colormaps import ensure_colormap

    rng = np.random.default_rng(0)
    vals = np.r_[rng.normal(2.0, 1.0, 500), -10.0, 10.0, np.nan].astype(np.float32)
    lo, hi = 1.0, 3.0
    for name in ("viridis", "magma", "plasma"):
        got = ex.colorize(vals, name, (lo, hi), nan_color=(0.5, 0.5, 0.5, 0.5))
        cmap = ensure_colormap(name)
        for i, v in enumerate(vals[:-1]):
            expected = cmap.map(np.array([np.clip((v - lo) / (hi - lo), 0, 1)]))[0]
            assert np.abs(got[i] - expected).max() < 0.02, (name, v)
        assert np.allclose(got[-1], 0.5)
        assert np.allclose(got[-3], cmap.map(np.array([0.0]))[0], atol=0.01)
        assert np.allclose(got[-2], cmap.map(np.array([1.0]))[0], atol=0.01)


def test_errors_are_one_line(data):
    ref, res = data
    for call in (
        lambda: ex.values(res, "imputed", "nope"),
        lambda: ex.values(res, "probability", "nope"),
        lambda: ex.values(res, "other", "Gad1"),
        lambda: ex.value_layer_specs(res, "imputed", "Gad1", samples=["99"]),
        lambda: ex.value_layer_specs(res, "imputed", "Gad1", sample_key="mapped_share"),
    ):
        with pytest.raises(InputError) as err:
            call()
        assert "\n" not in str(err.value)


def test_predicted_specs_categorical(data):
    ref, res = data
    specs = ex.predicted_layer_specs(res, fov_key="fov")
    s = specs[0]
    assert s.name == "most likely cell_type"
    assert isinstance(s.features["cell_type"].dtype, pd.CategoricalDtype)
    predicted = res.obs["cell_type_predicted"].astype(str).to_numpy()
    assert (s.features["cell_type"].astype(str).to_numpy() == predicted).all()
    cycle = s.kwargs["face_color_cycle"]
    assert set(cycle) == set(res.obs["cell_type_predicted"].cat.categories)
    assert len(set(cycle.values())) == len(cycle)


def test_hover_text(data):
    ref, res = data
    df = ex.hover_features(res, np.array([0, 1]), fov_key="fov")
    assert list(df.columns) == ["cell", "fov", "top cluster", "p", "2nd cluster", "p 2nd"]
    assert df.loc[0, "cell"] == res.obs_names[0]
    assert df.loc[0, "fov"] == str(res.obs["fov"].iloc[0])
    probs = res.obsm["cluster_probabilities"]
    order = np.argsort(-probs.iloc[0].to_numpy())
    assert df.loc[0, "top cluster"] == str(probs.columns[order[0]])
    assert df.loc[0, "2nd cluster"] == str(probs.columns[order[1]])
    assert df.loc[0, "p"] == pytest.approx(probs.iloc[0, order[0]])
    assert df.loc[0, "p"] >= df.loc[0, "p 2nd"]
    text = ex.cell_summary(res, 0, ["Gad1"])  # the click summary keeps the top imputed genes
    row0 = np.asarray(res.X[0]).ravel()
    assert f"top imputed: {res.var_names[np.argmax(row0)]} " in text
    assert res.obs_names[0] in text and "Gad1 imputed" in text
    hw = res.layers["interval_90_halfwidth"][0, res.var_names.get_loc("Gad1")]
    assert f"(90% interval ± {hw:.3g})" in text


def test_top_clusters_match_a_full_sort():
    rng = np.random.default_rng(1)
    n, k = 3000, 7
    res = ad.AnnData(X=np.zeros((n, 1), dtype=np.float32))
    p = rng.dirichlet(np.ones(k), n).astype(np.float32)
    res.obsm["cluster_probabilities"] = pd.DataFrame(
        p, columns=list("ABCDEFG"), index=res.obs_names
    )
    rows = rng.permutation(n)[:1000]
    got = ex.top_clusters(res, rows)
    order = np.argsort(-p[rows], axis=1)
    names = np.array(list("ABCDEFG"))
    assert (got["top cluster"].astype(str).to_numpy() == names[order[:, 0]]).all()
    assert (got["2nd cluster"].astype(str).to_numpy() == names[order[:, 1]]).all()
    assert np.allclose(got["p"], p[rows, order[:, 0]])
    assert np.allclose(got["p 2nd"], p[rows, order[:, 1]])


def test_linking_maps(data):
    ref, res = data
    units = ex.unit_matrix(res, ref)
    assert units.shape == (ref.n_obs, ref.n_obs)
    w = ex.reference_weights(res, ref, [3], units)
    top = res.obsm["mapping_top_index"][3]
    assert set(w.index) == set(top)
    assert np.isclose(w.sum(), res.obsm["mapping_top_share"][3].sum())
    assert w.index[0] == top[0]
    back = ex.spatial_rows_for_reference(res, ref, [top[0]], units)
    assert 3 in back
    assert ex.reference_weights(res, ref, [], units).empty
    labels = ref.obs["cell_type"].astype(str)
    assert ex.dominant_cluster(ref, "cell_type", [0, 0, 1]) == labels.iloc[0]


def test_label_image_functions(tmp_path):
    labels = np.zeros((40, 50), dtype=np.int32)
    labels[5:10, 5:10] = 3
    labels[20:30, 30:40] = 7
    cent = il.label_centroids(labels)
    assert list(cent.index) == [3, 7]
    assert np.allclose(cent.loc[7], (24.5, 34.5))
    # cells at scale 2, offset (100, -50), y flipped
    truth = il.Alignment((-2.0, 2.0), (100.0, -50.0))
    yx = truth.to_world(cent.to_numpy())
    fit = il.fit_alignment(labels, yx, np.array([3, 7, -1])[:2], min_cells=2)
    assert np.allclose(fit.scale, truth.scale) and np.allclose(fit.translate, truth.translate)
    assert fit.rms < 1e-9
    assert il.label_at(labels, fit, truth.to_world(np.array([25.0, 35.0]))) == 7
    assert il.label_at(labels, fit, (1e6, 1e6)) == 0
    with pytest.raises(InputError):
        il.fit_alignment(labels, yx[:1], np.array([3]))
    img = il.paint_labels(labels, np.array([7, 3, 99, -1]), np.array([1.5, 2.5, 9.0, 9.0]))
    assert img.dtype == np.float32
    assert (
        np.all(img[labels == 7] == 1.5)
        and np.all(img[labels == 3] == 2.5)
        and np.isnan(img[labels == 0]).all()
    )
    assert il.rows_by_label(np.array([5, -1, 5, 2])) == {5: 0, 2: 3}
    ids = il.label_ids_from_names(["fov2_c113", "cell_7", "x"])
    assert ids.tolist() == [113, 7, -1]
    obs = pd.DataFrame({"label": [4, 5, np.nan]})
    assert il.label_ids_from_names(["a", "b", "c"], obs).tolist() == [4, 5, -1]
    assert il.guess_fov("CellLabels_F002.tif", ["2", "3"]) == "2"
    assert il.guess_fov("slice3.tif", ["slice1", "slice3"]) == "slice3"
    assert il.guess_fov("labels.tif", ["1"]) is None
    off = il.alignment_from_offset(10.0, 20.0, 40, flip_y=True)
    assert np.allclose(off.to_world(np.array([[40.0, 0.0]])), [[20.0, 10.0]])
    # files
    import scipy.sparse as sps
    import tifffile

    sps.save_npz(tmp_path / "l.coo.npz", sps.coo_matrix(labels))
    assert np.array_equal(il.load_label_image(tmp_path / "l.coo.npz"), labels)
    tifffile.imwrite(tmp_path / "l.tif", labels.astype(np.float32))
    assert il.load_label_image(tmp_path / "l.tif").dtype.kind == "i"
    tifffile.imwrite(tmp_path / "bad.tif", np.full((4, 4), 0.5, dtype=np.float32))
    with pytest.raises(InputError):
        il.load_label_image(tmp_path / "bad.tif")
    with pytest.raises(InputError):
        il.load_label_image(tmp_path / "missing.tif")
    (tmp_path / "pos.csv").write_text("fov,x_global_px,y_global_px\n2,1.5,-3\n")
    pos = il.read_fov_positions(tmp_path / "pos.csv")
    assert pos.loc["2", "x"] == 1.5 and pos.loc["2", "y"] == -3


def test_plots_draw(data):
    ref, res = data
    fig = Figure(figsize=(12, 4))
    scatters = plots.plot_training_scores(fig, res)
    assert len(scatters) == 3 and len(scatters[0].genes) == int(res.var["is_training"].sum())
    from napari_spatial_impute import validate_cell_types

    markers = plots.default_markers(res, n=4)
    assert 1 <= len(markers) <= 4 and len(set(markers)) == len(markers)
    table = validate_cell_types(res, markers=markers)
    fig2 = Figure()
    plots.plot_cell_type_validation(fig2, table)
    assert len(fig2.axes) == len(markers)
    assert plots.marker_list("gad1, SLC17A6 nope", res.var_names) == ["Gad1", "Slc17a6"]
    cv = pd.DataFrame({"gene": ["a", "b", "c"], "pearson": [0.1, np.nan, 0.3]})
    assert plots.cv_summary_text(cv) == "median Pearson 0.200 over 3 held-out genes (1 NaN)"


def test_large_layer_spec_colours_every_cell_in_one_array():
    """200,000 cells: the layer data is built with every cell's colour in one RGBA array (the
    one setter napari gets), equal to the per-cell colormap lookup; no timing (issue 24)."""
    rng = np.random.default_rng(0)
    n, g = 200_000, 50
    res = ad.AnnData(X=rng.random((n, g), dtype=np.float32))
    res.var_names = [f"G{i}" for i in range(g)]
    res.var["is_shared"] = False
    res.var["measured_name"] = ""
    res.obsm["spatial"] = rng.random((n, 2)) * 1000
    res.obsm["cluster_probabilities"] = pd.DataFrame(
        rng.dirichlet(np.ones(5), n).astype(np.float32), columns=list("ABCDE"), index=res.obs_names
    )
    specs = ex.value_layer_specs(res, "imputed", "G3")
    assert len(specs) == 1 and len(specs[0].data) == n
    rgba = specs[0].kwargs["face_color"]
    assert rgba.shape == (n, 4) and rgba.dtype == np.float32
    vals = specs[0].features["G3"].to_numpy()
    lo, hi = specs[0].meta["limits"]
    lut = ex.colormap_lut("viridis")
    pick = rng.choice(n, 200, replace=False)  # the per-cell reference on a sample of cells
    for i in pick:
        k = int(round(np.clip((vals[i] - lo) / (hi - lo), 0, 1) * (len(lut) - 1)))
        assert np.allclose(rgba[i], lut[k])


# ---------------------------------------------------------------------------------------------
# prediction intervals and per-gene reliability


def test_interval_specs_names_values_and_shared_limits(data):
    from napari_spatial_impute.viz import intervals as eu

    ref, res = data
    assert schema.interval_levels(res) == ["90", "67"]
    j = res.var_names.get_loc("Gad1")
    for level in ("90", 90, 0.9):  # any spelling of the level
        w = eu.interval_widths(res, "gad1", level)
        assert np.allclose(w, 2 * res.layers["interval_90_halfwidth"][:, j])
    specs = eu.interval_layer_specs(res, "gad1", "67", fov_key="fov")
    assert [s.name for s in specs] == ["Gad1 67% interval width"]
    all_w = 2 * np.asarray(res.layers["interval_67_halfwidth"][:, j], dtype=np.float64)
    for s in specs:
        md = s.meta
        assert md["kind"] == "interval" and md["level"] == "67" and md["value"] == "Gad1"
        column = "Gad1 67% interval width"
        assert md["columns"] == [column]
        assert np.allclose(s.features[column], all_w[md["rows"]])
        assert s.meta["limits"] == ex.robust_limits(all_w) and s.meta["colormap"] == "plasma"
    # wider nominal coverage, wider intervals (same cells, same gene)
    assert (eu.interval_widths(res, "Gad1", "90") >= eu.interval_widths(res, "Gad1", "67")).all()
    with pytest.raises(InputError, match="no 50% intervals; levels are 90, 67"):
        eu.interval_layer_specs(res, "Gad1", "50")


def test_imputed_hover_has_interval_only_with_intervals(data):
    from napari_spatial_impute.viz import intervals as eu

    ref, res = data
    spec = ex.value_layer_specs(res, "imputed", "Gad1", fov_key="fov")[0]
    rows = spec.meta["rows"]
    assert np.allclose(spec.features["90% interval ±"], schema.halfwidths(res, "Gad1", "90", rows))
    for k in list(res.layers.keys()):
        del res.layers[k]
    spec = ex.value_layer_specs(res, "imputed", "Gad1", fov_key="fov")[0]
    assert "90% interval ±" not in spec.features.columns
    assert schema.interval_levels(res) == []
    with pytest.raises(InputError, match="no 90% intervals"):
        eu.interval_widths(res, "Gad1")


def test_wide_mask_and_masked_values():
    from napari_spatial_impute.viz import intervals as eu

    widths = np.array([0.5, 1.0, 1.5, np.nan, 3.0])
    vals = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert eu.wide_mask(widths, 1.0).tolist() == [False, False, True, True, True]
    out = eu.masked_values(vals, widths, 1.0)
    assert out[:2].tolist() == [1.0, 2.0] and np.isnan(out[2:]).all()
    assert not np.isnan(vals).any()  # the input is left alone


def test_reliability_table_and_calibration_text(data):
    from napari_spatial_impute.viz import intervals as eu

    ref, res = data
    table = eu.reliability_table(res)
    assert list(table.columns) == list(eu.RELIABILITY_COLUMNS)
    assert sorted(table["gene"]) == sorted(map(str, res.var_names))
    p = table["predicted_pearson"].to_numpy()
    assert (np.diff(p) <= 0).all()
    g = table.loc[0, "gene"]
    assert p[0] == res.var.loc[g, "predicted_pearson"]
    assert table.loc[0, "is_training"] == bool(res.var.loc[g, "is_training"])
    text = eu.calibration_text(res)
    widths = eu.mean_widths(res)
    assert widths["90"] > widths["67"] > 0
    assert f"90%: {widths['90']:.3g}" in text and f"median {np.median(p):.3f}" in text
    old = res.copy()
    old.var = old.var.drop(columns=["predicted_pearson"])
    for k in list(old.layers.keys()):
        del old.layers[k]
    assert eu.reliability_table(old).empty
    assert "no prediction intervals" in eu.calibration_text(old)


def test_cv_summary_with_uncertainty_columns():
    cv = pd.DataFrame(
        {
            "gene": list("abcd"),
            "pearson": [0.1, 0.2, 0.3, 0.4],
            "predicted_pearson": [0.4, 0.3, 0.2, 0.1],
            "coverage_90": [0.9, 0.8, 1.0, 0.9],
            "coverage_67": [0.6, 0.7, 0.7, 0.6],
            "width_90": [1.0, 2.0, 3.0, 4.0],
        }
    )
    text = plots.cv_summary_text(cv)
    assert text == (
        "median Pearson 0.250 over 4 held-out genes; interval coverage 90%: 0.90, 67%: 0.65; "
        "reliability Spearman -1.00"
    )
