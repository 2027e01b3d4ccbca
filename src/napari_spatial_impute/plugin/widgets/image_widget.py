"""Image-linked exploration: align a label image to the cells, click cells, paint values."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QStringListModel, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
)

from napari_spatial_impute.plugin.widgets.base import PluginWidget
from napari_spatial_impute.plugin.widgets.layer_ops import notify_error
from napari_spatial_impute.viz.coords import to_napari
from napari_spatial_impute.viz.explore import (
    COLORMAPS,
    cell_summary,
    cluster_names,
    gene_names,
    shared_limits,
    values,
)
from napari_spatial_impute.viz.image_link import (
    Alignment,
    alignment_from_offset,
    fit_alignment,
    guess_fov,
    label_ids_from_names,
    load_label_image,
    paint_labels,
    read_fov_positions,
    rows_by_label,
)
from napari_spatial_impute.viz.layers import make_meta, plugin_meta
from napari_spatial_impute.viz.sections import (
    display_yx,
    fov_rows,
    resolve_fov_key,
    resolve_sample_key,
)

LABELS_ROLE = "labels"
PAINT_ROLE = "painted"
ALIGN_MODES = ("fit to cell ids", "FOV offsets file", "manual")
#: Smallest width of a number box (px).
SPIN_WIDTH = 80


def _spin(
    lo: float = -1e9, hi: float = 1e9, decimals: int = 4, value: float = 0.0
) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setValue(value)
    # Qt sizes a spin box for its longest value (-1e9 with 6 decimals: 200 px); it scrolls
    box.setMinimumWidth(SPIN_WIDTH)
    return box


class ImageWidget(PluginWidget):
    """Open a segmentation label image with the data, align it, click cells and paint values.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it in).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)

        self.labels_combo = QComboBox()
        self.open_button = QPushButton("Open label image...")
        self.open_button.clicked.connect(self._browse)
        self.fov_combo = QComboBox()
        self.fov_combo.setToolTip("the FOV this label image shows")

        self.mode_combo = QComboBox()
        self.mode_combo.addItems(ALIGN_MODES)
        self.positions_edit = QLineEdit()
        self.positions_edit.setPlaceholderText("FOV positions .csv (fov, x, y in pixels)")
        self.flip_check = QCheckBox("y axis points up (CosMx)")
        self.height_spin = _spin(0, 1e7, 1, 0.0)
        self.height_spin.setToolTip("full FOV height in pixels for the flip (0: the image height)")
        self.pixel_spin = _spin(1e-6, 1e6, 6, 1.0)
        self.sy, self.sx = _spin(value=1.0, decimals=6), _spin(value=1.0, decimals=6)
        self.ty, self.tx = _spin(decimals=3), _spin(decimals=3)
        self.align_button = QPushButton("Align")
        self.align_button.clicked.connect(self.align)
        self.align_info = QLabel("")
        self.align_info.setWordWrap(True)

        self.kind_combo = QComboBox()
        self.kind_combo.addItems(["imputed", "measured", "probability"])
        self.kind_combo.currentTextChanged.connect(self._on_kind)
        self.value_edit = QLineEdit()
        self.value_edit.setPlaceholderText("gene or cluster")
        self.completer_model = QStringListModel()  # what QCompleter([]) makes, kept typed
        self.completer = QCompleter(self.completer_model)
        self.completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.value_edit.setCompleter(self.completer)
        self.paint_button = QPushButton("Paint onto labels")
        self.paint_button.clicked.connect(self.paint)
        self.cell_info = QPlainTextEdit()
        self.cell_info.setReadOnly(True)
        self.cell_info.setPlaceholderText("click a cell of the label image")
        self.cell_info.setMaximumHeight(120)

        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.labels_combo, 1)
        row.addWidget(self.open_button)
        form.addRow("Labels", row)
        form.addRow("FOV", self.fov_combo)
        form.addRow("Alignment", self.mode_combo)
        form.addRow("Offsets", self.positions_edit)
        # one setting or one (y, x) pair a row: a row of the flip, its height and four labelled
        # spin boxes widened the dock to 480 px (issue 24)
        form.addRow("", self.flip_check)
        form.addRow("FOV height", self.height_spin)
        form.addRow("Pixel size", self.pixel_spin)
        for label, pair in (
            ("Scale y, x", (self.sy, self.sx)),
            ("Translate y, x", (self.ty, self.tx)),
        ):
            row = QHBoxLayout()
            for box in pair:
                row.addWidget(box, 1)
            form.addRow(label, row)
        form.addRow("", self.align_button)
        form.addRow("", self.align_info)
        row = QHBoxLayout()
        row.addWidget(self.kind_combo)
        row.addWidget(self.value_edit, 1)
        form.addRow("Paint", row)
        form.addRow("", self.paint_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(QLabel("Clicked cell"))
        layout.addWidget(self.cell_info)
        layout.addStretch(1)

        self.on_layers_changed(self._refresh_labels)
        self.model.result_changed.connect(self._on_result)
        self.model.spatial_changed.connect(self._on_result)
        self.model.keys_changed.connect(self._on_result)
        self._on_result()
        self._refresh_labels()

    # ------------------------------------------------------------------ state
    def cells(self) -> Any:
        """The cells to align with: the result, or the spatial data before any mapping."""
        return self.model.result if self.model.result is not None else self.model.spatial

    def _on_result(self, *_: Any) -> None:
        cells = self.cells()
        current = self.fov_combo.currentText()
        self.fov_combo.clear()
        if cells is not None:
            fovs = list(fov_rows(cells, *self._keys()))
            self.fov_combo.addItems(fovs)
            if current in fovs:
                self.fov_combo.setCurrentText(current)
        self._on_kind(self.kind_combo.currentText())
        self.align_button.setEnabled(cells is not None)
        self.paint_button.setEnabled(self.model.result is not None)

    def _on_kind(self, kind: str) -> None:
        result = self.model.result
        items = (
            []
            if result is None
            else (cluster_names(result) if kind == "probability" else gene_names(result))
        )
        self.completer_model.setStringList(items)

    def _refresh_labels(self, *_: Any) -> None:
        current = self.labels_combo.currentText()
        self.labels_combo.clear()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]
        for layer in self.viewer.layers:  # label layers opened elsewhere answer clicks too
            if isinstance(layer, Labels) and self._on_click not in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.append(self._on_click)
        self.labels_combo.addItems(names)
        if current in names:
            self.labels_combo.setCurrentText(current)
        elif names:
            self.labels_combo.setCurrentIndex(len(names) - 1)

    def labels_layer(self) -> Labels | None:
        """The chosen Labels layer."""
        name = self.labels_combo.currentText()
        found = [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and layer.name == name
        ]
        return found[0] if found else None

    def _keys(self) -> tuple[str | None, str | None]:
        """The FOV and sample columns of the cells (see :mod:`~napari_spatial_impute.viz.sections`)."""
        cells = self.cells()
        fov_key = resolve_fov_key(cells, self.model.fov_key)
        return fov_key, resolve_sample_key(cells, self.model.sample_key, fov_key)

    def _fov_cells(self, fov: str) -> tuple[np.ndarray, np.ndarray]:
        """Rows of one FOV's cells (in the result, else the spatial data) and their label ids."""
        cells = self.cells()
        rows = fov_rows(cells, *self._keys()).get(str(fov), np.empty(0, dtype=np.int64))
        ids = label_ids_from_names(cells.obs_names[rows], cells.obs.iloc[rows])
        return rows, ids

    def _offset(self, fov: str) -> np.ndarray:
        """``(dy, dx)`` between where a FOV's cells are drawn and their coordinates."""
        rows, _ = self._fov_cells(fov)
        if not len(rows):
            return np.zeros(2)
        cells = self.cells()
        drawn = display_yx(cells, rows[:1], self._keys()[1])
        return np.asarray(drawn - to_napari(cells, rows[:1], ndim=2))[0]

    # ------------------------------------------------------------------ actions
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Label image", "", "Label images (*.tif *.tiff *.npz *.npy *.png)"
        )
        if path:
            self.open_labels(path)

    def open_labels(self, path: str | Path, fov: str | None = None) -> Labels | None:
        """Read a label image, add it as a Labels layer for ``fov`` and align it."""
        try:
            labels = load_label_image(path)
        except Exception as exc:
            notify_error(exc)
            return None
        fovs = [self.fov_combo.itemText(i) for i in range(self.fov_combo.count())]
        fov = fov or guess_fov(path, fovs) or self.fov_combo.currentText() or "0"
        layer = Labels(
            labels,
            name=f"{Path(path).stem} · FOV {fov}",
            metadata=make_meta(LABELS_ROLE, fov=fov),
            opacity=0.4,
        )
        self.viewer.layers.append(layer)
        self.labels_combo.setCurrentText(layer.name)
        if fov in fovs:
            self.fov_combo.setCurrentText(fov)
        if self.cells() is not None:
            self.align()
        return layer

    def alignment(self) -> Alignment:
        """The alignment in the scale/translate boxes."""
        return Alignment((self.sy.value(), self.sx.value()), (self.ty.value(), self.tx.value()))

    def _set_boxes(self, align: Alignment) -> None:
        for box, v in zip(
            (self.sy, self.sx, self.ty, self.tx), (*align.scale, *align.translate), strict=True
        ):
            box.setValue(float(v))

    def align(self) -> Alignment | None:
        """Compute the alignment of the chosen mode, show it in the boxes and apply it to the layer."""
        layer = self.labels_layer()
        if layer is None or self.cells() is None:
            return None
        fov = str(plugin_meta(layer).get("fov", self.fov_combo.currentText()))
        mode = self.mode_combo.currentText()
        try:
            if mode == "fit to cell ids":
                rows, ids = self._fov_cells(fov)
                align = fit_alignment(
                    np.asarray(layer.data), to_napari(self.cells(), rows, ndim=2), ids
                )
                self.align_info.setText(
                    f"fitted on the cells of FOV {fov}: rms {align.rms:.2f} (points units)"
                )
            elif mode == "FOV offsets file":
                pos = read_fov_positions(self.positions_edit.text())
                key = guess_fov(f"x{fov}", list(pos.index)) or fov
                if key not in pos.index:
                    raise ValueError(
                        f"FOV {fov} is not in the positions file (it has {list(pos.index)})."
                    )
                height = self.height_spin.value() or layer.data.shape[0]
                align = alignment_from_offset(
                    pos["x"].loc[key],
                    pos["y"].loc[key],
                    height,
                    self.flip_check.isChecked(),
                    self.pixel_spin.value(),
                )
                self.align_info.setText(f"from the offsets of FOV {key}")
            else:
                align = self.alignment()
                self.align_info.setText("manual alignment")
            if mode != "manual":  # where the FOV's sample is drawn (samples side by side)
                align = replace(align, translate=tuple(align.translate + self._offset(fov)))
        except Exception as exc:
            notify_error(exc)
            return None
        self._set_boxes(align)
        layer.scale, layer.translate = align.scale, align.translate
        for painted in self.viewer.layers:
            if (
                plugin_meta(painted).get("kind") == PAINT_ROLE
                and plugin_meta(painted).get("labels_id") == layer.unique_id
            ):
                painted.scale, painted.translate = align.scale, align.translate
        return align

    def paint(self, value: str | None = None, kind: str | None = None) -> Image | None:
        """Paint a gene's (or cluster's) values onto the label image as a new Image layer."""
        layer = self.labels_layer()
        result = self.model.result
        if layer is None or result is None:
            return None
        kind = kind or self.kind_combo.currentText()
        value = value if isinstance(value, str) else self.value_edit.text().strip()
        fov = str(plugin_meta(layer).get("fov", self.fov_combo.currentText()))
        try:
            rows, ids = self._fov_cells(fov)
            vals = values(result, kind, value, rows)
            limits = shared_limits(result, kind, value)
            image = paint_labels(np.asarray(layer.data), ids, vals)
        except Exception as exc:
            notify_error(exc)
            return None
        name = f"{value} {kind} · labels FOV {fov}"
        md = make_meta(
            PAINT_ROLE,
            fov=fov,
            value=value,
            value_kind=kind,
            labels=layer.name,
            labels_id=layer.unique_id,
        )
        same = (PAINT_ROLE, fov, value, kind, layer.unique_id)
        existing = [  # found by metadata: napari or the user may have renamed it
            lay
            for lay in self.viewer.layers
            if tuple(
                plugin_meta(lay).get(k) for k in ("kind", "fov", "value", "value_kind", "labels_id")
            )
            == same
        ]
        for old in existing:
            self.viewer.layers.remove(old)
        painted = Image(
            image,
            name=name,
            colormap=COLORMAPS[kind],
            contrast_limits=limits,
            scale=layer.scale,
            translate=layer.translate,
            metadata=md,
            interpolation2d="nearest",
        )
        painted.colorbar.visible = True
        self.viewer.layers.append(painted)
        return painted

    def cell_at(self, layer: Labels, position: Any) -> int | None:
        """Result row of the cell under a world position of a label layer (``None`` if none)."""
        if self.model.result is None:
            return None
        label = layer.get_value(position, world=True)
        if label is None or int(label) == 0:
            return None
        rows, ids = self._fov_cells(
            str(plugin_meta(layer).get("fov", self.fov_combo.currentText()))
        )
        row = rows_by_label(ids).get(int(label))
        return None if row is None else int(rows[row])

    def _on_click(self, layer: Labels, event: Any) -> None:
        if self.model.result is None:
            self.cell_info.setPlainText("no mapping result yet: map first to see imputed values")
            return
        row = self.cell_at(layer, event.position)
        if row is None:
            self.cell_info.setPlainText("no mapped cell here")
            return
        genes = (
            [self.value_edit.text().strip()]
            if self.kind_combo.currentText() != "probability"
            else []
        )
        self.cell_info.setPlainText(cell_summary(self.model.result, row, [g for g in genes if g]))
