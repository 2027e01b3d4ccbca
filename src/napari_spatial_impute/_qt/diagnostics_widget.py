"""Diagnostics widget: training-score panels, per-cell-type validation, cross-validation table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .._model import get_model
from ..evaluate import validate_cell_types
from ..explore import shared_genes
from ..plots import (
    cv_summary_text,
    default_markers,
    marker_list,
    plot_cell_type_validation,
    plot_training_scores,
)
from .layer_ops import find_layers, notify_error, open_gene
from .linking import get_link_controller

CV_COLUMNS = ("gene", "fold", "pearson", "cosine", "spearman", "sparsity_sp", "n_training_genes")


class _NumberItem(QTableWidgetItem):
    """A table cell that sorts by its number (NaN below every number)."""

    def __init__(self, value: float) -> None:
        text = (
            "nan"
            if not np.isfinite(value)
            else (f"{value:.4g}" if not float(value).is_integer() else f"{int(value)}")
        )
        super().__init__(text)
        self.value = (
            float(value) if np.isfinite(value) else float("-inf")
        )  # NaN last when descending

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, _NumberItem):
            return self.value < other.value
        return super().__lt__(other)


def _canvas(width: float, height: float) -> tuple[Figure, FigureCanvasQTAgg]:
    fig = Figure(figsize=(width, height), dpi=90, layout=None)
    canvas = FigureCanvasQTAgg(fig)
    canvas.setMinimumHeight(int(height * 60))
    return fig, canvas


class DiagnosticsWidget(QWidget):
    """How good is the mapping: training scores, marker levels per cell type, cross-validation.

    Clicking a gene (a dot of the score panels or a row of the CV table) shows its imputed and
    measured layers in every FOV, recolouring the layers that this widget opened before.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it in).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model = get_model(napari_viewer)
        self._opened_gene: str | None = None
        get_link_controller(napari_viewer)
        self.tabs = QTabWidget()

        self.train_fig, self.train_canvas = _canvas(12, 5)
        self.train_canvas.mpl_connect("pick_event", self._on_pick)
        page = QWidget()
        lay = QVBoxLayout(page)
        self.train_info = QLabel("")
        lay.addWidget(self.train_info)
        lay.addWidget(self.train_canvas, 1)
        self.tabs.addTab(page, "Training scores")

        self.val_fig, self.val_canvas = _canvas(12, 4.5)
        self.markers_edit = QLineEdit()
        self.markers_edit.setPlaceholderText(
            "marker genes (measured), comma separated; empty: one per cluster"
        )
        self.markers_edit.returnPressed.connect(self.update_validation)
        self.markers_button = QPushButton("Update")
        self.markers_button.clicked.connect(self.update_validation)
        page = QWidget()
        lay = QVBoxLayout(page)
        row = QHBoxLayout()
        row.addWidget(self.markers_edit, 1)
        row.addWidget(self.markers_button)
        lay.addLayout(row)
        lay.addWidget(self.val_canvas, 1)
        self.tabs.addTab(page, "Cell-type validation")

        self.cv_info = QLabel("No cross-validation was run.")
        self.cv_table = QTableWidget(0, len(CV_COLUMNS))
        self.cv_table.setHorizontalHeaderLabels(list(CV_COLUMNS))
        self.cv_table.setSortingEnabled(True)
        self.cv_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.cv_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.cv_table.cellClicked.connect(self._on_cv_clicked)
        page = QWidget()
        lay = QVBoxLayout(page)
        lay.addWidget(self.cv_info)
        lay.addWidget(self.cv_table, 1)
        self.tabs.addTab(page, "Cross-validation")

        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs)
        self.model.result_changed.connect(self._on_result)
        self.model.cv_changed.connect(self._on_cv)
        self._on_result()
        self._on_cv()

    # ------------------------------------------------------------------ updates
    def _on_result(self, *_: Any) -> None:
        result = self.model.result
        self.train_fig.clear()
        self.val_fig.clear()
        if result is None:
            self.train_info.setText("No mapping result yet.")
            self.train_canvas.draw_idle()
            self.val_canvas.draw_idle()
            return
        try:
            plot_training_scores(self.train_fig, result)
            score = result.uns.get("spatial_impute", {}).get("training_score", float("nan"))
            n_train = int(result.var["is_training"].astype(bool).sum())
            self.train_info.setText(
                f"training score {float(score):.3f} over {n_train} training genes; click a dot to show the gene."
            )
        except Exception as exc:
            notify_error(exc)
        self.train_canvas.draw_idle()
        if not self.markers_edit.text().strip():
            self.markers_edit.setText(", ".join(default_markers(result)))
        self.update_validation()

    def update_validation(self) -> pd.DataFrame | None:
        """Redraw the per-cell-type validation for the markers in the text box."""
        result = self.model.result
        if result is None:
            return None
        markers = marker_list(self.markers_edit.text(), shared_genes(result)) or None
        try:
            table = validate_cell_types(result, markers=markers)
        except Exception as exc:
            notify_error(exc)
            return None
        plot_cell_type_validation(self.val_fig, table)
        self.val_canvas.draw_idle()
        return table

    def _on_cv(self, *_: Any) -> None:
        table = self.model.cv_table
        self.cv_table.setSortingEnabled(False)
        self.cv_table.setRowCount(0)
        if table is None or len(table) == 0:
            self.cv_info.setText("No cross-validation was run (Map widget: cross-validate).")
            return
        cols = [c for c in CV_COLUMNS if c in table.columns]
        self.cv_table.setColumnCount(len(cols))
        self.cv_table.setHorizontalHeaderLabels(cols)
        self.cv_table.setRowCount(len(table))
        for i, rec in enumerate(table[cols].itertuples(index=False)):
            for j, v in enumerate(rec):
                if isinstance(v, (int, float, np.integer, np.floating)):
                    item: QTableWidgetItem = _NumberItem(float(v))
                else:
                    item = QTableWidgetItem(str(v))
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                self.cv_table.setItem(i, j, item)
        self.cv_table.setSortingEnabled(True)
        self.cv_table.sortItems(
            cols.index("pearson") if "pearson" in cols else 0, Qt.SortOrder.DescendingOrder
        )
        self.cv_table.resizeColumnsToContents()
        self.cv_info.setText(cv_summary_text(table) + "; click a gene to show it.")

    # ------------------------------------------------------------------ gene clicks
    def open_gene(self, gene: str) -> list:
        """Show a gene's layers in all FOVs (recolouring the ones this widget opened before)."""
        result = self.model.result
        if result is None:
            return []
        previous = (
            find_layers(self.viewer, "imputed", value=self._opened_gene)
            if self._opened_gene
            else []
        )
        try:
            layers = open_gene(
                self.viewer, result, gene, None, self.model.fov_key, recolor_layers=previous
            )
        except Exception as exc:
            notify_error(exc)
            return []
        self._opened_gene = layers[0].metadata.get("nsi_value", gene) if layers else gene
        return layers

    def _on_cv_clicked(self, row: int, _col: int) -> None:
        header = [
            self.cv_table.horizontalHeaderItem(j).text() for j in range(self.cv_table.columnCount())
        ]
        item = self.cv_table.item(row, header.index("gene"))
        if item is not None:
            self.open_gene(item.text())

    def _on_pick(self, event: Any) -> None:
        genes = getattr(event.artist, "genes", None)
        if genes is None or not len(event.ind):
            return
        self.open_gene(genes[int(event.ind[0])])
