"""Writing the results back into the SpatialData store the spatial cells came from.

A row under the Map widget, shown while the current result was mapped from a store: the table
name, *Replace* (a results table of that name written earlier by this plugin) and *Write to
store*. The write runs in a worker (:func:`~napari_spatial_impute.core.export.store_table`,
:func:`~napari_spatial_impute.io.sdata_write.write_table`); a refusal (read-only store, name taken,
...) is one notification and nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QWidget,
)

from napari_spatial_impute._errors import InputError
from napari_spatial_impute.io.schema import RESULT_TABLE
from napari_spatial_impute.io.sdata import spatial_source
from napari_spatial_impute.plugin.workers import Failed


class StoreWriter(QWidget):
    """Name, Replace and Write for the result of a store's cells (hidden otherwise)."""

    def __init__(self, start_worker: Any) -> None:
        super().__init__()
        self._start = start_worker
        self.result: ad.AnnData | None = None
        self.name_edit = QLineEdit(RESULT_TABLE)
        self.name_edit.setToolTip("name of the results table in the store")
        self.replace_box = QCheckBox("Replace")
        self.replace_box.setToolTip("replace a results table of this name written earlier")
        self.write_button = QPushButton("Write to store")
        self.write_button.setToolTip(
            "add the imputed genes, cluster probabilities and intervals as a table of the store "
            "the cells came from (annotating the same cells)"
        )
        self.write_button.clicked.connect(self.write)
        self.status = QLabel("")  # one line, shown once something was written or refused
        self.status.setVisible(False)
        # a long path never widens the dock
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Table"))
        row.addWidget(self.name_edit, 1)
        row.addWidget(self.replace_box)
        row.addWidget(self.write_button)
        self.setVisible(False)

    def set_result(self, result: ad.AnnData | None) -> None:
        """Offer writing ``result`` when its cells came from a store."""
        self.result = result
        self.setVisible(result is not None and spatial_source(result) is not None)

    def write(self) -> Any:
        """Write the current result in a worker; returns the worker (``None`` when nothing to do)."""
        result = self.result
        source = spatial_source(result) if result is not None else None
        if result is None or source is None:
            return None
        store, name = str(source["store"]), self.name_edit.text().strip() or RESULT_TABLE
        replace = self.replace_box.isChecked()

        def work() -> str | Failed:
            from napari_spatial_impute.core.export import store_table
            from napari_spatial_impute.io.sdata_write import write_table

            try:
                write_table(store_table(result), store, name, overwrite=replace)
            except InputError as exc:
                return Failed(str(exc).splitlines()[0])
            return (
                f"wrote table {name!r} ({result.n_obs:,} cells x {result.n_vars:,} genes) to "
                f"{Path(store).name}"
            )

        worker = thread_worker(work, start_thread=False)()
        worker.returned.connect(self._written)
        self.write_button.setEnabled(False)
        worker.finished.connect(self._finished)  # bound: dropped if the widget is closed
        return self._start(worker)

    def _finished(self) -> None:
        self.write_button.setEnabled(True)

    def _written(self, value: str | Failed) -> None:
        text = f"Error: {value.message}" if isinstance(value, Failed) else value
        (show_error if isinstance(value, Failed) else show_info)(text.removeprefix("Error: "))
        self.status.setText(text)
        self.status.setToolTip(text)
        self.status.setVisible(True)
