"""Diagnostics figures: panel grids that fit a dock, and saving as PNG/SVG/PDF (issue 12)."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from napari_spatial_impute import InputError
from napari_spatial_impute.viz.plots import panel_grid, save_figure


@pytest.mark.parametrize(("n", "ncols", "shape"), [(5, 1, (5, 1)), (5, 2, (3, 2)), (5, 9, (1, 5))])
def test_panel_grid_rows_of_ncols_and_spare_axes_off(n, ncols, shape):
    fig = Figure()
    axes = panel_grid(fig, n, ncols)
    assert len(axes) == shape[0] * shape[1]
    assert sum(ax.axison for ax in axes) == n
    rows = {round(ax.get_position().y0, 3) for ax in axes}
    assert len(rows) == shape[0]


@pytest.mark.parametrize(
    ("suffix", "magic"), [("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")]
)
def test_save_figure_in_each_format(tmp_path, suffix, magic):
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / f"fig.{suffix.upper()}")
    assert out.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_save_figure_refuses_other_formats_and_keeps_an_earlier_file(tmp_path, monkeypatch):
    fig = Figure()
    with pytest.raises(InputError, match=r"end the name with \.png, \.svg, \.pdf"):
        save_figure(fig, tmp_path / "fig.jpg")
    earlier = tmp_path / "fig.png"
    earlier.write_bytes(b"earlier")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, earlier)
    assert earlier.read_bytes() == b"earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def _choice_result(**choice):
    import anndata as ad
    import numpy as np

    adata = ad.AnnData(np.zeros((3, 2), dtype=np.float32))
    adata.uns["spatial_impute"] = {"params": {"method": choice.get("chosen", "ensemble")}}
    if choice:
        adata.uns["spatial_impute"]["map_choice"] = choice
    return adata


def test_map_choice_of_a_result_and_its_text(tmp_path):
    import anndata as ad
    import numpy as np

    from napari_spatial_impute.viz.plots import map_choice_of, map_choice_text

    res = _choice_result(
        chosen="tangram",
        candidates=np.array(["ensemble", "tangram"], dtype=object),
        inner_median_pearson=np.array([0.2, np.nan]),
        size_baseline=0.05,
        held_genes=np.array(["a", "b"], dtype=object),
        n_cells=1200,
        reason="",
        summary="map: tangram, ...",
        warning="imputation is weak on these data: x",
    )
    res.write_h5ad(tmp_path / "r.h5ad")  # as read back from a file
    choice = map_choice_of(ad.read_h5ad(tmp_path / "r.h5ad"))
    assert choice is not None and choice.measured and choice.chosen == "tangram"
    assert choice.candidates == ("ensemble", "tangram") and choice.n_held == 2
    assert choice.warning.startswith("imputation is weak")
    text = map_choice_text(choice)
    assert "2 held-out training genes (1,200 cells)" in text
    assert "ensemble 0.200, tangram n/a (chosen); size baseline 0.050" in text
    # no choice: too few genes (the reason is the text), a one-line record only, none at all
    few = _choice_result(chosen="ensemble", reason="5 training genes are too few", summary="s")
    assert map_choice_of(few) is not None and not map_choice_of(few).measured
    assert map_choice_text(map_choice_of(few)) == "s"
    line = _choice_result()
    line.uns["spatial_impute"]["params"]["map_choice"] = "map: ensemble, chosen on ..."
    assert map_choice_of(line).summary == "map: ensemble, chosen on ..."
    assert map_choice_of(_choice_result()) is None and map_choice_text(None) == ""


def test_old_result_has_five_training_panels_and_no_choice():
    from pathlib import Path

    import anndata as ad

    from napari_spatial_impute.viz.plots import map_choice_of, plot_training_scores, training_panels

    old = ad.read_h5ad(Path(__file__).parents[1] / "data" / "result_v0.1.0.h5ad")
    assert map_choice_of(old) is None and training_panels(old) == 5
    fig = Figure(figsize=(12, 3))
    plot_training_scores(fig, old)
    assert [ax.get_title() for ax in fig.axes][4].startswith("score per epoch")
