"""Uncertainty controls of the Explore widget: interval-width layers, greying out wide intervals.

The mask is a change of the imputed layers themselves, never a new layer:

* *grey out*: the layer's colours (its colormap and limits, computed directly like the
  Explore widget's, :func:`~napari_spatial_impute.viz.explore.colorize`) with grey for the cells
  whose interval is wider than the threshold; a column ``"<gene> (narrow interval)"`` (the
  values, NaN there) joins the hover text;
* *hide*: the same, transparent instead of grey, and ``layer.shown`` is ``False`` for those
  cells (napari 0.9 draws every point of a layer whose dimensions are all displayed whatever
  ``shown`` says, so the colour does the hiding in 2D).

Both add a boolean ``"wide interval"`` feature (hover text) and record the mask in
the layer's metadata dict (``plugin_meta(layer)["mask"]``). Recolouring a layer to another gene (or a new result) clears it;
the widget then applies it again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Points
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
)

from napari_spatial_impute.io.schema import interval_levels
from napari_spatial_impute.plugin.widgets.layer_ops import (
    find_layers,
    notify_error,
    set_face_colors,
)
from napari_spatial_impute.viz.explore import COLORMAPS, colorize
from napari_spatial_impute.viz.intervals import GREY, interval_widths, masked_values, wide_mask
from napari_spatial_impute.viz.layers import plugin_meta, robust_limits, set_meta

MASK_KEY = "mask"
WIDE_COLUMN = "wide interval"
MASK_MODES: tuple[str, ...] = ("grey out", "hide")


def masked_column(gene: str) -> str:
    """Feature column that colours a greyed-out layer: ``"Gad1 (narrow interval)"``."""
    return f"{gene} (narrow interval)"


def _colors(layer: Points, vals: np.ndarray, nan_color: Any = (0.0, 0.0, 0.0, 0.0)) -> np.ndarray:
    """The layer's values coloured with its own colormap and limits (metadata), NaN ``nan_color``."""
    md = plugin_meta(layer)
    limits = md.get("limits") or robust_limits(vals)
    return colorize(vals, str(md.get("colormap", COLORMAPS["imputed"])), tuple(limits), nan_color)


def unmask_layer(layer: Points) -> None:
    """Undo :func:`mask_layer` (values coloured again, every cell shown)."""
    md = plugin_meta(layer)
    if MASK_KEY not in md:
        return
    gene = md["value"]
    feats = layer.features
    if gene in feats.columns:  # both modes recoloured the layer
        set_face_colors(layer, _colors(layer, feats[gene].to_numpy()))
    drop = [c for c in (masked_column(gene), WIDE_COLUMN) if c in feats.columns]
    if drop:  # napari's table edited in place: no full features reset
        feats.drop(columns=drop, inplace=True)
    if not np.all(layer.shown):
        layer.shown = np.ones(len(layer.data), dtype=bool)
    columns = [c for c in md.get("columns", []) if c not in drop]
    set_meta(layer, **{MASK_KEY: None, "columns": columns})


