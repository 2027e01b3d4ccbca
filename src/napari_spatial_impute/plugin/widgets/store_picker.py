"""Choosing what to read from a SpatialData store: its cell table and coordinate system.

Shown by the Load widget under the spatial path when that path is a store. The store is described
in a worker (spatialdata reads its tables); the combos then offer the tables of cells and the
coordinate systems the chosen table's cells are in, preselecting the choice remembered for that
store (:mod:`napari_spatial_impute.plugin.store_choices`).
"""

from __future__ import annotations

from typing import Any

from napari.qt.threading import thread_worker
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QWidget

from napari_spatial_impute._errors import InputError
from napari_spatial_impute.io.sdata import StoreInfo, choose_table, describe_store, open_store
from napari_spatial_impute.plugin import store_choices
from napari_spatial_impute.plugin.workers import Failed


class StorePicker(QWidget):
    """Table and coordinate-system combos for one store (hidden for plain files)."""

    def __init__(self) -> None:
        super().__init__()
        self.info: StoreInfo | None = None
        self.store: str | None = None
        self.worker: Any = None
        self.table_combo = QComboBox()
        self.table_combo.setToolTip("the store's table of cells to map")
        self.cs_combo = QComboBox()
        self.cs_combo.setToolTip("coordinate system the cells, images and labels are shown in")
        self.note = QLabel("")
        self.note.setWordWrap(True)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Table", self.table_combo)
        form.addRow("Coordinates", self.cs_combo)
        form.addRow(self.note)
        self.table_combo.currentTextChanged.connect(self._fill_cs)
        self.setVisible(False)

    def set_store(self, path: str | None) -> Any:
        """Describe ``path`` in a worker and fill the combos (``None`` hides them); the worker."""
        if path == self.store and self.info is not None:
            return None
        self.store, self.info = path, None
        self.table_combo.clear()
        self.cs_combo.clear()
        self.setVisible(path is not None)
        if path is None:
            return None
        self.note.setText("Reading the store...")

        def describe() -> tuple[str, StoreInfo | Failed]:
            try:
                info = describe_store(open_store(path))
                choose_table(info, info.cell_tables[0].name if info.cell_tables else None)
            except InputError as exc:
                return path, Failed(str(exc).splitlines()[0])
            return path, info

        self.worker = thread_worker(describe, start_thread=False)()
        # a bound method: Qt drops the connection if the widget is closed meanwhile
        self.worker.returned.connect(self._described)
        self.worker.start()
        return self.worker

    def _described(self, answer: tuple[str, StoreInfo | Failed]) -> None:
        path, value = answer
        if path != self.store:
            return  # another store was chosen meanwhile
        if isinstance(value, Failed):
            self.note.setText(f"Error: {value.message}")
            return
        self.info = value
        remembered = store_choices.recall(path)
        names = [t.name for t in value.cell_tables]
        self.table_combo.blockSignals(True)
        self.table_combo.addItems(names)
        if remembered.get("table") in names:
            self.table_combo.setCurrentText(remembered["table"])
        self.table_combo.blockSignals(False)
        self._fill_cs(self.table_combo.currentText(), remembered.get("coordinate_system"))
        n = sum(t.n_obs for t in value.cell_tables if t.name == self.table_combo.currentText())
        self.note.setText(f"{n:,} cells in table {self.table_combo.currentText()!r}")

    def _fill_cs(self, table: str, preferred: str | None = None) -> None:
        if self.info is None or not table:
            return
        systems = list(self.info.table(table).coordinate_systems)
        current = preferred or self.cs_combo.currentText()
        self.cs_combo.clear()
        self.cs_combo.addItems(systems)
        if current in systems:
            self.cs_combo.setCurrentText(current)
        elif "global" in systems:
            self.cs_combo.setCurrentText("global")

    def choice(self) -> tuple[str | None, str | None]:
        """``(table, coordinate system)`` chosen (``None`` before the store was described)."""
        return (self.table_combo.currentText() or None, self.cs_combo.currentText() or None)

    def remember(self) -> None:
        table, cs = self.choice()
        if self.store and table and cs:
            store_choices.remember(self.store, table, cs)
