"""Map widget: choose the mapping settings, run it in a worker with live progress, cancel it."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

from napari.layers import Points
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..mapping import DENSITIES, ENGINES, MODES, EpochInfo
from ._score_plot import ScorePlot
from ._sync import connect_model
from ._workers import Failed, guarded, iter_mapping, result_layers


def _devices() -> list[str]:
    import torch

    devices = ["cpu", "auto"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


class MapWidget(QWidget):
    """Map reference cells onto the spatial cells of the shared model (Tangram objective).

    The mapping runs in a napari thread worker; each epoch updates the progress bar and the score
    plot. Cancel stops it before the next epoch and adds nothing. On success the result AnnData
    goes into the model and one most-likely-cluster layer per FOV is added.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it in).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model = connect_model(napari_viewer)
        self.worker: Any = None
        self._cancel = threading.Event()

        self.data_label = QLabel()
        self.data_label.setWordWrap(True)
        self.mode = QComboBox()
        self.mode.addItems(list(MODES))
        self.mode.setToolTip("cells: map every reference cell; clusters: map cluster profiles (faster); "
                             "constrained: also learn which reference cells to keep")
        self.density = QComboBox()
        self.density.addItems(list(DENSITIES))
        self.density.setToolTip("prior on how many cells each spatial spot holds; uniform for single-cell data")
        self.engine = QComboBox()
        self.engine.addItems(list(ENGINES))
        self.engine.setCurrentText("auto")
        self.engine.setToolTip("auto (default): exact dense map for small data, the lean engine (candidate "
                               "pairs, linear memory) above 50 million reference x spatial pairs")
        self.genes = QComboBox()
        self.genes.addItems(["overlap", "markers", "list"])
        self.genes.currentTextChanged.connect(self._genes_changed)
        self.n_markers = QSpinBox()
        self.n_markers.setRange(1, 10_000)
        self.n_markers.setValue(100)
        self.n_markers.setToolTip("marker genes per cluster (rank_genes_groups)")
        self.gene_list = QLineEdit()
        self.gene_list.setPlaceholderText("training genes, e.g. Gad1, Slc17a6, Sst")
        self.epochs = QSpinBox()
        self.epochs.setRange(0, 100_000)
        self.epochs.setValue(500)
        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(3)
        self.learning_rate.setRange(0.001, 10.0)
        self.learning_rate.setValue(0.1)
        self.transform = QComboBox()
        self.transform.addItems(["none", "normalize_log1p"])
        self.device = QComboBox()
        self.device.addItems(_devices())
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)

        self.run_button = QPushButton("Map")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m epochs")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.plot = ScorePlot()

        form = QFormLayout()
        form.addRow("Mode", self.mode)
        form.addRow("Density prior", self.density)
        form.addRow("Engine", self.engine)
        form.addRow("Training genes", self.genes)
        form.addRow("Markers / cluster", self.n_markers)
        form.addRow("Gene list", self.gene_list)
        form.addRow("Epochs", self.epochs)
        form.addRow("Learning rate", self.learning_rate)
        form.addRow("Transform", self.transform)
        form.addRow("Device", self.device)
        form.addRow("Seed", self.seed)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.data_label)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.plot)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self._genes_changed(self.genes.currentText())
        for sig in (self.model.reference_changed, self.model.spatial_changed):
            sig.connect(self._data_changed)
        self.model.keys_changed.connect(self._data_changed)
        self._data_changed()

    # ------------------------------------------------------------------ settings
    def _genes_changed(self, text: str) -> None:
        self.n_markers.setEnabled(text == "markers")
        self.gene_list.setEnabled(text == "list")

    def _data_changed(self, *_: Any) -> None:
        ref, spa, m = self.model.reference, self.model.spatial, self.model
        if ref is None or spa is None:
            missing = " and ".join(n for n, a in (("a reference", ref), ("spatial data", spa)) if a is None)
            self.data_label.setText(f"Load {missing} first (Load data widget or File > Open).")
        else:
            self.data_label.setText(
                f"{ref.n_obs:,} reference cells -> {spa.n_obs:,} spatial cells; "
                f"clusters: {m.cluster_key or '(none)'}; FOV: {m.fov_key or '(one)'}"
            )
        self.run_button.setEnabled(ref is not None and spa is not None and self.worker is None)

    def parameters(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~napari_spatial_impute.map_cells_to_space` chosen here."""
        genes: Any = self.genes.currentText()
        if genes == "list":
            genes = [g for g in self.gene_list.text().replace(",", " ").split() if g]
        return {
            "mode": self.mode.currentText(),
            "cluster_key": self.model.cluster_key,
            "genes": genes,
            "n_markers": self.n_markers.value(),
            "density": self.density.currentText(),
            "engine": self.engine.currentText(),
            "epochs": self.epochs.value(),
            "learning_rate": self.learning_rate.value(),
            "transform": self.transform.currentText(),
            "device": self.device.currentText(),
            "seed": self.seed.value(),
        }

    # ------------------------------------------------------------------ running
    def run(self) -> Any:
        """Start the mapping in a worker thread and return the worker (``None`` if not started)."""
        ref, spa = self.model.reference, self.model.spatial
        if self.worker is not None or ref is None or spa is None:
            return None
        params = self.parameters()
        self._cancel = threading.Event()
        n = params["epochs"]
        finish = partial(result_layers, fov_key=self.model.fov_key)

        def mapping() -> Any:
            return (yield from guarded(iter_mapping(ref, spa, self._cancel, finish, **params)))

        worker = thread_worker(mapping, progress={"total": n, "desc": "Mapping cells to space"}, start_thread=False)()
        worker.yielded.connect(self._on_epoch)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.progress.setRange(0, max(n, 1))
        self.progress.setValue(0)
        self.plot.reset(n)
        self.status.setText("Preparing genes and data...")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running mapping before its next epoch; nothing is added."""
        if self.worker is None:
            return
        self._cancel.set()
        self.worker.quit()
        self.cancel_button.setEnabled(False)
        self.status.setText("Cancelling...")

    def _on_epoch(self, info: EpochInfo) -> None:
        self.progress.setValue(info.epoch)
        self.plot.add(info.score)
        self.status.setText(f"epoch {info.epoch} / {info.n_epochs} · score {info.score:.3f}")

    def _on_returned(self, value: Any) -> None:
        if value is None or self._cancel.is_set():
            return
        if isinstance(value, Failed):
            self.status.setText(f"Error: {value.message}")
            show_error(value.message)
            return
        adata, layer_data = value
        layers = [Points(data, **kwargs) for data, kwargs, _ in layer_data]  # all built before any is added
        names = {layer.name for layer in layers}
        for old in [layer for layer in self.viewer.layers if layer.name in names]:
            self.viewer.layers.remove(old)
        self.model.set_result(adata)
        for layer in layers:
            self.viewer.add_layer(layer)
        score = adata.uns["spatial_impute"]["training_score"]
        self.status.setText(
            f"Done: {adata.n_vars:,} genes imputed at {adata.n_obs:,} cells; training score {score:.3f}."
        )
        show_info(f"mapping finished: training score {score:.3f}")

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText(f"Error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")

    def _on_finished(self) -> None:
        if self._cancel.is_set():
            self.status.setText("Cancelled; nothing was added.")
        self.worker = None
        self.cancel_button.setEnabled(False)
        self._data_changed()
