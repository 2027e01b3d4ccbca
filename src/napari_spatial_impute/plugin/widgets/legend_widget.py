"""A docked legend of the selected categorical layer: swatch, name and cell count per category.

It follows the viewer's selected layer. For a plugin Points layer coloured by categories (the
most likely cluster, or a data set's layer coloured by a text column) it lists each category
with its colour (as drawn: the colour of its first cell), its name and its number of cells, most
frequent first. Unticking a category hides exactly its cells, in one layer for all categories
(never a layer per category): its colour in the layer's colour cycle becomes transparent, and
the layer's ``shown`` mask leaves its cells out. (napari 0.9 draws every point of a layer whose
dimensions are all displayed whatever ``shown`` says, so the colour does the hiding in 2D.)
*Show all* / *Hide all* tick or untick every one. What was hidden is kept per layer, so
selecting another layer and coming back keeps it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
)

from napari_spatial_impute.plugin.widgets.base import PluginWidget
from napari_spatial_impute.viz.layers import is_categorical, plugin_meta

#: Metadata entry (in the plugin's dict of a layer) with the categories the legend hid.
HIDDEN_KEY = "legend_hidden"
#: Metadata entry with each category's colour before the legend touched the layer.
COLORS_KEY = "legend_colors"


def category_codes(layer: Any, column: str) -> tuple[np.ndarray, list[str]]:
    """``(codes, names)``: each cell's category code in ``column`` and the categories as text.

    Works on the Categorical's integer codes: converting a million cells' values to text took
    a noticeable fraction of a second at every selection and every toggle.
    """
    cat = pd.Categorical(layer.features[column])
    return np.asarray(cat.codes), [str(c) for c in cat.categories]


def category_rgba(layer: Any, column: str) -> dict[str, tuple[float, ...]]:
    """Each category's colour as drawn before any hiding (kept in the layer's metadata)."""
    meta = plugin_meta(layer)
    stored = meta.get(COLORS_KEY) if meta else None
    if stored:
        return {str(k): tuple(v) for k, v in stored.items()}
    codes, names = category_codes(layer, column)
    colors = np.asarray(layer.face_color)
    present, first = np.unique(codes[codes >= 0], return_index=True)
    first = np.flatnonzero(codes >= 0)[first]
    out = {
        names[c]: tuple(float(x) for x in colors[i]) for c, i in zip(present, first, strict=True)
    }
    if meta:
        meta[COLORS_KEY] = out
    return out


def legend_column(layer: Any) -> str | None:
    """The categorical feature column a plugin Points layer is coloured by, or ``None``."""
    meta = plugin_meta(layer)
    features = getattr(layer, "features", None)
    if not meta or features is None or getattr(layer, "face_color_mode", "") != "cycle":
        return None
    for column in (meta.get("color_by"), meta.get("value")):
        if column and column in features.columns and is_categorical(features[column]):
            return str(column)
    return None


def legend_rows(layers: list[Any], column: str) -> pd.DataFrame:
    """One row per category present in ``layers``: ``category``, ``count`` (cells in all of
    them), ``color`` (RGBA as drawn before any hiding), most cells first."""
    counts: dict[str, int] = {}
    colors: dict[str, tuple[float, ...]] = {}
    for lay in reversed(layers):
        colors.update(category_rgba(lay, column))
        codes, names = category_codes(lay, column)
        per_code = np.bincount(codes[codes >= 0], minlength=len(names))
        for name, n in zip(names, per_code, strict=True):
            if n:
                counts[name] = counts.get(name, 0) + int(n)
    rows = pd.DataFrame(
        {
            "category": list(counts),
            "count": np.fromiter(counts.values(), dtype=np.int64, count=len(counts)),
            "color": [colors[c] for c in counts],
        }
    )
    return rows.sort_values(["count", "category"], ascending=[False, True], kind="stable")


def sibling_layers(viewer: Any, layer: Any, column: str) -> list[Any]:
    """``layer`` and the viewer's other plugin layers showing the same thing (its other samples)."""
    meta = plugin_meta(layer)
    same = [
        lay
        for lay in viewer.layers
        if legend_column(lay) == column
        and plugin_meta(lay).get("kind") == meta.get("kind")
        and plugin_meta(lay).get("value") == meta.get("value")
    ]
    return same or [layer]