def mask_layer(
    layer: Points, result: Any, level: str, threshold: float, mode: str = "grey out"
) -> np.ndarray:
    """Grey out (or hide) the cells of an imputed layer whose interval is wider than ``threshold``.

    The colours are the layer's own (its colormap and limits) with grey, or transparent, for the
    wide cells: one ``face_color`` setter. The hover text gains ``"wide interval"`` and the
    masked values (``"<gene> (narrow interval)"``).

    Parameters
    ----------
    layer
        An imputed exploration layer (``metadata`` with the gene and the result rows).
    result
        The result AnnData the layer shows.
    level
        Interval level (``"90"`` or ``"67"``).
    threshold
        Largest interval width (``2 x halfwidth``) kept.
    mode
        ``"grey out"`` or ``"hide"``.

    Returns
    -------
    The boolean mask of the layer's points that were greyed out or hidden.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode {mode!r} is not known; use one of {MASK_MODES}.")
    md = plugin_meta(layer)
    gene = md["value"]
    rows = np.asarray(md.get("rows", np.arange(len(layer.data))), dtype=np.int64)
    widths = interval_widths(result, gene, level, rows)
    wide = wide_mask(widths, threshold)
    feats = layer.features  # napari's table, edited in place (the hover text)
    masked = masked_values(feats[gene].to_numpy(), widths, threshold)
    feats[WIDE_COLUMN] = wide
    feats[masked_column(gene)] = masked
    set_face_colors(layer, _colors(layer, masked, (0.0, 0.0, 0.0, 0.0) if mode == "hide" else GREY))
    if mode == "hide":
        layer.shown = ~wide
    elif not np.all(layer.shown):
        layer.shown = np.ones(len(layer.data), dtype=bool)
    columns = [c for c in md.get("columns", []) if c not in (WIDE_COLUMN, masked_column(gene))]
    set_meta(
        layer,
        **{
            MASK_KEY: {"level": str(level), "threshold": float(threshold), "mode": mode},
            "columns": [*columns, WIDE_COLUMN, masked_column(gene)],
        },
    )
    return wide


class UncertaintyControls(QGroupBox):
    """Interval-width layers beside the imputed ones, and greying out cells with wide intervals.

    Shown only for results with interval layers. The threshold is an interval width in the
    imputed values' units; showing another gene (or choosing another level) sets it to that
    gene's median width, and the user can change it from there.

    Parameters
    ----------
    viewer
        The napari viewer.
    model
        The viewer's :class:`~napari_spatial_impute.plugin.model.SpatialImputeModel`.
    """

    def __init__(self, viewer: Any, model: Any) -> None:
        super().__init__("Uncertainty (prediction intervals)")
        self.viewer = viewer
        self.model = model
        self._gene: str | None = None
        self.interval_check = QCheckBox("interval width beside imputed")
        self.interval_check.setToolTip(
            "a '<gene> 90% interval width' layer: the imputed value's "
            "prediction interval is value ± half this width"
        )
        self.level_combo = QComboBox()
        self.level_combo.setToolTip("nominal coverage of the interval")
        self.mask_check = QCheckBox("wide intervals:")
        self.mask_check.setToolTip("cells of the imputed layers whose interval is wider")
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(list(MASK_MODES))
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setDecimals(3)
        self.threshold_spin.setRange(0.0, 1e9)
        self.threshold_spin.setToolTip("largest interval width kept (imputed values' units)")
        self.note = QLabel("")
        self.note.setWordWrap(True)

        form = QFormLayout(self)
        row = QHBoxLayout()
        row.addWidget(self.interval_check, 1)
        row.addWidget(QLabel("level %"))
        row.addWidget(self.level_combo)
        form.addRow(row)
        row = QHBoxLayout()
        row.addWidget(self.mask_check)
        row.addWidget(self.mode_combo)
        row.addWidget(QLabel("above width"))
        row.addWidget(self.threshold_spin, 1)
        form.addRow(row)
        form.addRow(self.note)

        self.mask_check.toggled.connect(self.apply)
        self.mode_combo.currentTextChanged.connect(self.apply)
        self.threshold_spin.valueChanged.connect(self.apply)
        self.level_combo.currentTextChanged.connect(self._on_level)
        self.set_result(model.result)

    # ------------------------------------------------------------------ state
    def level(self) -> str | None:
        """The chosen level, ``None`` when the result has no intervals."""
        text = self.level_combo.currentText()
        return text or None

    def interval_level(self) -> str | None:
        """Level of the interval layers to show with a gene, ``None`` when unticked or absent."""
        return self.level() if self.interval_check.isChecked() else None

    def set_result(self, result: Any) -> None:
        """Offer the controls when ``result`` has intervals, and apply the mask to its layers."""
        levels = interval_levels(result)
        current = self.level_combo.currentText()
        self.level_combo.blockSignals(True)
        self.level_combo.clear()
        self.level_combo.addItems(levels)
        if current in levels:
            self.level_combo.setCurrentText(current)
        self.level_combo.blockSignals(False)
        self.setVisible(bool(levels))
        self.setEnabled(bool(levels))
        self.apply()

    def _median_width(self, gene: str) -> float:
        level = self.level()
        assert level is not None  # every caller checks for a level first
        widths = interval_widths(self.model.result, gene, level)
        finite = widths[np.isfinite(widths)]
        return float(np.median(finite)) if finite.size else 0.0

    def gene_shown(self, gene: str) -> None:
        """After a gene was shown: default threshold for a new gene, then apply the mask."""
        if self.model.result is None or self.level() is None:
            return
        if gene != self._gene:
            self._gene = gene
            self._set_threshold(self._median_width(gene))
        self.apply()

    def _on_level(self, *_: Any) -> None:
        if self._gene is not None and self.model.result is not None and self.level():
            try:
                self._set_threshold(self._median_width(self._gene))
            except Exception:  # the gene left with the result: keep the threshold
                pass
        self.apply()

    def _set_threshold(self, value: float) -> None:
        self.threshold_spin.blockSignals(True)
        self.threshold_spin.setValue(float(f"{value:.3g}"))
        self.threshold_spin.blockSignals(False)

    # ------------------------------------------------------------------ mask
    def apply(self, *_: Any) -> int:
        """Mask (or unmask) every imputed exploration layer; returns the number of cells masked."""
        layers = [
            lay
            for lay in find_layers(self.viewer, "imputed")
            if isinstance(lay, Points) and plugin_meta(lay).get("kind") == "imputed"
        ]
        result, level = self.model.result, self.level()
        on = self.mask_check.isChecked() and result is not None and level is not None
        n_wide = n_all = 0
        try:
            for layer in layers:
                if on:
                    assert level is not None  # part of ``on``
                    wide = mask_layer(
                        layer,
                        result,
                        level,
                        self.threshold_spin.value(),
                        self.mode_combo.currentText(),
                    )
                    n_wide += int(wide.sum())
                    n_all += len(wide)
                else:
                    unmask_layer(layer)
        except Exception as exc:
            notify_error(exc)
        if on and n_all:
            verb = "greyed out" if self.mode_combo.currentText() == "grey out" else "hidden"
            self.note.setText(
                f"{n_wide} of {n_all} cells {verb}: {level}% interval wider than "
                f"{self.threshold_spin.value():.3g}"
            )
        elif self._gene and result is not None and level is not None:
            try:
                med = self._median_width(self._gene)
                self.note.setText(f"{self._gene}: median {level}% interval width {med:.3g}")
            except Exception:
                self.note.setText("")
        else:
            self.note.setText("")
        return n_wide


__all__ = [
    "MASK_KEY",
    "MASK_MODES",
    "WIDE_COLUMN",
    "UncertaintyControls",
    "mask_layer",
    "masked_column",
    "unmask_layer",
]
