"""Load widget: reference and spatial ``.h5ad`` files (or plugin layers) into the shared model.

The spatial data may also be a SpatialData ``.zarr`` store: its cell table and coordinate system
are chosen under the path (:class:`~napari_spatial_impute.plugin.widgets.store_picker.StorePicker`)
and its images and labels of that coordinate system are shown under the cells.
The spatial cells become one Points layer for all samples (the sample and the FOV features,
samples sharing coordinates laid out side by side), coloured by a chosen obs column; the reference
becomes a Points layer at its UMAP (computed in a worker when absent), placed right of the tissue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
from napari.layers import Points
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_spatial_impute._errors import InputError, first_line
from napari_spatial_impute.io.files import (
    check_fov_key,
    find_fov_key,
    find_sample_key,
    fov_labels,
    read_h5ad,
    sample_labels,
    validate_adata,
)
from napari_spatial_impute.io.palette import stored_palette
from napari_spatial_impute.io.sdata import is_store, open_store, read_spatial
from napari_spatial_impute.plugin.reader import file_stamp
from napari_spatial_impute.plugin.widgets.base import PluginWidget
from napari_spatial_impute.plugin.widgets.store_picker import StorePicker
from napari_spatial_impute.plugin.workers import Failed
from napari_spatial_impute.viz.layers import (
    META_KEY,
    beside_transform,
    bounds_of,
    drawn_points,
    ensure_umap,
    guess_cluster_key,
    plugin_meta,
    point_size,
    recolor,
    reference_layer,
    set_meta,
    source_of,
    spatial_layers,
)
from napari_spatial_impute.viz.rasters import IMAGE_KIND, RASTER_KINDS

NONE = "(none)"
FROM_FILE = "(file below)"
#: ``metadata['spatial_impute']['origin']`` of the layers this widget adds.
ORIGIN = "load widget"


def data_summary(
    reference: ad.AnnData | None,
    spatial: ad.AnnData | None,
    cluster_key: str | None,
    fov_key: str | None,
    sample_key: str | None = None,
) -> str:
    """The counts shown by the widget: cells, genes, clusters, FOVs, samples and shared genes."""
    lines = []
    if reference is not None:
        n_cl = reference.obs[cluster_key].nunique() if cluster_key in reference.obs else 0
        lines.append(
            f"Reference: {reference.n_obs:,} cells x {reference.n_vars:,} genes"
            + (f", {n_cl} clusters" if cluster_key else "")
        )
    if spatial is not None:
        n_fov = len(fov_labels(spatial, fov_key).categories)
        n_samples = len(sample_labels(spatial, sample_key or None).categories)
        lines.append(
            f"Spatial: {spatial.n_obs:,} cells x {spatial.n_vars:,} genes, {n_fov} FOV{'s' if n_fov != 1 else ''}"
            + (f" in {n_samples} samples" if n_samples > 1 else "")
        )
    if reference is not None and spatial is not None:
        shared = set(map(str.lower, map(str, reference.var_names))) & set(
            map(str.lower, map(str, spatial.var_names))
        )
        lines.append(f"Shared genes: {len(shared):,}")
    return "\n".join(lines) or "Nothing loaded yet."


class _FileRow(QWidget):
    """A path line edit with a Browse button and a combo of plugin layers to take data from."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        #: The data set of each ``layer_combo`` entry (``None`` for :data:`FROM_FILE`).
        self.choices: list[ad.AnnData | None] = [None]
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip(f"take the {role} data from a layer opened by this plugin")
        self.path = QLineEdit()
        self.path.setPlaceholderText(
            f"{role} .h5ad" + (" or SpatialData .zarr" if role == "spatial" else "")
        )
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        if role == "spatial":
            store = QPushButton("Store...")
            store.setToolTip("choose a SpatialData .zarr store (a folder)")
            store.clicked.connect(self._browse_store)
            row.addWidget(store)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.layer_combo)
        box.addLayout(row)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, f"Open {self.role} data", "", "AnnData (*.h5ad)"
        )
        if path:
            self.path.setText(path)
            self.layer_combo.setCurrentIndex(0)

    def _browse_store(self) -> None:
        path = QFileDialog.getExistingDirectory(self, f"Open {self.role} SpatialData store")
        if path:
            self.path.setText(path)
            self.layer_combo.setCurrentIndex(0)