class LegendWidget(PluginWidget):
    """Legend of the selected categorical layer; untick a category to hide its cells.

    The layer's siblings (the plugin layers showing the same thing in other samples) are listed and
    hidden together with it.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it in).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.layer: Any = None
        self.layers: list[Any] = []  # the selected layer and its siblings
        self.column: str | None = None
        self.title = QLabel("Select a layer coloured by categories (e.g. the most likely cluster).")
        self.title.setWordWrap(True)
        self.list = QListWidget()
        self.list.itemChanged.connect(self._on_item_changed)
        self.show_all = QPushButton("Show all")
        self.show_all.clicked.connect(lambda: self.set_all(True))
        self.hide_all = QPushButton("Hide all")
        self.hide_all.clicked.connect(lambda: self.set_all(False))
        buttons = QHBoxLayout()
        buttons.addWidget(self.show_all)
        buttons.addWidget(self.hide_all)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        napari_viewer.layers.selection.events.active.connect(self.refresh)
        napari_viewer.layers.events.removed.connect(self.refresh)
        self.refresh()

    # ------------------------------------------------------------------ filling
    def refresh(self, *_: Any) -> None:
        """List the categories of the selected layer (or say there is nothing to list)."""
        layer = self.viewer.layers.selection.active
        column = legend_column(layer) if layer is not None else None
        self.list.blockSignals(True)
        self.list.clear()
        self.layer, self.layers, self.column = None, [], None
        if layer is None or column is None:
            self.title.setText(
                "Select a layer coloured by categories (e.g. the most likely cluster)."
            )
            self.list.blockSignals(False)
            self._enable(False)
            return
        self.layer, self.column = layer, column
        self.layers = sibling_layers(self.viewer, layer, column)
        hidden = set(plugin_meta(layer).get(HIDDEN_KEY, ()))
        rows = legend_rows(self.layers, column)
        where = f"{len(self.layers)} layers" if len(self.layers) > 1 else layer.name
        self.title.setText(f"{column} ({where}): {len(rows)} categories")
        for category, count, color in rows.itertuples(index=False):
            item = QListWidgetItem(f"{category}  ({count:,})")
            item.setData(Qt.ItemDataRole.UserRole, category)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(
                Qt.CheckState.Unchecked if category in hidden else Qt.CheckState.Checked
            )
            item.setIcon(_swatch(color))
            self.list.addItem(item)
        self.list.blockSignals(False)
        self._enable(True)

    def _enable(self, on: bool) -> None:
        self.show_all.setEnabled(on)
        self.hide_all.setEnabled(on)

    # ------------------------------------------------------------------ hiding
    def categories(self) -> list[str]:
        """The listed categories, in the list's order."""
        items = (self.list.item(i) for i in range(self.list.count()))
        return [str(item.data(Qt.ItemDataRole.UserRole)) for item in items if item is not None]

    def hidden(self) -> list[str]:
        """The unticked categories."""
        return [
            str(item.data(Qt.ItemDataRole.UserRole))
            for item in (self.list.item(i) for i in range(self.list.count()))
            if item is not None and item.checkState() != Qt.CheckState.Checked
        ]

    def set_visible(self, category: str, visible: bool) -> None:
        """Tick (show) or untick (hide) one category."""
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item is not None and item.data(Qt.ItemDataRole.UserRole) == category:
                item.setCheckState(Qt.CheckState.Checked if visible else Qt.CheckState.Unchecked)
                return
        raise KeyError(f"category {category!r} is not in the legend")

    def set_all(self, visible: bool) -> None:
        """Tick or untick every category (one update of the layer)."""
        self.list.blockSignals(True)
        state = Qt.CheckState.Checked if visible else Qt.CheckState.Unchecked
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item is not None:
                item.setCheckState(state)
        self.list.blockSignals(False)
        self._apply()

    def _on_item_changed(self, *_: Any) -> None:
        self._apply()

    def _apply(self) -> None:
        if self.column is None:
            return
        hidden = self.hidden()
        for layer in self.layers:
            colors = category_rgba(layer, self.column)
            layer.face_color_cycle = {
                cat: (*rgba[:3], 0.0) if cat in hidden else rgba for cat, rgba in colors.items()
            }
            codes, names = category_codes(layer, self.column)
            gone = [i for i, name in enumerate(names) if name in hidden]
            layer.shown = ~np.isin(codes, gone)
            meta = plugin_meta(layer)
            if meta:
                meta[HIDDEN_KEY] = hidden


def _swatch(rgba: tuple[float, ...]) -> QIcon:
    pixmap = QPixmap(14, 14)
    r, g, b, a = (int(round(255 * float(c))) for c in rgba[:4])
    pixmap.fill(QColor(r, g, b, a))
    return QIcon(pixmap)
