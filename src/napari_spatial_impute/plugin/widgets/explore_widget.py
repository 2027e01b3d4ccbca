"""Explore widget: imputed and measured genes, their prediction intervals and cluster
probabilities, one layer per role for every sample (showing another gene recolours it), their
colour scales, and the FOV navigator.

Showing a value reads it, computes its limits and colours (an RGBA array) and builds the layer
data in a worker thread (above :data:`ASYNC_CELLS` cells); the main thread only adds a layer from
prepared arrays or recolours one with a single ``face_color`` setter, then tells the model what
is shown (:meth:`~napari_spatial_impute.plugin.model.SpatialImputeModel.set_shown`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from napari.settings import get_settings
from napari.utils.notifications import show_warning
from qtpy.QtCore import QStringListModel, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from napari_spatial_impute.io.schema import interval_levels
from napari_spatial_impute.plugin.model import ShownValues
from napari_spatial_impute.plugin.widgets.base import PluginWidget
from napari_spatial_impute.plugin.widgets.color_scales import ColorScales
from napari_spatial_impute.plugin.widgets.layer_ops import (
    PREVIOUS_SUFFIX,
    arrange_side_by_side,
    find_layers,
    gene_specs,
    hide_data_layers,
    notify_error,
    place_cluster,
    place_gene,
    place_predicted,
    refresh_layers,
    zoom_to_section,
)
from napari_spatial_impute.plugin.widgets.linking import get_link_controller
from napari_spatial_impute.plugin.widgets.navigator import OUTLINES_KIND, FovNavigator
from napari_spatial_impute.plugin.widgets.uncertainty_controls import UncertaintyControls
from napari_spatial_impute.viz.cell_shapes import CELL_LABELS_KIND, CELL_VALUES_KIND
from napari_spatial_impute.viz.explore import (
    category_rgba,
    cluster_names,
    gene_names,
    predicted_layer_specs,
    shared_genes,
    value_layer_specs,
)
from napari_spatial_impute.viz.layers import PointsSpec, plugin_meta
from napari_spatial_impute.viz.rasters import RASTER_KINDS
from napari_spatial_impute.viz.sections import drawn_point_size, laid_out, sample_rows

#: Above this many cells layer data is built in a worker thread (below, it takes a few ms and the
#: layers are returned at once).
ASYNC_CELLS = 10_000


class ExploreWidget(PluginWidget):
    """Choose genes, clusters and FOVs of the current mapping result and show them as layers.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it in).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self._last_gene: str | None = None
        self._last_cluster: str | None = None
        #: The side-by-side grid was turned on for measured layers (not by the user).
        self._auto_grid = False
        #: What the last gene's status line adds (e.g. why its measured layer is hidden).
        self._note = ""

        self.info = QLabel("No mapping result yet: run a mapping or open a result file.")
        self.info.setWordWrap(True)

        self.gene_edit = QLineEdit()
        self.gene_edit.setPlaceholderText("type a gene (any imputed gene)")
        self.completer_model = QStringListModel()  # what QCompleter([]) makes, kept typed
        self.completer = QCompleter(self.completer_model)
        self.completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.gene_edit.setCompleter(self.completer)
        self.gene_edit.returnPressed.connect(self.show_gene)
        self.gene_button = QPushButton("Show gene")
        self.gene_button.clicked.connect(self.show_gene)
        self.measured_check = QCheckBox("measured beside imputed (shared genes, side by side)")
        self.measured_check.setChecked(True)
        self.recolor_check = QCheckBox("recolour the shown layers instead of adding new ones")
        self.recolor_check.setChecked(True)
        self.grid_check = QCheckBox("side by side: one grid cell per role, linked cameras")
        self.grid_check.setToolTip(
            "imputed, measured, interval width... each in its own view of the whole data, "
            "panned and zoomed together"
        )
        self.grid_check.setChecked(bool(napari_viewer.grid.enabled))
        self.grid_check.toggled.connect(self._set_grid)
        self.tooltip_check = QCheckBox("hover tooltips (napari setting: layer tooltips)")
        self.tooltip_check.setToolTip(
            "the hovered cell's features (values, top imputed genes, top clusters) also appear "
            "beside the cursor; they are always in the status bar"
        )
        self.tooltip_check.setChecked(bool(get_settings().appearance.layer_tooltip_visibility))
        self.tooltip_check.toggled.connect(self._set_tooltips)
        self.links = get_link_controller(napari_viewer)
        self.link_check = QCheckBox("link selections (spatial cells <-> reference cells)")
        self.link_check.setChecked(self.links.enabled)
        self.link_check.toggled.connect(self._set_linking)

        self.cluster_combo = QComboBox()
        self.cluster_button = QPushButton("Show probability")
        self.cluster_button.clicked.connect(self.show_cluster)
        self.predicted_button = QPushButton("Most likely cluster")
        self.predicted_button.clicked.connect(self.show_predicted)

        self.size_spin = QDoubleSpinBox()
        self.size_spin.setDecimals(3)
        self.size_spin.setRange(0.001, 1e6)
        self.size_spin.setToolTip("point size in data units (default: the cells' median spacing)")

        self.uncertainty = UncertaintyControls(napari_viewer, self.model)
        self.navigator = FovNavigator(napari_viewer, self.model)
        self.scales = ColorScales(napari_viewer, self.model)

        # tabs, so that the Load, Map and Explore docks fit a 1080p screen together
        values = QWidget()
        form = QFormLayout(values)
        row = QHBoxLayout()
        row.addWidget(self.gene_edit, 1)
        row.addWidget(self.gene_button)
        form.addRow("Gene", row)
        form.addRow("", self.measured_check)
        row = QHBoxLayout()
        row.addWidget(self.cluster_combo, 1)
        row.addWidget(self.cluster_button)
        form.addRow("Cluster", row)
        form.addRow("", self.predicted_button)
        display = QWidget()
        display_form = QFormLayout(display)
        display_form.addRow("Point size", self.size_spin)
        display_form.addRow(self.recolor_check)
        display_form.addRow(self.grid_check)
        display_form.addRow(self.link_check)
        display_form.addRow(self.tooltip_check)
        self.tabs = QTabWidget()
        self.tabs.addTab(values, "Values")
        uncertainty = QWidget()  # the group hides itself for results without intervals
        box = QVBoxLayout(uncertainty)
        box.addWidget(self.uncertainty)
        box.addStretch(1)
        self.tabs.addTab(uncertainty, "Uncertainty")
        self.tabs.addTab(self.navigator, "FOVs")
        self.tabs.addTab(display, "Display")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.info)
        layout.addWidget(self.tabs)
        layout.addWidget(self.status)
        layout.addWidget(self.scales)
        layout.addStretch(1)

        self.model.result_changed.connect(self._on_result)
        self.model.keys_changed.connect(self.navigator.refresh)
        self._on_result(self.model.result)

    # ------------------------------------------------------------------ state
    def _on_result(self, result: Any = None) -> None:
        result = self.model.result
        detached: list = []
        try:  # layers shown before follow the new result, or stay as they were (and say so)
            _, detached = refresh_layers(
                self.viewer, result, self.model.fov_key, self.model.sample_key
            )
        except Exception as exc:
            notify_error(exc)
        if detached:
            n = len(detached)
            show_warning(
                f"{n} layer{'s' if n != 1 else ''} of the previous result kept unchanged "
                f"(the new result lacks {'their' if n != 1 else 'its'} gene, cluster or FOV cells); "
                f"{'they are' if n != 1 else 'it is'} named '...{PREVIOUS_SUFFIX}': "
                "close them when done comparing."
            )
        self.uncertainty.set_result(result)  # offered only with intervals; masks re-applied
        self.tabs.setTabVisible(1, result is not None and bool(interval_levels(result)))
        enabled = result is not None
        for w in (
            self.gene_edit,
            self.gene_button,
            self.cluster_combo,
            self.cluster_button,
            self.predicted_button,
            self.size_spin,
        ):
            w.setEnabled(enabled)
        self.cluster_combo.clear()
        if result is None:
            self.completer_model.setStringList([])
            self.info.setText("No mapping result yet: run a mapping or open a result file.")
            self.navigator.refresh()
            return
        genes = gene_names(result)
        self.completer_model.setStringList(genes)
        clusters = cluster_names(result)
        self.cluster_combo.addItems(clusters)
        self.cluster_button.setEnabled(bool(clusters))
        self.predicted_button.setEnabled(bool(clusters))
        self.size_spin.setValue(drawn_point_size(result, self.navigator.keys()[1]))
        self.navigator.refresh()
        n_samples = len(self._samples())
        self.info.setText(
            f"{result.n_obs:,} cells"
            + (f", {n_samples} samples" if n_samples > 1 else "")
            + f", {_count(self.navigator.fov_list.count(), 'FOV')}; {len(genes):,} genes "
            f"({len(shared_genes(result))} measured); {_count(len(clusters), 'cluster')}"
        )

    def _samples(self) -> list[str]:
        """The result's samples (``[""]`` without a sample column)."""
        try:
            return list(sample_rows(self.model.result, self.navigator.keys()[1]))
        except Exception as exc:
            notify_error(exc)
            return [""]

    def _set_tooltips(self, on: bool) -> None:
        get_settings().appearance.layer_tooltip_visibility = bool(on)

    def _set_grid(self, on: bool) -> None:
        self._auto_grid = False  # the user's choice from now on
        arrange_side_by_side(self.viewer, bool(on))
        if not on and self.navigator.outline_layer() is not None:
            self.navigator.apply_focus()  # the outlines back on top of the cells
        self.fit_view()  # each grid cell (or the one view) shows the whole data

    def _follow_measured(self, layers: list) -> None:
        """Measured beside imputed: the side-by-side grid comes on when measured layers are
        shown (drawn in the same place, they would hide the imputed ones) and goes off again
        when a gene without them follows, unless the user set the grid themselves."""
        measured = any(plugin_meta(lay).get("kind") == "measured" for lay in layers)
        self._note = ""
        if measured and not self.grid_check.isChecked() and _store_rasters_shown(self.viewer):
            # napari's grid puts every layer in a cell of its own: the tissue image and the
            # cells coloured in their masks would leave each other; measured waits, hidden
            for lay in layers:
                if plugin_meta(lay).get("kind") == "measured":
                    lay.visible = False
            self._note = (
                "; measured layer hidden over the store's image (side by side, in Display, "
                "would part the image from the cells): show it or tick side by side to compare"
            )
        elif measured and not self.grid_check.isChecked():
            self.grid_check.blockSignals(True)
            self.grid_check.setChecked(True)
            self.grid_check.blockSignals(False)
            self._auto_grid = True
            arrange_side_by_side(self.viewer)
            self.fit_view()  # each grid cell shows the whole data
        elif not measured and self._auto_grid and self.grid_check.isChecked():
            if any(plugin_meta(lay).get("kind") == "imputed" for lay in layers):
                self.grid_check.blockSignals(True)
                self.grid_check.setChecked(False)
                self.grid_check.blockSignals(False)
                self._auto_grid = False
                arrange_side_by_side(self.viewer, False)
                if self.navigator.outline_layer() is not None:
                    self.navigator.apply_focus()  # the outlines back on top of the cells
                self.fit_view()

    def fit_view(self) -> None:
        """Fit the section(s) in view, in each grid cell when side by side: napari's reset_view
        fits every layer (a reference UMAP beside would shrink the tissue to a corner)."""
        result = self.model.result
        if result is None:
            self.viewer.reset_view()
            return
        try:
            zoom_to_section(self.viewer, result, *self.navigator.keys())
        except Exception:  # no finite coordinates: napari's own fit
            self.viewer.reset_view()

    def _set_linking(self, on: bool) -> None:
        self.links.enabled = bool(on)

    def _targets(self, role: str, last: str | None) -> list:
        """Layers to recolour: selected layers of ``role``, else those of the last shown value."""
        if not self.recolor_check.isChecked():
            return []
        selected = [
            layer
            for layer in self.viewer.layers.selection
            if plugin_meta(layer).get("kind") == role
        ]
        if selected:
            return selected
        found = find_layers(self.viewer, role, value=last) if last else []
        return found or [lay for lay in find_layers(self.viewer, role) if _explore(lay)][-1:]

    # ------------------------------------------------------------------ actions
    def _n_cells(self) -> int:
        result = self.model.result
        return 0 if result is None else int(result.n_obs)

    def _dispatch(
        self, build: Callable[[], Any], place: Callable[[Any], list], done: Callable[[list], None]
    ) -> list:
        """Build layer data, then add it. ``build`` returns ``(data, shown)``: the layer data and
        the :class:`ShownValues` (colours included) of what it shows. Above :data:`ASYNC_CELLS`
        cells the building runs in a worker thread (the widget stays responsive; the layers
        appear when it returns) and an empty list is returned; errors become notifications and
        add nothing.
        """

        def finish(built: Any) -> list:
            data, shown = built
            first = self.navigator.outline_layer() is None
            before = len(self.viewer.layers)
            try:
                layers = place(data)
            except Exception as exc:
                notify_error(exc)
                return []
            added = len(self.viewer.layers) != before  # a recolour adds none
            # the same cells drawn under these layers by the Load or Map widget: hidden
            hide_data_layers(self.viewer, self.model.result, self.model.spatial)
            if first and laid_out(
                self.model.result, self.navigator.keys()[1]
            ):  # name the samples moved side by side
                self.navigator.show_outlines()
                self.fit_view()  # every sample in view
            elif added and self.navigator.outline_layer() is not None:
                self.navigator.apply_focus()  # keep the outlines above the new layers
            self._follow_measured(layers)
            if self.grid_check.isChecked():
                arrange_side_by_side(self.viewer)
            done(layers)
            self.scales.refresh()
            if shown is not None:
                self.model.set_shown(shown)
            return layers

        if self._n_cells() <= ASYNC_CELLS:
            try:
                built = build()
            except Exception as exc:  # shown to the user, never half-added
                notify_error(exc)
                return []
            return finish(built)
        from napari.qt.threading import create_worker

        # no napari progress bar: opening its activity panel forces full canvas draws (seconds
        # each with 10^6 points in software OpenGL); the status line says it is working
        def build_warm() -> Any:
            warm_napari()  # once: napari's one-time costs here, not in the main thread
            return build()

        worker = create_worker(
            build_warm,
            _connect={"errored": lambda exc: notify_error(exc), "returned": finish},
            _start_thread=False,
        )
        worker.finished.connect(lambda: self._set_busy(False))
        self._set_busy(True)
        self.start_worker(worker)
        return []

    def _set_busy(self, busy: bool) -> None:
        for w in (self.gene_button, self.cluster_button, self.predicted_button):
            w.setEnabled(not busy)
        if busy:
            self.status.setText("building layers...")

    def show_gene(self, gene: str | None = None) -> list:
        """Show ``gene`` (default: the typed one): one imputed layer for all samples (and measured
        and interval ones), recolouring those shown; returns the layers."""
        result = self.model.result
        gene = gene if isinstance(gene, str) else self.gene_edit.text().strip()
        if result is None or not gene:
            return []
        keys: dict[str, Any] = {"fov_key": self.model.fov_key, "sample_key": self.model.sample_key}
        measured = self.measured_check.isChecked()
        size, level = self.size_spin.value(), self.uncertainty.interval_level()

        def build() -> Any:
            specs = gene_specs(result, gene, **keys, measured=measured, size=size, interval=level)
            return specs, shown_values(result, specs[0][0]) if specs[0] else None

        def place(specs: Any) -> list:
            imputed, measured_specs, interval_specs = specs
            targets = self._targets("imputed", self._last_gene)
            # unticked: interval layers of a recoloured gene go, like its measured ones
            return place_gene(self.viewer, imputed, measured_specs, targets, interval_specs or [])

        def done(layers: list) -> None:
            self._last_gene = plugin_meta(layers[0])["value"] if layers else gene
            names = ", ".join(str(plugin_meta(lay).get("kind")) for lay in layers)
            self.status.setText(f"{self._last_gene}: {names}{self._note}")
            self.uncertainty.gene_shown(self._last_gene)

        return self._dispatch(build, place, done)

    def show_cluster(self, cluster: str | None = None) -> list:
        """Show the probability of ``cluster`` (default: the chosen one), one layer for all samples."""
        result = self.model.result
        cluster = cluster if isinstance(cluster, str) else self.cluster_combo.currentText()
        if result is None or not cluster:
            return []
        keys: dict[str, Any] = {"fov_key": self.model.fov_key, "sample_key": self.model.sample_key}
        size = self.size_spin.value()

        def build() -> Any:
            specs = value_layer_specs(result, "probability", cluster, **keys, size=size)
            return specs, shown_values(result, specs[0])

        def place(specs: Any) -> list:
            return place_cluster(
                self.viewer, specs, self._targets("probability", self._last_cluster)
            )

        def done(layers: list) -> None:
            self._last_cluster = cluster
            self.status.setText(f"{cluster} probability")

        return self._dispatch(build, place, done)

    def show_predicted(self) -> list:
        """Show the most likely cluster of each cell, one layer for all samples."""
        result = self.model.result
        if result is None:
            return []
        keys: dict[str, Any] = {"fov_key": self.model.fov_key, "sample_key": self.model.sample_key}
        size = self.size_spin.value()

        def build() -> Any:
            specs = predicted_layer_specs(result, **keys, size=size)
            return specs, shown_values(result, specs[0])

        def place(specs: Any) -> list:
            return place_predicted(self.viewer, specs, result)

        def done(layers: list) -> None:
            self.status.setText("most likely cluster")

        return self._dispatch(build, place, done)

    def show_fov_outlines(self) -> Any:
        """Add (or replace) one Shapes layer with every FOV's and sample's outline and name."""
        return self.navigator.show_outlines()

    def go_to_fov(self, fov: str | None = None) -> bool:
        """Zoom the camera to one FOV (default: the one chosen in the navigator's list)."""
        if not isinstance(fov, str):
            item = self.navigator.fov_list.currentItem()
            fov = item.text() if item is not None else ""
        if not self.navigator.go_to(fov):
            return False
        self.status.setText(f"FOV {fov}")
        return True

    def closeEvent(self, event: Any) -> None:
        self.navigator.close_viewer_hooks()
        self.scales.close_viewer_hooks()
        super().closeEvent(event)


