"""Diagnostics widget: training-score panels (and the map choice of ``method="auto"``),
per-cell-type validation, cross-validation table, per-gene reliability and interval calibration."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from napari_spatial_impute._errors import first_line
from napari_spatial_impute.core.evaluate import validate_cell_types
from napari_spatial_impute.core.settings import MappingSettings, resolve_map_method
from napari_spatial_impute.plugin.cv_worker import CVProgress, cv_kwargs, iter_cross_validation
from napari_spatial_impute.plugin.widgets.base import PluginWidget
from napari_spatial_impute.plugin.widgets.figure_panel import FigurePanel
from napari_spatial_impute.plugin.widgets.layer_ops import find_layers, notify_error, open_gene
from napari_spatial_impute.plugin.widgets.linking import get_link_controller
from napari_spatial_impute.plugin.widgets.reliability_panel import ReliabilityPanel
from napari_spatial_impute.plugin.widgets.table_items import NumberItem, gene_table
from napari_spatial_impute.plugin.workers import warm_up
from napari_spatial_impute.viz.explore import shared_genes
from napari_spatial_impute.viz.layers import plugin_meta, result_cluster_key
from napari_spatial_impute.viz.plots import (
    cv_summary_text,
    default_markers,
    map_choice_of,
    map_choice_text,
    marker_list,
    plot_cell_type_validation,
    plot_training_scores,
    training_panels,
)

CV_COLUMNS = (
    "gene",
    "fold",
    "pearson",
    "predicted_pearson",
    "coverage_90",
    "coverage_67",
    "width_90",
    "width_67",
    "cosine",
    "spearman",
    "sparsity_sp",
    "n_training_genes",
)


class DiagnosticsWidget(PluginWidget):
    """How good is the mapping: training scores, marker levels per cell type, cross-validation.

    Clicking a gene (a dot of the score panels or a row of the CV table) shows its imputed and
    measured layers of every sample, recolouring the layers that this widget opened before.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it in).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        warm_up()  # the cross-validation's worker would otherwise load numba mid-run
        self._opened_gene: str | None = None
        get_link_controller(napari_viewer)
        self.tabs = QTabWidget()

        self._val_table: pd.DataFrame | None = None
        self._val_message = ""
        self.train_panel = FigurePanel(
            self._draw_training, lambda: training_panels(self.model.result), "training_scores"
        )
        self.train_fig, self.train_canvas = self.train_panel.fig, self.train_panel.canvas
        self.train_canvas.mpl_connect("pick_event", self._on_pick)
        page = QWidget()
        lay = QVBoxLayout(page)
        self.train_info = QLabel("")
        self.train_info.setWordWrap(True)
        # which map method="auto" made, and the held-out scores it was chosen on
        self.choice_info = QLabel("")
        self.choice_info.setWordWrap(True)
        self.choice_info.setVisible(False)
        self.choice_warning = QLabel("")
        self.choice_warning.setWordWrap(True)
        self.choice_warning.setStyleSheet("color: #e0a030;")
        self.choice_warning.setVisible(False)
        lay.addWidget(self.train_info)
        lay.addWidget(self.choice_info)
        lay.addWidget(self.choice_warning)
        lay.addWidget(self.train_panel, 1)
        self.tabs.addTab(page, "Training scores")

        self.val_panel = FigurePanel(
            self._draw_validation, self._n_markers, "cell_type_validation", panel_height=380
        )
        self.val_fig, self.val_canvas = self.val_panel.fig, self.val_panel.canvas
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
        # the typed genes that are not measured: named, never dropped silently (issue 24)
        self.markers_info = QLabel("")
        self.markers_info.setWordWrap(True)
        self.markers_info.setStyleSheet("color: #e0a030;")
        self.markers_info.setVisible(False)
        lay.addWidget(self.markers_info)
        lay.addWidget(self.val_panel, 1)
        self.tabs.addTab(page, "Cell-type validation")
        self._val_page = page
        self._validation_stale = False
        self.tabs.currentChanged.connect(self._tab_shown)

        self.cv_info = QLabel("No cross-validation was run.")
        self.cv_info.setWordWrap(True)  # a long summary never widens the dock (issue 24)
        self.cv_table = gene_table(CV_COLUMNS)
        self.cv_table.cellClicked.connect(self._on_cv_clicked)
        self.folds_spin = QSpinBox()
        self.folds_spin.setRange(2, 100)
        self.folds_spin.setValue(5)
        self.cv_epochs_spin = QSpinBox()
        self.cv_epochs_spin.setRange(1, 100_000)
        self.cv_epochs_spin.setValue(300)
        self.cv_run_button = QPushButton("Run cross-validation")
        self.cv_run_button.setToolTip("leave-genes-out CV with the result's mapping settings")
        self.cv_run_button.clicked.connect(self.run_cv)
        self.cv_stop_button = QPushButton("Stop")
        self.cv_stop_button.setEnabled(False)
        self.cv_stop_button.clicked.connect(self.stop_cv)
        self.cv_open_button = QPushButton("Open .csv...")
        self.cv_open_button.setToolTip("a table written by `napari-spatial-impute evaluate`")
        self.cv_open_button.clicked.connect(self._browse_cv)
        self.cv_progress = QProgressBar()
        self.cv_progress.setVisible(False)
        self._cv_worker: Any = None
        self._cv_pbar: Any = None
        self._cv_cancel = threading.Event()
        page = QWidget()
        lay = QVBoxLayout(page)
        # two rows (settings, then actions): one row of all of them widened the dock to 575 px
        row = QHBoxLayout()
        row.addWidget(QLabel("folds"))
        row.addWidget(self.folds_spin)
        row.addWidget(QLabel("epochs"))
        row.addWidget(self.cv_epochs_spin)
        row.addStretch(1)
        lay.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.cv_run_button)
        row.addWidget(self.cv_stop_button)
        row.addWidget(self.cv_open_button)
        row.addStretch(1)
        lay.addLayout(row)
        lay.addWidget(self.cv_progress)
        lay.addWidget(self.cv_info)
        lay.addWidget(self.cv_table, 1)
        self.tabs.addTab(page, "Cross-validation")

        self.reliability = ReliabilityPanel()
        self.reliability.gene_clicked.connect(self.open_gene)
        self.tabs.addTab(self.reliability, "Reliability")

        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs)
        self.model.result_changed.connect(self._on_result)
        self.model.cv_changed.connect(self._on_cv)
        self._on_result()
        self._on_cv()

    # ------------------------------------------------------------------ updates
    def _on_result(self, *_: Any) -> None:
        result = self.model.result
        params = (
            result.uns.get("spatial_impute", {}).get("params", {}) if result is not None else {}
        )
        # epochs mean something for a Tangram map only (the ensemble map trains nothing)
        settings = MappingSettings.from_params(params)
        self.cv_epochs_spin.setEnabled(
            result is None or resolve_map_method(settings.method, settings.mode) == "tangram"
        )
        self._val_table, self._val_message = None, ""
        try:
            self.reliability.set_result(result, self.model.cv_table)
        except Exception as exc:
            notify_error(exc)
        choice = map_choice_of(result)
        self.choice_info.setText(map_choice_text(choice))
        self.choice_info.setVisible(choice is not None)
        warning = choice.warning if choice is not None else ""
        self.choice_warning.setText(f"Warning: {warning}" if warning else "")
        self.choice_warning.setVisible(bool(warning))
        if result is None:
            self.train_info.setText("No mapping result yet.")
            self.train_panel.redraw()
            self.val_panel.redraw()
            return
        try:
            self.train_panel.redraw()
            info = result.uns.get("spatial_impute", {})
            score = info.get("training_score", float("nan"))
            n_train = int(result.var["is_training"].astype(bool).sum())
            which = (
                "ensemble map (nothing trained): training-gene score"
                if info.get("params", {}).get("method") == "ensemble"
                else "training score"
            )
            self.train_info.setText(
                f"{which} {float(score):.3f} over {n_train} training genes; click a dot to show the gene."
            )
        except Exception as exc:
            notify_error(exc)
        if not self.markers_edit.text().strip():
            self.markers_edit.setText(", ".join(default_markers(result)))
        # out of sight (another tab): computed and drawn when its tab is shown
        self._validation_stale = True
        if not self.val_panel._out_of_sight():
            self.update_validation()

    def _tab_shown(self, index: int) -> None:
        if self.tabs.widget(index) is self._val_page and self._validation_stale:
            self.update_validation()

    def _draw_training(self, fig: Figure, ncols: int) -> None:
        result = self.model.result
        if result is not None:
            plot_training_scores(fig, result, ncols=ncols)

    def _n_markers(self) -> int:
        table = self._val_table
        return 1 if table is None else max(1, int(table["gene"].nunique()))

    def _draw_validation(self, fig: Figure, ncols: int) -> None:
        if self._val_table is not None:
            plot_cell_type_validation(fig, self._val_table, ncols=ncols)
        elif self._val_message:
            ax = fig.subplots()
            ax.text(0.5, 0.5, self._val_message, ha="center", va="center")
            ax.set_axis_off()

    def update_validation(self) -> pd.DataFrame | None:
        """Redraw the per-cell-type validation for the markers in the text box."""
        result = self.model.result
        if result is None:
            return None
        self._validation_stale = False
        self._val_table, self._val_message = None, ""
        if result_cluster_key(result) is None:  # nothing to validate against: say so, no pop-up
            self._val_message = "no cell types: map with a cluster key"
            self.val_panel.redraw()
            return None
        text = self.markers_edit.text()
        markers = marker_list(text, shared_genes(result)) or None
        self._say_unknown_markers(text, markers or [])
        try:
            table = validate_cell_types(result, markers=markers)
        except Exception as exc:
            notify_error(exc)
            self.val_panel.redraw()
            return None
        self._val_table = table
        self.val_panel.redraw()
        return table

    def _say_unknown_markers(self, text: str, found: list[str]) -> None:
        """One line naming the typed marker genes that are not measured genes of the result."""
        known = {g.lower() for g in found}
        unknown = list(
            dict.fromkeys(t for t in text.replace(",", " ").split() if t.lower() not in known)
        )
        if unknown:
            fix = (
                "showing the others"
                if found
                else "showing the default markers (one per cluster) instead"
            )
            self.markers_info.setText(
                f"not measured in the spatial data: {', '.join(unknown)}; {fix}."
            )
        self.markers_info.setVisible(bool(unknown))

    def _on_cv(self, *_: Any) -> None:
        table = self.model.cv_table
        try:  # the reliability plot compares with the held-out Pearson when it can
            self.reliability.draw(self.model.result, table)
        except Exception as exc:
            notify_error(exc)
        self.cv_table.setSortingEnabled(False)
        self.cv_table.setRowCount(0)
        if table is None or len(table) == 0:
            self.cv_info.setText("No cross-validation yet: run one here or open a table (.csv).")
            return
        cols = [c for c in CV_COLUMNS if c in table.columns]
        self.cv_table.setColumnCount(len(cols))
        self.cv_table.setHorizontalHeaderLabels(cols)
        self.cv_table.setRowCount(len(table))
        for i, rec in enumerate(table[cols].itertuples(index=False)):
            for j, v in enumerate(rec):
                if isinstance(v, (int, float, np.integer, np.floating)):
                    item: QTableWidgetItem = NumberItem(float(v))
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

    # ------------------------------------------------------------------ running a CV
    def open_cv_table(self, path: str) -> pd.DataFrame | None:
        """Read a cross-validation table (.csv with ``gene`` and ``pearson``) into the model."""
        try:
            table = pd.read_csv(path)
            missing = {"gene", "pearson"} - set(table.columns)
            if missing:
                raise ValueError(
                    f"{path} has no column {sorted(missing)[0]!r}; give a table written by "
                    "`napari-spatial-impute evaluate`."
                )
        except Exception as exc:
            notify_error(exc)
            return None
        self.model.set_cv_table(table)
        return table

    def _browse_cv(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Cross-validation table", "", "CSV (*.csv)")
        if path:
            self.open_cv_table(path)

    def run_cv(self) -> Any:
        """Start a leave-genes-out cross-validation in a worker thread (result's settings)."""
        from napari.qt.threading import thread_worker
        from napari.utils import progress

        ref, spa, result = self.model.reference, self.model.spatial, self.model.result
        if ref is None or spa is None:
            notify_error(
                ValueError(
                    "cross-validation needs the reference and the spatial data; load both first."
                )
            )
            return None
        params = (
            dict(result.uns.get("spatial_impute", {}).get("params", {}))
            if result is not None
            else {}
        )
        if self.model.cluster_key and "cluster_key" not in params:
            params["cluster_key"] = self.model.cluster_key
        kwargs = cv_kwargs(params, self.cv_epochs_spin.value())
        folds = self.folds_spin.value()
        self._cv_cancel = threading.Event()
        # no ``progress=``: napari would advance its bar once per yield; the bar below follows
        # the (throttled) epochs of all folds instead
        worker = thread_worker(
            iter_cross_validation,
            connect={
                "yielded": self._on_cv_progress,
                "returned": self._on_cv_done,
                "errored": self._on_cv_error,
            },
            start_thread=False,
        )(ref, spa, self._cv_cancel, folds, **kwargs)
        worker.finished.connect(self._on_cv_finished)
        total = max(folds * max(int(kwargs.get("epochs", 0) or 0), 1), 1)
        self._cv_pbar = progress(total=total, desc="cross-validation")
        self.cv_progress.setRange(0, total)
        self.cv_progress.setValue(0)
        self.cv_progress.setVisible(True)
        self.cv_run_button.setEnabled(False)
        self.cv_stop_button.setEnabled(True)
        self.cv_info.setText(f"cross-validating {folds} folds...")
        self._cv_worker = worker
        return self.start_worker(worker)

    def stop_cv(self) -> None:
        """Stop a running cross-validation after its current epoch."""
        self._cv_cancel.set()
        if self._cv_worker is not None:
            self._cv_worker.quit()
            self.cv_stop_button.setEnabled(False)
            self.cv_info.setText("stopping the cross-validation...")

    def _on_cv_progress(self, step: CVProgress) -> None:
        if self._cv_cancel.is_set():
            return
        self.cv_progress.setRange(0, step.total)
        self.cv_progress.setValue(min(step.done, step.total))
        running = min(step.fold + 1, step.folds) if step.epoch else step.fold
        self.cv_info.setText(
            f"cross-validating {step.folds} folds: fold {running} of {step.folds}"
            + (f", epoch {step.epoch} / {step.epochs}" if step.epoch else " done")
        )
        pbar = self._cv_pbar
        if pbar is not None and step.done > pbar.n:
            pbar.update(min(step.done, step.total) - pbar.n)  # processes events: do it last

    def _on_cv_done(self, table: pd.DataFrame | None) -> None:
        if table is not None and not self._cv_cancel.is_set():
            self.model.set_cv_table(table)

    def _on_cv_error(self, exc: BaseException) -> None:
        self.cv_info.setText(f"cross-validation failed: {first_line(exc)}")
        notify_error(exc)

    def _on_cv_finished(self) -> None:
        worker = self._cv_worker
        stopped = self._cv_cancel.is_set() or bool(getattr(worker, "abort_requested", False))
        pbar, self._cv_pbar = self._cv_pbar, None
        if pbar is not None:
            pbar.close()
        self.cv_progress.setVisible(False)
        self.cv_run_button.setEnabled(True)
        self.cv_stop_button.setEnabled(False)
        self._cv_worker = None
        if stopped:
            self.cv_info.setText("cross-validation stopped; no table was stored.")

    # ------------------------------------------------------------------ gene clicks
    def open_gene(self, gene: str) -> list:
        """Show a gene's layers in all samples (recolouring the ones this widget opened before)."""
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
                self.viewer,
                result,
                gene,
                fov_key=self.model.fov_key,
                sample_key=self.model.sample_key,
                recolor_layers=previous,
            )
        except Exception as exc:
            notify_error(exc)
            return []
        self._opened_gene = plugin_meta(layers[0]).get("value", gene) if layers else gene
        return layers

    def _on_cv_clicked(self, row: int, _col: int) -> None:
        header: list[str] = []
        for j in range(self.cv_table.columnCount()):
            head = self.cv_table.horizontalHeaderItem(j)
            assert head is not None  # every column gets a header label with the table
            header.append(head.text())
        item = self.cv_table.item(row, header.index("gene"))
        if item is not None:
            self.open_gene(item.text())

    def _on_pick(self, event: Any) -> None:
        genes = getattr(event.artist, "genes", None)
        if genes is None or not len(event.ind):
            return
        self.open_gene(genes[int(event.ind[0])])
