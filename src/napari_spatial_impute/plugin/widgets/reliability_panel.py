"""Reliability page of the Diagnostics widget: interval calibration, per-gene reliability."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QLabel,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_spatial_impute.io.schema import has_reliability
from napari_spatial_impute.plugin.widgets.figure_panel import ask_and_save
from napari_spatial_impute.plugin.widgets.table_items import NumberItem, gene_table
from napari_spatial_impute.viz.intervals import (
    RELIABILITY_COLUMNS,
    calibration_text,
    reliability_table,
)
from napari_spatial_impute.viz.plots import plot_reliability


class ReliabilityPanel(QWidget):
    """How sure the imputation is: interval calibration and each gene's predicted Pearson.

    The plot shows the predicted held-out Pearson of the genes and compares it with an observed
    one (a cross-validation's, when its table has ``predicted_pearson``). The table lists every
    imputed gene with its predicted Pearson, whether it was a training gene and its training
    score; it sorts by any column (most reliable first at the start). Clicking a row or a dot
    emits :attr:`gene_clicked` with the gene.
    """

    gene_clicked = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.summary = QLabel("No mapping result yet.")
        self.summary.setWordWrap(True)
        self.table = gene_table(RELIABILITY_COLUMNS)
        self.table.cellClicked.connect(self._on_clicked)
        self.fig = Figure(figsize=(10, 3.2), dpi=90)
        self.canvas = FigureCanvasQTAgg(self.fig)
        self.canvas.setMinimumHeight(200)
        self.canvas.mpl_connect("pick_event", self._on_pick)
        self.save_button = QPushButton("Save figure...")
        self.save_button.setToolTip("save this figure as PNG, SVG or PDF")
        self.save_button.clicked.connect(lambda: ask_and_save(self, self.fig, "reliability"))
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.save_button)
        layout.addWidget(self.table, 1)

    def draw(self, result: Any, cv: Any = None) -> None:
        """Redraw the plot (``cv``: a cross-validation table, or ``None``)."""
        self.fig.clear()
        if result is not None and has_reliability(result):
            plot_reliability(self.fig, result, cv)
        self.canvas.draw_idle()

    def set_result(self, result: Any, cv: Any = None) -> None:
        """Fill the summary, plot and table from a result AnnData (or clear them)."""
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        self.summary.setText(calibration_text(result))
        usable = result is not None and has_reliability(result)
        self.table.setVisible(usable)
        self.canvas.setVisible(usable)
        self.save_button.setVisible(usable)
        if not usable:
            return
        self.draw(result, cv)
        df = reliability_table(result)
        self.table.setRowCount(len(df))
        for i, rec in enumerate(df.itertuples(index=False)):
            gene, pred, train, score = rec
            items: list[QTableWidgetItem] = [
                QTableWidgetItem(str(gene)),
                NumberItem(float(pred)),
                NumberItem(float(bool(train)), "yes" if train else "no"),
                NumberItem(float(score)),
            ]
            for j, item in enumerate(items):
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                self.table.setItem(i, j, item)
        self.table.setSortingEnabled(True)
        self.table.sortItems(1, Qt.SortOrder.DescendingOrder)
        self.table.resizeColumnsToContents()
        finite = df["predicted_pearson"].to_numpy(dtype=np.float64)
        n_low = int((finite[np.isfinite(finite)] < 0.2).sum())
        self.summary.setText(
            self.summary.text()
            + f"\n{n_low} genes are predicted below Pearson 0.2. Click a gene to show it."
        )

    def column(self, name: str) -> list[str]:
        """Texts of one column in the shown (sorted) order."""
        j = list(RELIABILITY_COLUMNS).index(name)
        texts: list[str] = []
        for i in range(self.table.rowCount()):
            item = self.table.item(i, j)
            assert item is not None  # every cell is filled when the table is shown
            texts.append(item.text())
        return texts

    def _on_pick(self, event: Any) -> None:
        genes = getattr(event.artist, "genes", None)
        if genes is not None and len(event.ind):
            self.gene_clicked.emit(str(genes[int(event.ind[0])]))

    def _on_clicked(self, row: int, _col: int) -> None:
        item = self.table.item(row, 0)
        if item is not None:
            self.gene_clicked.emit(item.text())


__all__ = ["ReliabilityPanel"]