_WARM: list[bool] = []


def warm_napari() -> None:
    """Pay napari's one-time costs of a first Points and Shapes layer (its units registry, the
    compiled triangulation of shapes: about 2 s at first use, measured here) in the calling
    worker thread, once per process, so that the main thread only adds prepared layers. The
    layers made are thrown away (layer models hold no Qt objects)."""
    if _WARM:
        return
    _WARM.append(True)
    from napari.layers import Points, Shapes

    box = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    Points(np.zeros((1, 2)))
    Shapes([box], shape_type="rectangle", text={"string": "{name}"}, features={"name": ["a"]})


def _explore(layer: Any) -> bool:
    return bool(plugin_meta(layer).get("explore"))


def shown_values(result: Any, spec: PointsSpec) -> ShownValues:
    """What a layer spec shows, per result row (values, the exact colours, limits): what
    :meth:`~napari_spatial_impute.plugin.model.SpatialImputeModel.set_shown` carries. Rows the
    layer does not draw are NaN (code -1) and transparent. Safe in a worker thread."""
    md = spec.meta
    rows = np.asarray(md["rows"], dtype=np.int64)
    n = int(result.n_obs)
    rgba = np.zeros((n, 4), dtype=np.float32)
    column = spec.features[str(md["value"])]
    if md.get("kind") == "predicted":
        cats = [str(c) for c in column.cat.categories]
        codes = np.full(n, -1, dtype=np.int32)
        codes[rows] = np.asarray(column.cat.codes)
        colors = category_rgba(spec.kwargs["face_color_cycle"], cats)
        drawn = codes[rows] >= 0
        rgba[rows[drawn]] = colors[codes[rows][drawn]]
        return ShownValues("predicted", "", codes, rgba, categories=tuple(cats))
    vals = np.full(n, np.nan, dtype=np.float32)
    vals[rows] = column.to_numpy(dtype=np.float32)
    rgba[rows] = spec.kwargs["face_color"]
    limits = tuple(float(v) for v in md["limits"])
    return ShownValues(
        str(md["kind"]), str(md["value"]), vals, rgba, (limits[0], limits[1]), md["colormap"]
    )


def _store_rasters_shown(viewer: Any) -> bool:
    """Whether a store's image or its cells' masks are shown (the cells drawn over them)."""
    kinds = (*RASTER_KINDS, CELL_LABELS_KIND, CELL_VALUES_KIND)
    return any(lay.visible and plugin_meta(lay).get("kind") in kinds for lay in viewer.layers)


def _count(n: int, noun: str) -> str:
    """``"1 FOV"``, ``"4 FOVs"``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


__all__ = ["OUTLINES_KIND", "ExploreWidget"]
