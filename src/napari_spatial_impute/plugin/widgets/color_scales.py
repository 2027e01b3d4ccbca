"""The colour scales of the shown values: one titled bar per colour-mapped exploration layer.

The Explore widget colours its layers directly (an RGBA array computed with the values, see
:func:`~napari_spatial_impute.viz.explore.colorize`), so napari's own colour bar, which needs
its colormap path, has nothing to draw. This panel draws the bars instead, one row per shown
role in the side-by-side order (imputed, measured, interval width, probability): the title
(:func:`~napari_spatial_impute.viz.colorbars.colorbar_title`: value, kind, units), the
colormap as a gradient, and its limits. It is rebuilt from the layers' metadata (``colormap``,
``limits``) whenever a value is shown or a layer comes or goes, so it can never keep a previous
gene's title.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Points
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QGridLayout, QLabel, QWidget

from napari_spatial_impute.plugin.widgets.layer_ops import SIDE_BY_SIDE_ROLES
from napari_spatial_impute.viz.cell_shapes import HIDDEN_FOR_MASKS
from napari_spatial_impute.viz.colorbars import TITLED_KINDS, colorbar_title
from napari_spatial_impute.viz.explore import colormap_lut
from napari_spatial_impute.viz.layers import plugin_meta

#: Size of a bar's gradient in pixels.
BAR_SIZE = (160, 12)


def scale_rows(viewer: Any, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``title``, ``colormap``, ``limits`` of every visible colour-mapped exploration layer (or
    one hidden because its cells are drawn in their masks, coloured the same), in the
    side-by-side order of roles (one row per layer)."""
    rows = []
    for layer in viewer.layers:
        md = plugin_meta(layer)
        if (
            not isinstance(layer, Points)
            or not md.get("explore")
            or md.get("kind") not in TITLED_KINDS
            or "limits" not in md
            or not (layer.visible or md.get(HIDDEN_FOR_MASKS))
        ):
            continue
        rows.append(
            {
                "title": colorbar_title(md, params),
                "colormap": str(md.get("colormap", "viridis")),
                "limits": tuple(float(v) for v in md["limits"]),
                "kind": md.get("kind"),
            }
        )
    order = {role: i for i, role in enumerate(SIDE_BY_SIDE_ROLES)}
    return sorted(rows, key=lambda r: order.get(str(r["kind"]), len(order)))


def gradient_pixmap(colormap: str, size: tuple[int, int] = BAR_SIZE) -> QPixmap:
    """A horizontal bar of ``colormap``, low end on the left."""
    w, h = size
    lut = colormap_lut(colormap, w)
    rgba = np.ascontiguousarray(
        np.repeat((lut[None, :, :] * 255).round().astype(np.uint8), h, axis=0)
    )
    buffer = rgba.tobytes()  # held until the image is copied out of it
    image = QImage(buffer, w, h, 4 * w, QImage.Format.Format_RGBA8888)
    return QPixmap.fromImage(image.copy())


def _number(v: float) -> str:
    return f"{v:.3g}"


class ColorScales(QWidget):
    """Titled colour bars of the shown exploration layers (see the module's docstring).

    Parameters
    ----------
    viewer
        The viewer.
    model
        The viewer's shared model (for the result's units).
    """

    def __init__(self, viewer: Any, model: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self.model = model
        self.shown: list[dict[str, Any]] = []
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._widgets: list[QWidget] = []
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        self.refresh()

    def _params(self) -> dict[str, Any]:
        result = self.model.result
        if result is None:
            return {}
        return dict(result.uns.get("spatial_impute", {}).get("params", {}))

    def refresh(self, *_: Any) -> list[dict[str, Any]]:
        """Rebuild the bars from the layers (a few widgets: cheap); returns what they show."""
        rows = scale_rows(self.viewer, self._params())
        if rows == self.shown:
            return rows
        for w in self._widgets:
            self._grid.removeWidget(w)
            w.hide()  # deleted later: until then it would still be drawn under the new ones
            w.deleteLater()
        self._widgets = []
        for i, row in enumerate(rows):
            title = QLabel(row["title"])
            title.setWordWrap(True)
            bar = QLabel()
            bar.setPixmap(gradient_pixmap(row["colormap"]))
            bar.setToolTip(f"{row['colormap']}: {row['limits'][0]:.4g} to {row['limits'][1]:.4g}")
            lo, hi = (QLabel(_number(v)) for v in row["limits"])
            self._grid.addWidget(title, 2 * i, 0, 1, 3)
            self._grid.addWidget(lo, 2 * i + 1, 0)
            self._grid.addWidget(bar, 2 * i + 1, 1)
            self._grid.addWidget(hi, 2 * i + 1, 2)
            self._widgets += [title, bar, lo, hi]
        self.shown = rows
        self.setVisible(bool(rows))
        return rows

    def close_viewer_hooks(self) -> None:
        """Stop listening to the viewer (the widget is going away)."""
        for signal in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            signal.disconnect(self.refresh)


__all__ = ["ColorScales", "gradient_pixmap", "scale_rows"]
