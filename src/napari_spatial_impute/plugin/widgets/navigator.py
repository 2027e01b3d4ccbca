"""FOV navigator: a searchable FOV list, a double-click on the canvas, one Shapes layer of outlines.

FOVs are navigation, not layers: choosing one (in the list, or by double-clicking it in the
canvas) zooms the camera to its bounds where it is drawn, and the other FOVs can be dimmed or
hidden by the faces of the one outline layer (:func:`~napari_spatial_impute.viz.sections.focus_colors`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Shapes
from napari.utils.theme import get_theme
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_spatial_impute.plugin.widgets.layer_ops import (
    HIDDEN_BY_GRID,
    OUTLINES_KIND,
    find_layers,
    jump_to_fov,
    notify_error,
    zoom_to_section,
)
from napari_spatial_impute.viz.layers import make_meta, set_meta
from napari_spatial_impute.viz.sections import (
    FOCUS_MODES,
    focus_colors,
    fov_at,
    fov_rows,
    outline_data,
    outline_width,
    resolve_fov_key,
    resolve_sample_key,
)


class FovNavigator(QWidget):
    """Go to a FOV, dim or hide the others, outline them all (part of the Explore widget).

    Parameters
    ----------
    viewer
        The viewer.
    model
        The viewer's shared model (result, FOV and sample keys).
    """

    def __init__(self, viewer: Any, model: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self.model = model
        #: The FOV the camera went to last (``None``: none yet).
        self.focus: str | None = None

        self.search = QLineEdit()
        self.search.setPlaceholderText("find a FOV (or double-click one in the canvas)")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._filter)
        self.search.returnPressed.connect(self._go_first)
        self.fov_list = QListWidget()
        self.fov_list.setMinimumHeight(64)
        self.fov_list.setToolTip("click a FOV to zoom to it")
        self.fov_list.itemClicked.connect(lambda item: self.go_to(item.text()))
        self.others = QComboBox()
        self.others.addItems(list(FOCUS_MODES))
        self.others.setToolTip("how the FOVs other than the chosen one are drawn")
        self.others.currentTextChanged.connect(lambda _: self.apply_focus())
        self.outline_button = QPushButton("Outlines")
        self.outline_button.setToolTip("one Shapes layer with every FOV's and sample's outline")
        self.outline_button.clicked.connect(self.show_outlines)
        self.whole_button = QPushButton("Whole section")
        self.whole_button.setToolTip("show every cell again and fit them in view")
        self.whole_button.clicked.connect(self.show_all)

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("others"))
        row.addWidget(self.others, 1)
        row.addWidget(self.outline_button)
        row.addWidget(self.whole_button)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.search)
        box.addWidget(self.fov_list)
        box.addLayout(row)
        viewer.mouse_double_click_callbacks.append(self._on_double_click)

    # ------------------------------------------------------------------ state
    def keys(self) -> tuple[str | None, str | None]:
        """The result's FOV and sample columns."""
        result = self.model.result
        fov_key = resolve_fov_key(result, self.model.fov_key)
        return fov_key, resolve_sample_key(result, self.model.sample_key, fov_key)

    def refresh(self) -> None:
        """Fill the list with the current result's FOVs (natural order)."""
        self.fov_list.clear()
        self.focus = None
        result = self.model.result
        enabled = result is not None
        for w in (self.search, self.fov_list, self.others, self.outline_button, self.whole_button):
            w.setEnabled(enabled)
        if result is None:
            return
        try:
            self.fov_list.addItems(list(fov_rows(result, *self.keys())))
        except Exception as exc:
            notify_error(exc)
        self._filter(self.search.text())

    def _filter(self, text: str) -> None:
        needle = text.strip().lower()
        for item in self._items():
            item.setHidden(bool(needle) and needle not in item.text().lower())

    def _items(self) -> list[Any]:
        items = (self.fov_list.item(i) for i in range(self.fov_list.count()))
        return [item for item in items if item is not None]

    def _go_first(self) -> None:
        for item in self._items():
            if not item.isHidden():
                self.go_to(item.text())
                return

    # ------------------------------------------------------------------ actions
    def go_to(self, fov: str) -> bool:
        """Zoom the camera to ``fov``'s bounds and dim or hide the other FOVs as chosen."""
        result = self.model.result
        if result is None or not fov:
            return False
        try:
            jump_to_fov(self.viewer, result, fov, *self.keys())
        except Exception as exc:
            notify_error(exc)
            return False
        self.focus = str(fov)
        items = self.fov_list.findItems(self.focus, _exact())
        if items:
            self.fov_list.setCurrentItem(items[0])
        self.apply_focus()
        return True

    def show_all(self) -> None:
        """Clear the focus (every FOV drawn) and fit the whole section in view (the reference's
        UMAP beside it, shown or hidden, does not count)."""
        self.focus = None
        self.fov_list.clearSelection()
        self.apply_focus()
        if self.model.result is None:
            self.viewer.reset_view()
            return
        zoom_to_section(self.viewer, self.model.result, *self.keys())

    def outline_layer(self) -> Shapes | None:
        """The outline layer of the current result, if shown (found by metadata)."""
        found = [
            lay for lay in find_layers(self.viewer, role=OUTLINES_KIND) if isinstance(lay, Shapes)
        ]
        return found[-1] if found else None

    def show_outlines(self) -> Shapes | None:
        """Add (or replace) one Shapes layer with every FOV's and sample's rectangle and name."""
        result = self.model.result
        if result is None:
            return None
        try:
            shapes, features = outline_data(result, *self.keys())
        except Exception as exc:
            notify_error(exc)
            return None
        for old in find_layers(self.viewer, role=OUTLINES_KIND):
            self.viewer.layers.remove(old)
        if not shapes:
            return None
        is_sample = features["kind"].astype(str).to_numpy() == "sample"
        width = outline_width(result, self.keys()[1])
        layer = Shapes(
            shapes,
            shape_type="rectangle",
            name="FOV outlines",
            edge_color=np.where(
                is_sample[:, None], [[1.0, 0.85, 0.3, 1.0]], [[1.0, 1.0, 1.0, 0.8]]
            ),
            edge_width=np.where(is_sample, width * 3, width),
            face_color="transparent",
            features=features,
            text={"string": "{name}", "color": "white", "anchor": "upper_left", "size": 9},
            metadata=make_meta(OUTLINES_KIND),
        )
        if self.viewer.grid.enabled:  # side by side it would take a grid cell of its own:
            layer.visible = False  # hidden, and below the cells (napari groups by position)
            set_meta(layer, **{HIDDEN_BY_GRID: True})
            self.viewer.layers.insert(0, layer)
        else:
            self.viewer.layers.append(layer)
        self.apply_focus()
        return layer

    def apply_focus(self) -> None:
        """Draw the other FOVs as the "others" box says (adds the outline layer when needed)."""
        mode = self.others.currentText()
        layer = self.outline_layer()
        if layer is None:
            # side by side (napari's grid) the outline layer would sit in a cell of its own,
            # covering nothing: the dimming applies to the single view only
            if mode == "shown" or self.focus is None or self.viewer.grid.enabled:
                return
            layer = self.show_outlines()
            if layer is None:
                return
        background = get_theme(self.viewer.theme).canvas.as_rgb_tuple()
        colors = focus_colors(
            layer.features, self.focus, mode, np.asarray(background[:3], dtype=np.float32) / 255.0
        )
        layer.face_color = colors
        # above the cells it covers (layers added later would be drawn over it); in the
        # side-by-side grid the layer order places the cells, so it stays where it is
        index = list(self.viewer.layers).index(layer)
        if index != len(self.viewer.layers) - 1 and not self.viewer.grid.enabled:
            self.viewer.layers.move(index, len(self.viewer.layers))

    def _on_double_click(self, viewer: Any, event: Any) -> None:
        result = self.model.result
        if result is None or self.fov_list.count() < 2:
            return
        try:
            fov_key, sample_key = self.keys()
            fov = fov_at(result, fov_key, event.position, sample_key)
        except Exception:  # a double click must never raise into napari
            return
        if fov is not None:
            self.go_to(fov)

    def close_viewer_hooks(self) -> None:
        """Stop listening to the canvas (the widget is going away)."""
        if self._on_double_click in self.viewer.mouse_double_click_callbacks:
            self.viewer.mouse_double_click_callbacks.remove(self._on_double_click)


def _exact() -> Any:
    return Qt.MatchFlag.MatchExactly


__all__ = ["OUTLINES_KIND", "FovNavigator"]