class LoadWidget(PluginWidget):
    """Pick the reference and spatial data, the cluster and FOV columns; show them as layers.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it in).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.umap_worker: Any = None
        #: The worker of the latest key choice (tests wait on it); a later choice supersedes it.
        self.key_worker: Any = None
        self._key_workers: list[Any] = []
        self._key_generation = 0
        self._last_key_kind = ""
        #: The file each role's data was last loaded from here (layer metadata ``source``).
        self._sources: dict[str, str | None] = {}

        self.reference_row = _FileRow("reference")
        self.spatial_row = _FileRow("spatial")
        self.store_picker = StorePicker()
        self.spatial_row.path.textChanged.connect(self._spatial_path_changed)
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self.load)
        self.cluster_combo = QComboBox()
        self.cluster_combo.setToolTip("reference obs column with the cell types/clusters")
        self.fov_combo = QComboBox()
        self.fov_combo.setToolTip(
            "spatial obs column with the field of view (a feature of the cells, for navigation)"
        )
        self.sample_combo = QComboBox()
        self.sample_combo.setToolTip(
            "spatial obs column with the sample/section: samples are laid out side by side "
            "when they share coordinates"
        )
        self.color_combo = QComboBox()
        self.color_combo.setToolTip("spatial obs column that colours the cells")
        self.summary = QLabel("Nothing loaded yet.")
        self.summary.setWordWrap(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        files = QWidget()
        files_form = QFormLayout(files)
        files_form.setContentsMargins(0, 0, 0, 0)
        files_form.addRow("Reference", self.reference_row)
        files_form.addRow("Spatial", self.spatial_row)
        files_form.addRow("", self.store_picker)
        files_form.addRow("", self.load_button)
        # folded once data is loaded: the Load, Map and Explore docks fit a 1080p screen
        self.files = files
        self.files_button = QPushButton("Data files")
        self.files_button.setCheckable(True)
        self.files_button.setChecked(True)
        self.files_button.setToolTip("show or fold the file choices")
        self.files_button.toggled.connect(self._show_files)
        form = QFormLayout()
        form.addRow(self.files_button)
        form.addRow(files)
        form.addRow("Cluster key", self.cluster_combo)
        form.addRow("FOV key", self.fov_combo)
        form.addRow("Sample key", self.sample_combo)
        form.addRow("Colour cells by", self.color_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.summary)
        layout.addWidget(self.status)
        layout.addStretch(1)
        # no taller than its contents: free height goes to the docks below (1080p screens)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

        self.cluster_combo.currentTextChanged.connect(self._cluster_changed)
        self.fov_combo.currentTextChanged.connect(self._fov_changed)
        self.sample_combo.currentTextChanged.connect(self._sample_changed)
        self.color_combo.currentTextChanged.connect(self._color_changed)
        self.on_layers_changed(self._refresh_layer_choices)
        self._refresh_layer_choices()
        if self.model.reference is not None or self.model.spatial is not None:
            self._fill_keys()

    # ------------------------------------------------------------------ inputs
    def _plugin_data(self, roles: tuple[str, ...]) -> list[tuple[str, ad.AnnData]]:
        """One ``(label, data)`` per data set of the plugin layers of ``roles`` (by metadata).

        The label is the name of the data set's first layer, with the number of its other layers;
        the data is found by identity, so renaming a layer changes nothing.
        """
        found: dict[int, list[Any]] = {}
        for layer in self.viewer.layers:
            meta = plugin_meta(layer)
            if "adata" in meta and meta.get("role") in roles:
                entry = found.setdefault(id(meta["adata"]), [layer.name, meta["adata"], 0])
                entry[2] += 1
        return [
            (name if n == 1 else f"{name} (+{n - 1} more layer{'s' if n > 2 else ''})", adata)
            for name, adata, n in found.values()
        ]

    def _refresh_layer_choices(self, *_: Any) -> None:
        for row, roles in ((self.reference_row, ("reference",)), (self.spatial_row, ("spatial",))):
            index = row.layer_combo.currentIndex()
            current = row.choices[index] if 0 <= index < len(row.choices) else None
            items = self._plugin_data(roles)
            row.layer_combo.blockSignals(True)
            row.layer_combo.clear()
            row.layer_combo.addItems([FROM_FILE, *(label for label, _ in items)])
            row.choices = [None, *(adata for _, adata in items)]
            same = [i for i, a in enumerate(row.choices) if a is not None and a is current]
            row.layer_combo.setCurrentIndex(same[0] if same else 0)
            row.layer_combo.blockSignals(False)

    def _spatial_path_changed(self, text: str) -> Any:
        path = text.strip()
        return self.store_picker.set_store(path if path and is_store(path) else None)

    def _chosen(self, row: _FileRow) -> ad.AnnData | str | None:
        index = row.layer_combo.currentIndex()
        if 0 < index < len(row.choices):
            return row.choices[index]
        text = row.path.text().strip()
        return text or None

    # ------------------------------------------------------------------ loading
    def load(self) -> Any:
        """Read the chosen files in a worker, then store and show them; returns the worker.

        Loading a file again replaces the layers shown for it before (and this widget's layers
        of the data it replaces); it never adds a second copy.
        """
        ref = self._chosen(self.reference_row)
        spa = self._chosen(self.spatial_row)
        if ref is None and spa is None:
            self.status.setText("Choose a reference and/or a spatial .h5ad file (or a layer).")
            return None

        table, cs = self.store_picker.choice()
        from_store = isinstance(spa, str) and is_store(spa)

        def read() -> tuple[Any, ...] | Failed:
            rasters: list[Any] = []
            try:
                r = read_h5ad(ref, "reference") if isinstance(ref, str) else ref
                if from_store and isinstance(spa, str):
                    from napari_spatial_impute.viz.rasters import prefetch, raster_layers

                    sdata = open_store(spa)
                    s = read_spatial(sdata, table, cs)
                    chosen = s.uns["spatialdata"]["coordinate_system"]
                    rasters = raster_layers(sdata, chosen, store=source_of(spa))
                    prefetch(rasters)  # napari reads the coarsest levels whole when adding
                else:
                    s = read_h5ad(spa, "spatial") if isinstance(spa, str) else spa
                if r is not None:
                    validate_adata(r, "reference")
                if s is not None:
                    validate_adata(s, "spatial", require_spatial=True)
                    point_size(s)  # cached per data set: not computed again on the main thread
            except InputError as exc:
                return Failed(str(exc).splitlines()[0])
            return r, s, source_of(ref), source_of(spa), rasters

        self.worker = thread_worker(read, start_thread=False)()
        self.worker.returned.connect(self._on_loaded)
        self.worker.errored.connect(
            lambda exc: self.status.setText(f"Error: {str(exc).splitlines()[0]}")
        )
        self.worker.finished.connect(lambda: self.load_button.setEnabled(True))
        self.load_button.setEnabled(False)
        self.status.setText("Reading...")
        return self.start_worker(self.worker)

    def _on_loaded(self, value: tuple[Any, ...] | Failed) -> None:
        """Store what was read; show the data read from files (``value[2:4]``: their sources,
        ``value[4]``: a store's image and label layer data)."""
        if isinstance(value, Failed):
            self.status.setText(f"Error: {value.message}")
            show_error(value.message)
            return
        ref, spa, ref_src, spa_src = value[:4]
        rasters = value[4] if len(value) > 4 else []
        if isinstance(spa_src, str) and is_store(spa_src):
            self.store_picker.remember()
        if ref is not None:
            self.model.set_reference(ref)
        if spa is not None:
            self.model.set_spatial(spa)
        ck = guess_cluster_key(ref) if ref is not None else self.model.cluster_key
        fk = find_fov_key(spa) if spa is not None else self.model.fov_key
        sk = (find_sample_key(spa, fk) or "") if spa is not None else self.model.sample_key
        self.model.set_keys(cluster_key=ck, fov_key=fk, sample_key=sk)
        self._fill_keys()
        self.status.setText("Loaded.")
        if self.model.reference is not None and self.model.spatial is not None:
            self.files_button.setChecked(False)
        if spa is not None and spa_src:
            self._sources["spatial"] = spa_src if isinstance(spa_src, str) else None
            self._reported(self.show_spatial)
            self.show_rasters(rasters)
        if ref is not None and ref_src:
            self._sources["reference"] = ref_src if isinstance(ref_src, str) else None
            self.show_reference()

    def _show_files(self, on: bool) -> None:
        self.files.setVisible(on)
        if not on:
            self.release_height()
        self.files_button.setText("Data files" if on else "Data files (folded: click to choose)")

    def _reported(self, build: Any) -> Any:
        """Run ``build`` (main thread); bad input becomes one notification and status line."""
        try:
            return build()
        except InputError as exc:
            msg = first_line(exc)
            self.status.setText(f"Error: {msg}")
            show_error(msg)
            return None

    def _fill_keys(self) -> None:
        ref, spa = self.model.reference, self.model.spatial
        for combo, adata, current in (
            (self.cluster_combo, ref, self.model.cluster_key),
            (self.fov_combo, spa, self.model.fov_key),
            (self.sample_combo, spa, self.model.sample_key),
            (self.color_combo, spa, self.color_combo.currentText()),
        ):
            combo.blockSignals(True)
            combo.clear()
            combo.addItems([NONE, *(map(str, adata.obs.columns) if adata is not None else [])])
            combo.setCurrentText(current if current and combo.findText(current) >= 0 else NONE)
            combo.blockSignals(False)
        self._update_summary()

    def _update_summary(self) -> None:
        m = self.model
        self.summary.setText(
            data_summary(m.reference, m.spatial, m.cluster_key, m.fov_key, m.sample_key)
        )

    @staticmethod
    def _key(text: str) -> str | None:
        return None if not text or text == NONE else text

    # ------------------------------------------------------------------ layers
    def _layers_of(self, adata: ad.AnnData | None, role: str) -> list[Points]:
        if adata is None:
            return []
        out = []
        for layer in self.viewer.layers:
            meta = plugin_meta(layer)
            if meta.get("adata") is adata and meta.get("role") == role:
                out.append(layer)
        return out

    def _replaced(self, adata: ad.AnnData, role: str) -> list[Points]:
        """Layers that new layers of ``adata`` replace: those of the same data or the same file,
        and this widget's earlier layers of that role (all found by metadata, never by name)."""
        source = self._sources.get(role)
        out = []
        for layer in self.viewer.layers:
            meta = plugin_meta(layer)
            if "adata" not in meta or meta.get("role") != role:
                continue
            if (
                meta["adata"] is adata
                or meta.get("origin") == ORIGIN
                or (source is not None and meta.get("source") == source)
            ):
                out.append(layer)
        return out

    def _mark(self, kwargs: dict[str, Any], role: str) -> dict[str, Any]:
        meta = kwargs["metadata"][META_KEY]
        meta["origin"] = ORIGIN
        meta["source"] = source = self._sources.get(role)
        meta["stamp"] = file_stamp(source) if source else None  # File > Open adds no copy
        return kwargs

    @property
    def spatial_layers(self) -> list[Points]:
        """The viewer's layers of the current spatial data (made here or opened from a file)."""
        return self._layers_of(self.model.spatial, "spatial")

    @property
    def reference_points(self) -> Points | None:
        """The viewer's layer of the current reference, if any."""
        found = self._layers_of(self.model.reference, "reference")
        return found[0] if found else None

    def show_spatial(self) -> list[Points]:
        """(Re)build the spatial layer (every sample in it), coloured by the chosen column."""
        spa = self.model.spatial
        if spa is None:
            return []
        data = self._spatial_layer_data(
            spa,
            self.model.fov_key,
            self.model.sample_key,
            self._key(self.color_combo.currentText()),
        )
        new = [Points(d, **self._mark(kw, "spatial")) for d, kw, _ in data]
        self._remove(self._replaced(spa, "spatial"))
        added = [self.viewer.add_layer(layer) for layer in new]
        self._place_reference()
        if len(added) > 1:
            self.viewer.reset_view()  # napari fitted the view to the first sample only
        return added

    @staticmethod
    def _spatial_layer_data(
        spa: ad.AnnData, fov_key: str | None, sample_key: str | None, color_by: str | None
    ) -> list[Any]:
        """The spatial layer's data: a list of one, every sample in it (any thread)."""
        return spatial_layers(
            spa,
            fov_key=fov_key,
            sample_key=sample_key,
            color_by=color_by,
            name="spatial",
            role="spatial",
            detect_fov=False,
        )

    def _show_layer_data(self, data: list[Any]) -> list[Points]:
        """Show prepared spatial layer data in the layers shown now, refilled in place (napari
        spends most of a second per layer removed), adding or removing only the difference: a
        sample key change refills the one layer (the samples' layout is in its coordinates)."""
        old = self.spatial_layers
        extents = [np.asarray(layer.extent.data) for layer in old]
        out = []
        for (points, kw, _), layer in zip(data, old, strict=False):
            self._refill(layer, points, self._mark(kw, "spatial"))
            out.append(layer)
        for points, kw, _ in data[len(old) :]:
            out.append(self.viewer.add_layer(Points(points, **self._mark(kw, "spatial"))))
        self._remove(old[len(data) :])
        self._place_reference()
        if len(data) != len(old) or any(
            not np.array_equal(e, layer.extent.data) for e, layer in zip(extents, out, strict=False)
        ):
            self.viewer.reset_view()  # the samples are laid out anew
        return out

    def _refill(self, layer: Points, points: Any, kw: dict[str, Any]) -> None:
        """Give ``layer`` the points, features, colours, place, name and metadata of ``kw``.

        The same cells in another order (a sample key change) coloured by the same column keep
        their colouring: napari recolours them from the new features (each colour setter
        redraws every point: about 0.3 s at 400,000 cells)."""
        column = kw.get("face_color")
        same = len(layer.data) == len(points) and plugin_meta(layer).get("color_by") == (
            column if isinstance(column, str) and column in kw["features"].columns else None
        )
        if len(layer.data) != len(points) and len(layer.data):
            layer.face_color = "#b0b0b0"  # no colour column while the rows change
        layer.data = points
        layer.features = kw["features"]
        if same:
            pass  # the features setter recoloured the points by the same column
        elif isinstance(column, str) and column in kw["features"].columns:
            md = kw["metadata"][META_KEY]
            recolor(layer, column, stored_palette(md["adata"].uns, column))
        else:
            layer.face_color = column if column is not None else "#b0b0b0"
        if not np.array_equal(layer.translate, kw.get("translate", layer.translate)):
            layer.translate = kw["translate"]
        if "size" in kw and not np.allclose(layer.size, kw["size"]):
            layer.size = kw["size"]
        layer.metadata = {**layer.metadata, **kw["metadata"]}
        layer.name = kw["name"]

    def _remove(self, layers: list[Any]) -> None:
        """Remove ``layers`` in one batch: napari then collects garbage once (most of a second
        with a data set in memory), not once per layer; nothing at all for none."""
        if not layers:
            return
        with self.viewer.layers.batched_update():
            for layer in layers:
                self.viewer.layers.remove(layer)

    def show_rasters(self, rasters: list[Any]) -> list[Any]:
        """Put a store's images and labels under every other layer (earlier ones replaced)."""
        stores = {plugin_meta(kw["metadata"]).get("store") for _, kw, _ in rasters} - {None}
        for layer in list(self.viewer.layers):
            meta = plugin_meta(layer)
            if meta.get("kind") in RASTER_KINDS and (
                meta.get("origin") == ORIGIN or meta.get("store") in stores
            ):
                self.viewer.layers.remove(layer)
        added: list[Any] = []
        for data, kwargs, kind in reversed(rasters):  # labels above images, both under cells
            kwargs["metadata"][META_KEY]["origin"] = ORIGIN
            add = self.viewer.add_image if kind == IMAGE_KIND else self.viewer.add_labels
            made = add(data, **kwargs)
            for layer in made if isinstance(made, list) else [made]:
                self.viewer.layers.move(self.viewer.layers.index(layer), 0)
                added.append(layer)
        return added

    def show_reference(self) -> Any:
        """Add the reference at its UMAP (computed in a worker when missing); returns the worker."""
        ref = self.model.reference
        if ref is None:
            return None
        if "X_umap" not in ref.obsm:
            self.status.setText("Computing the reference UMAP...")
        self.umap_worker = thread_worker(ensure_umap, start_thread=False)(ref)
        self.umap_worker.returned.connect(
            lambda _: self._reported(lambda: self._add_reference(ref))
        )
        self.umap_worker.errored.connect(
            lambda exc: self.status.setText(f"UMAP failed: {str(exc).splitlines()[0]}")
        )
        self.start_worker(self.umap_worker)
        return self.umap_worker

    def _add_reference(self, ref: ad.AnnData) -> None:
        if ref is not self.model.reference:
            return
        bounds = (
            bounds_of([drawn_points(layer) for layer in self.spatial_layers])
            if self.spatial_layers
            else None
        )
        data, kw, _ = reference_layer(ref, cluster_key=self.model.cluster_key, beside=bounds)
        layer = Points(data, **self._mark(kw, "reference"))
        for old in self._replaced(ref, "reference"):
            self.viewer.layers.remove(old)
        self.viewer.add_layer(layer)
        self.viewer.reset_view()  # the UMAP is placed beside the tissue: both in view
        if not self.status.text().startswith("Error"):
            self.status.setText("Loaded.")

    def _place_reference(self) -> None:
        layer = self.reference_points
        if layer is None or not self.spatial_layers:
            return
        scale, translate = beside_transform(
            layer.data, bounds_of([drawn_points(s) for s in self.spatial_layers])
        )
        layer.scale, layer.translate = scale, translate

    # ------------------------------------------------------------------ key changes
    def _cluster_changed(self, text: str) -> Any:
        key = self._key(text)

        def prepare() -> KeyChange:
            return KeyChange("cluster", key, summary=self._summary_of(cluster_key=key))

        return self._change_key(prepare, "cluster")

    def _fov_changed(self, text: str) -> Any:
        key, spatial = self._key(text), self.model.spatial

        def prepare() -> KeyChange | Failed:
            if key is not None and spatial is not None:
                try:  # a per-cell column would make thousands of FOVs
                    check_fov_key(spatial, key)
                except InputError as exc:
                    return Failed(first_line(exc))
            return KeyChange("fov", key, summary=self._summary_of(fov_key=key))

        return self._change_key(prepare, "fov")

    def _sample_changed(self, text: str) -> Any:
        key, spatial = self._key(text), self.model.spatial
        fov_key = self.model.fov_key
        color_by = self._key(self.color_combo.currentText())
        rebuild = bool(self.spatial_layers)

        def prepare() -> KeyChange | Failed:
            if key is not None and spatial is not None:
                try:  # at most MAX_SAMPLES
                    find_sample_key(spatial, fov_key, key)
                except InputError as exc:
                    return Failed(first_line(exc))
            layers = (
                self._spatial_layer_data(spatial, fov_key, key or "", color_by)
                if rebuild and spatial is not None
                else None
            )
            summary = self._summary_of(sample_key=key or "")
            return KeyChange("sample", key or "", summary=summary, layers=layers)

        return self._change_key(prepare, "sample")

    def _summary_of(self, **keys: Any) -> str:
        """The summary text with ``keys`` changed (worker thread: it counts FOVs and samples)."""
        m = self.model
        now = {
            "cluster_key": m.cluster_key,
            "fov_key": m.fov_key,
            "sample_key": m.sample_key,
            **keys,
        }
        try:
            return data_summary(m.reference, m.spatial, **now)
        except InputError as exc:
            return f"Error: {first_line(exc)}"

    def _change_key(self, prepare: Callable[[], KeyChange | Failed], kind: str) -> Any:
        """Run ``prepare`` (the check of the chosen column, the layer data and summary it needs)
        in a worker; its result is applied on the main thread with cheap setters only, and only
        when no later choice was made meanwhile (a later choice supersedes a running one).
        Returns the worker."""
        from napari.qt.threading import create_worker

        self._key_generation += 1
        self._last_key_kind = kind
        generation = self._key_generation
        for worker in self._key_workers:
            worker.quit()
        worker = create_worker(prepare, _start_thread=False)
        worker.returned.connect(lambda value: self._apply_key(generation, value))
        worker.errored.connect(
            lambda exc: (
                self.status.setText(f"Error: {first_line(exc)}")
                if generation == self._key_generation
                else None
            )
        )
        self._key_workers.append(worker)
        self.key_worker = worker
        self.start_worker(worker, lambda: self._key_workers.remove(worker), current=False)
        return worker

    def _apply_key(self, generation: int, value: KeyChange | Failed) -> None:
        """Apply a prepared key change (main thread), unless a later choice superseded it."""
        if generation != self._key_generation:
            return
        m = self.model
        if isinstance(value, Failed):
            self.status.setText(f"Error: {value.message}")
            show_error(value.message)
            combo, current = {
                "fov": (self.fov_combo, m.fov_key),
                "sample": (self.sample_combo, m.sample_key),
            }.get(self._last_key_kind, (self.cluster_combo, m.cluster_key))
            combo.blockSignals(True)
            combo.setCurrentText(current or NONE)
            combo.blockSignals(False)
            return
        if self.status.text().startswith("Error"):  # the refused choice's line goes
            self.status.setText("")
        if value.kind == "cluster":
            m.set_keys(cluster_key=value.key, fov_key=m.fov_key)
            layer = self.reference_points
            if layer is not None:
                recolor(layer, value.key or "")
        elif value.kind == "fov":
            m.set_keys(cluster_key=m.cluster_key, fov_key=value.key)
            for layer in self.spatial_layers:  # the FOV is a feature column: nothing rebuilt
                set_meta(layer, fov_key=value.key)
        else:
            m.set_keys(cluster_key=m.cluster_key, fov_key=m.fov_key, sample_key=value.key)
            if value.layers is not None:
                self._show_layer_data(value.layers)
        self.summary.setText(value.summary)

    def _color_changed(self, text: str) -> None:
        key = self._key(text)
        for layer in self.spatial_layers:
            recolor(layer, key or "")


@dataclass
class KeyChange:
    """A key choice prepared in a worker: the column (``None``/``""``: none), the summary text
    and, for a sample key, the spatial layer's data (a list of one, every sample in it)."""

    kind: str
    key: str | None
    summary: str
    layers: list[Any] | None = None
