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
