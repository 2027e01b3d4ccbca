"""Sortable table cells shared by the diagnostics tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem


def gene_table(columns: Sequence[str]) -> QTableWidget:
    """A read-only table of one row per gene: sortable by clicking a header, rows selected whole."""
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setSortingEnabled(True)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    return table


class NumberItem(QTableWidgetItem):
    """A table cell that sorts by its number (NaN below every number); ``text`` overrides the
    shown text (e.g. ``"yes"``/``"no"`` for a flag)."""

    def __init__(self, value: float, text: str | None = None) -> None:
        if text is None:
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
        if isinstance(other, NumberItem):
            return self.value < other.value
        return super().__lt__(other)


__all__ = ["NumberItem"]
