"""Reliability page of the Diagnostics widget: calibration summary and per-gene reliability table."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..explore_uncertainty import (
    RELIABILITY_COLUMNS,
    calibration_text,
    has_reliability,
    reliability_table,
)
from .table_items import NumberItem


class ReliabilityPanel(QWidget):
    """How sure the imputation is: interval calibration and each gene's predicted Pearson.

    The table lists every imputed gene with its predicted held-out Pearson, whether it was a
    training gene and its training score; it sorts by any column (most reliable first at the
    start), and clicking a row emits :attr:`gene_clicked` with the gene.
    """

    gene_clicked = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.summary = QLabel("No mapping result yet.")
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, len(RELIABILITY_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(RELIABILITY_COLUMNS))
        self.table.setSortingEnabled(True)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.cellClicked.connect(self._on_clicked)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)

    def set_result(self, result: Any) -> None:
        """Fill the summary and the table from a result AnnData (or clear them)."""
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        self.summary.setText(calibration_text(result))
        if result is None or not has_reliability(result):
            self.table.setVisible(False)
            return
        self.table.setVisible(True)
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
        return [self.table.item(i, j).text() for i in range(self.table.rowCount())]

    def _on_clicked(self, row: int, _col: int) -> None:
        item = self.table.item(row, 0)
        if item is not None:
            self.gene_clicked.emit(item.text())


__all__ = ["ReliabilityPanel"]
