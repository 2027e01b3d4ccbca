"""Map widget: choose the mapping settings, run it in a worker with live progress, cancel it.

The settings form is generated: one magicgui widget per field of
:class:`~napari_spatial_impute.core.settings.MappingSettings` (its choices, bounds, help text and
label), the advanced ones folded under a button. A new setting shows up here without code.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import anndata as ad

# The worker builds the result's layer data with matplotlib's colour maps. Their first import
# runs a module body of huge literal lists that holds the GIL for about 0.2 s, which froze the
# window at the end of the first run; importing them here does it once, when napari loads the
# widget.
import matplotlib.cm  # noqa: F401
from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit, SpinBox, create_widget
from magicgui.widgets.bases import RangedWidget, ValueWidget
from napari.layers import Points
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent
from qtpy.QtGui import QCloseEvent
from qtpy.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
)

from napari_spatial_impute._errors import InputWarning, first_line
from napari_spatial_impute.core.batch_run import BatchProgress
from napari_spatial_impute.core.settings import (
    ENSEMBLE_ONLY,
    TANGRAM_ONLY,
    Setting,
    describe_stop,
    resolve_map_method,
    setting_specs,
)
from napari_spatial_impute.io.files import input_warnings
from napari_spatial_impute.plugin.widgets.base import PluginWidget
from napari_spatial_impute.plugin.widgets.score_plot import ScorePlot
from napari_spatial_impute.plugin.widgets.store_writer import StoreWriter
from napari_spatial_impute.plugin.workers import (
    WEAK_WARNING,
    Failed,
    guarded,
    iter_batch_mapping,
    iter_mapping,
    result_layers,
    warm_up,
)
from napari_spatial_impute.viz.layers import META_KEY, plugin_meta
from napari_spatial_impute.viz.plots import map_choice_of

#: ``metadata['spatial_impute']['origin']`` of the layers this widget adds (a new run replaces them).
ORIGIN = "map widget"
#: The batch key choice that maps all cells together.
NO_BATCHES = "(none: map all cells together)"


def batch_key_choices(obs: Any) -> list[str]:
    """Spatial obs columns that can name sections: text or categories with 2 to a few thousand
    values (:func:`~napari_spatial_impute.core.batches.plan_batches` checks the rest)."""
    from napari_spatial_impute.core.batches import MAX_BATCHES, MIN_BATCH_CELLS

    out = [NO_BATCHES]
    for name in obs.columns:
        col = obs[name]
        if col.dtype.kind in "fc":
            continue
        n = col.nunique(dropna=True)
        if 2 <= n <= min(MAX_BATCHES, max(2, len(col) // MIN_BATCH_CELLS)):
            out.append(str(name))
    return out


#: Seconds napari's quitting waits for a cancelled run to end (the cancel reaches it between
#: epochs, batches and written arrays).
QUIT_WAIT_S = 60.0


#: What the input checks were made for: the reference, the spatial data and the cluster key.
_CheckKey = tuple[Any, Any, Any]


def input_checks(
    reference: ad.AnnData | None, spatial: ad.AnnData | None, cluster_key: str | None
) -> tuple[_CheckKey, list[str], list[str]]:
    """The input's warnings (:func:`~napari_spatial_impute.io.files.input_warnings`) and the
    batch key choices, with what they were made for. Run in a worker: at 10^6 spatial cells they
    took 0.6 s and 0.3 s of the main thread at each data change, Map's click and Map's end."""
    found: list[str] = []
    if reference is not None and spatial is not None:
        try:
            found = input_warnings(reference, spatial, cluster_key)
        except Exception as exc:  # a check must never stop the widget
            found = [f"could not check the input: {first_line(exc)}"]
    choices = batch_key_choices(spatial.obs) if spatial is not None else [NO_BATCHES]
    return (reference, spatial, cluster_key), found, choices


def _same_input(a: _CheckKey, b: _CheckKey) -> bool:
    return a[0] is b[0] and a[1] is b[1] and a[2] == b[2]


class _Run:
    """The running mapping of one widget: what stopping it needs, without touching Qt objects.

    The widget keeps one instance for its whole life; its ``destroyed`` signal calls
    :meth:`abandon` (the widget's Qt half is gone by then, this object is not).
    """

    def __init__(self) -> None:
        self.worker: Any = None
        self.cancel = threading.Event()
        self.pbar: Any = None
        self.abandoned = False
        #: Epochs a Tangram map trains for (the bar's length once ``auto`` chose one).
        self.epochs = 0
        #: The texts of the warnings shown as notifications for this run (each once).
        self.shown: set[str] = set()
        #: Whether this widget shows the worker's warnings itself (napari does not relay them).
        self.relay = False
        #: Set when the run's worker thread is done (its output's temporary file removed).
        self.ended = threading.Event()
        self.ended.set()

    def close_pbar(self) -> None:
        pbar, self.pbar = self.pbar, None
        if pbar is not None:
            pbar.close()

    def stop(self) -> None:
        self.cancel.set()
        if self.worker is not None:
            self.worker.quit()

    def abandon(self, *_: Any) -> None:
        """The widget went away: stop the run and let its late signals do nothing."""
        if self.worker is None:
            return
        self.abandoned = True
        self.stop()
        self.close_pbar()
        show_info("mapping cancelled: the Map widget was closed.")

    def end_on_quit(self) -> None:
        """napari is quitting: stop the run and wait (a while) for its thread to end, so that a
        batched run removes its temporary file before the process exits."""
        self.abandon()
        self.ended.wait(QUIT_WAIT_S)


def prepared_layers(value: Any) -> Any:
    """In the worker thread: a mapping's ``(result, layer data, ...)`` with the layer data made
    into napari Points layers (the FOV and sample columns, colours and hover features are in the
    data already), so that the main thread only adds them: at 10^6 cells building a layer takes
    about a second. A failure to build them is kept in their place (the result is not lost: the
    widget says so and keeps the result). Anything else (``None``, :class:`Failed`) is returned
    as it is."""
    if not (isinstance(value, tuple) and len(value) >= 2 and isinstance(value[1], list)):
        return value
    adata, layer_data, *rest = value
    layers: list[Points] = []
    try:
        for data, kwargs, _ in layer_data:
            kwargs["metadata"][META_KEY]["origin"] = ORIGIN
            layers.append(Points(data, **kwargs))
    except Exception as exc:
        return (adata, exc, *rest)
    return (adata, layers, *rest)


def _napari_relays_warnings(worker: Any) -> bool:
    """Whether napari turns ``worker``'s warnings into notifications itself.

    napari's workers are meant to (``_NotifyingMixin``), but with napari 0.9.2 and superqt 0.9
    the mixin's ``__init__`` never runs and nothing listens to ``warned``: the warnings of a
    mapping were dropped. Asked of the signal's receivers before the widget connects its own.
    """
    try:
        return int(worker.signals.receivers(worker.signals.warned)) > 0
    except Exception:  # another binding's API: assume napari relays (no double notification)
        return True


def _devices() -> list[str]:
    import torch

    devices = ["cpu", "auto"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


#: Settings the form does not ask for: they come from the shared model (the Load data widget).
FROM_MODEL: tuple[str, ...] = ("cluster_key",)
#: Settings used in cells mode only (the clusters and constrained modes have no intervals).
CELLS_ONLY: tuple[str, ...] = ("uncertainty",)
#: The form's defaults where they differ from ``map_cells_to_space``'s (a quicker first run).
FORM_DEFAULTS: dict[str, Any] = {"epochs": 500}
#: The gene-list choice of the training genes, read from the ``gene_list`` line edit.
GENE_LIST = "list"
#: Largest value of an int spin box (Qt's limit) and default top of a float one.
_INT_MAX = 2**31 - 1
_FLOAT_MAX = 1e9
_DECIMALS = 4


def setting_widget(spec: Setting, value: Any = None) -> ValueWidget:
    """A magicgui widget for one mapping setting, from its metadata (choices, bounds, help).

    An optional number is unset at the spin box's minimum, one step below its bound, where it
    shows its ``unset`` text (see :func:`setting_value`); an optional whole number uses a float
    spin box without decimals for that (magicgui's int spin box cannot show such a text).
    """
    value = spec.default if value is None else value
    options: dict[str, Any] = {"tooltip": spec.help}
    annotation: Any = spec.type
    number = spec.type in (int, float)
    if spec.name == "device":
        options["choices"] = _devices()
    elif spec.choices:
        options["choices"] = tuple(spec.choices) + ((GENE_LIST,) if spec.names_ok else ())
    elif number:
        whole = spec.type is int
        step = spec.step or (1 if whole else 0.1)
        top = _INT_MAX if whole else _FLOAT_MAX
        low = spec.low if spec.low is not None else -top
        if spec.above:
            low = low + (1 if whole else 10**-_DECIMALS)
        high = min(spec.high, top) if spec.high is not None else top
        if spec.optional:
            annotation = float
            low = low - step
            value = low if value is None else value
        options.update(min=low, max=high, step=step)
    widget = create_widget(
        value=value, annotation=annotation, name=spec.name, label=spec.label, options=options
    )
    assert isinstance(widget, ValueWidget)  # a value and an annotation give a value widget
    if number and annotation is float:  # decimals first: Qt rounds the bounds to them
        assert isinstance(widget, RangedWidget)  # a float spin box
        widget.native.setDecimals(0 if spec.type is int else _DECIMALS)
        widget.min, widget.max, widget.value = options["min"], options["max"], value
    if number and spec.optional:
        widget.native.setSpecialValueText(spec.unset)
    return widget


def setting_value(spec: Setting, widget: ValueWidget) -> Any:
    """The setting a :func:`setting_widget` holds (``None`` for an unset optional number)."""
    value = widget.value
    if spec.type in (int, float) and spec.optional:
        assert isinstance(widget, RangedWidget)  # setting_widget gives it a float spin box
        if value <= widget.min:
            return None
        return spec.type(round(value) if spec.type is int else value)
    return value


def _offer(widget: Any, on: bool) -> None:
    """Show and enable a setting the chosen run uses; hide and disable one it does not (the
    docks of Load, Map and Explore fit a 1080p screen together)."""
    widget.enabled = on
    widget.visible = on


class MapWidget(PluginWidget):
    """Map reference cells onto the spatial cells of the shared model.

    The map is chosen on the user's held-out training genes (``auto``, the default in cells
    mode: the ensemble or a Tangram map, whichever imputes a held-out quarter of the training
    genes better), or forced: the ensemble (each spatial cell matched to its most similar
    reference cells, nothing trained) or a Tangram map trained for ``epochs``; only the settings
    of the maps that may run can be edited. The mapping runs in a napari thread worker; for a
    Tangram map the progress bar and the score plot follow its epochs, updated at most every
    75 ms (the last epoch always shown), for the ensemble and while ``auto`` chooses a busy bar
    runs. Cancel, or closing the widget, stops it before the next epoch and adds nothing. On
    success the result AnnData goes into the model and one most-likely-cluster layer (every
    sample in it) is added, replacing the layer of this widget's previous run; the status names
    the map made and the held-out scores it was chosen on, and a weak imputation is one napari
    warning. Input
    problems that do not stop a mapping (the reference given as spatial data, a per-cell number
    as cluster key) are shown above the settings and as napari warnings when the run starts.

    Attributes
    ----------
    form, advanced
        magicgui containers of the settings (``form.epochs.value = 20``), the advanced ones
        shown by ``advanced_button``.
    settings_widgets
        Every setting's widget by name (all but the cluster key, which comes from the model).
    gene_list
        The training genes when ``genes`` is ``"list"``.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it in).
    """

    def __init__(self, napari_viewer: Any) -> None:
        self._run = _Run()  # before the base class sets ``worker`` (a property over the run here)
        super().__init__(napari_viewer)
        warm_up()
        self._had_parent = False
        # deleting the widget (or its dock with it) stops the run: the closure keeps no Qt object
        self.destroyed.connect(self._run.abandon)
        app = QApplication.instance()
        if app is not None:  # quitting napari stops the run too, and waits for it to end
            app.aboutToQuit.connect(self._run.end_on_quit)

        self.data_label = QLabel()
        self.data_label.setWordWrap(True)
        self.warnings_label = QLabel()
        self.warnings_label.setWordWrap(True)
        self.warnings_label.setStyleSheet("color: #e0a030;")
        self.warnings_label.setVisible(False)
        # the settings form: one magicgui widget per MappingSettings field (advanced ones folded)
        self.settings_widgets: dict[str, ValueWidget] = {}
        basic: list[ValueWidget] = []
        advanced: list[ValueWidget] = []
        for spec in setting_specs():
            if spec.name in FROM_MODEL:
                continue
            widget = setting_widget(spec, FORM_DEFAULTS.get(spec.name))
            self.settings_widgets[spec.name] = widget
            (advanced if spec.advanced else basic).append(widget)
            if spec.name == "genes":
                self.gene_list = LineEdit(name="gene_list", label="Gene list")
                self.gene_list.native.setPlaceholderText("training genes, e.g. Gad1, Slc17a6, Sst")
                basic.append(self.gene_list)
        # added after construction, so that magicgui lines up the labels
        self.form: Container[ValueWidget] = Container(labels=True)
        self.form.extend(basic)
        self.form.margins = (0, 0, 0, 0)
        self.advanced: Container[ValueWidget] = Container(labels=True)
        self.advanced.extend(advanced)
        self.advanced.margins = (0, 0, 0, 0)
        self.advanced_button = QPushButton("Advanced settings")
        self.advanced_button.setCheckable(True)
        self.advanced_button.toggled.connect(self.advanced.native.setVisible)
        self.advanced.native.setVisible(False)
        self.settings_widgets["genes"].changed.connect(self._genes_changed)
        for name in ("method", "mode"):
            self.settings_widgets[name].changed.connect(self._method_changed)

        # batches: each section maps on its own, written to a file as the batches finish
        self.batch_key = ComboBox(name="batch_key", label="Batch key", choices=[NO_BATCHES])
        self.batch_key.tooltip = (
            "spatial obs column naming each cell's section/slice/sample: each maps against the "
            "reference on its own (an atlas); the result is written to a file batch by batch"
        )
        self.batch_workers = SpinBox(name="batch_workers", label="Workers", min=0, max=256, value=0)
        self.batch_workers.tooltip = (
            "0: batches one after another in napari's process; N: a local Dask cluster of N "
            "worker processes"
        )
        self.batch_out = FileEdit(
            name="batch_out",
            label="Write to",
            mode=FileDialogMode.OPTIONAL_FILE,
            filter="*.h5ad *.zarr",
        )
        self.batch_out.tooltip = (
            "the result file (.h5ad or a new AnnData .zarr), written batch by batch"
        )
        self.batches: Container[Any] = Container(labels=True)
        self.batches.extend([self.batch_key, self.batch_workers, self.batch_out])
        self.batches.margins = (0, 0, 0, 0)
        self.batches_button = QPushButton("Batches (sections of an atlas)")
        self.batches_button.setCheckable(True)
        self.batches_button.toggled.connect(self.batches.native.setVisible)
        self.batches.native.setVisible(False)

        self.run_button = QPushButton("Map")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m epochs")
        self.progress.setVisible(False)  # from the first run on (room for the other docks)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.plot = ScorePlot()
        # a side task: Map stays free once the write finished (issue 24: it was held as the run)
        self.store_writer = StoreWriter(partial(self.start_worker, current=False))
        self.model.result_changed.connect(self.store_writer.set_result)
        self.store_writer.set_result(self.model.result)

        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.data_label)
        layout.addWidget(self.warnings_label)
        layout.addWidget(self.form.native)
        layout.addWidget(self.advanced_button)
        layout.addWidget(self.advanced.native)
        layout.addWidget(self.batches_button)
        layout.addWidget(self.batches.native)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.plot)
        layout.addWidget(self.status)
        layout.addWidget(self.store_writer)
        layout.addWidget(self.store_writer.status)
        layout.addStretch(1)
        # no taller than its contents: free height goes to the docks below (1080p screens)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

        #: The input checks of the data last checked (see :func:`input_checks`).
        self._checks: tuple[_CheckKey, list[str], list[str]] | None = None
        self._checks_worker: Any = None
        self._genes_changed(self.settings_widgets["genes"].value)
        self._method_changed()
        for sig in (self.model.reference_changed, self.model.spatial_changed):
            sig.connect(self._data_changed)
        self.model.keys_changed.connect(self._data_changed)
        self._data_changed()

    # ------------------------------------------------------------------ settings
    def _genes_changed(self, text: str) -> None:
        _offer(self.settings_widgets["n_markers"], text == "markers")
        _offer(self.gene_list, text == GENE_LIST)

    def map_method(self) -> str:
        """The map the form's settings make: ``"ensemble"``, ``"tangram"`` or ``"auto"`` (chosen
        from the data when the run has measured both, so either may be made)."""
        return resolve_map_method(
            str(self.settings_widgets["method"].value), str(self.settings_widgets["mode"].value)
        )

    def _method_changed(self, *_: Any) -> None:
        """Only the settings of the maps that may run are shown (and can be edited): ``auto``
        may train a Tangram map, so it keeps both maps' settings."""
        unused = self._unused()
        for name in (*TANGRAM_ONLY, *ENSEMBLE_ONLY, *CELLS_ONLY):
            _offer(self.settings_widgets[name], name not in unused)
        self.plot.setVisible(self.map_method() == "tangram")  # auto: once a Tangram map trains

    def _unused(self) -> tuple[str, ...]:
        """The settings the run of the form's settings does not use (hidden; sent at their
        defaults): ``auto`` may make either map, so it uses both maps' settings."""
        method = self.map_method()
        unused = {"ensemble": TANGRAM_ONLY, "tangram": ENSEMBLE_ONLY}.get(method, ())
        if str(self.settings_widgets["mode"].value) != "cells":
            unused = (*unused, *CELLS_ONLY)
        return unused

    def _data_changed(self, *_: Any) -> None:
        ref, spa, m = self.model.reference, self.model.spatial, self.model
        if ref is None or spa is None:
            missing = " and ".join(
                n for n, a in (("a reference", ref), ("spatial data", spa)) if a is None
            )
            self.data_label.setText(f"Load {missing} first (Load data widget or File > Open).")
        else:
            self.data_label.setText(
                f"{ref.n_obs:,} reference -> {spa.n_obs:,} spatial cells; "
                f"clusters: {m.cluster_key or '(none)'}"
            )
        self.run_button.setEnabled(ref is not None and spa is not None and self.worker is None)
        key = (ref, spa, m.cluster_key)
        if self._checks is not None and _same_input(self._checks[0], key):
            return  # shown already (e.g. at the end of a run: nothing to check again)
        if ref is None or spa is None:  # nothing to compute
            self._checks_done(input_checks(ref, spa, m.cluster_key))
            return
        worker = thread_worker(input_checks, start_thread=False)(ref, spa, m.cluster_key)
        worker.returned.connect(self._checks_done)  # bound: dropped if the widget is closed
        self._checks_worker = worker
        worker.start()

    def _checks_done(self, value: tuple[_CheckKey, list[str], list[str]]) -> None:
        """Show the input checks made for the current data (a late answer for older data is
        dropped)."""
        key, found, choices = value
        m = self.model
        if not _same_input(key, (m.reference, m.spatial, m.cluster_key)):
            return
        self._checks = value
        if list(self.batch_key.choices) != choices:
            keep = self.batch_key.value if self.batch_key.value in choices else NO_BATCHES
            self.batch_key.choices = choices
            self.batch_key.value = keep
        self.warnings_label.setText("\n".join(f"Warning: {w}" for w in found))
        self.warnings_label.setVisible(bool(found))

    @property
    def checked(self) -> bool:
        """Whether the warnings and batch keys shown are those of the current data."""
        m = self.model
        return self._checks is not None and _same_input(
            self._checks[0], (m.reference, m.spatial, m.cluster_key)
        )

    def parameters(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~napari_spatial_impute.map_cells_to_space` chosen here.

        One per :class:`~napari_spatial_impute.core.settings.MappingSettings` field: the form's
        values (the defaults of the greyed-out settings the chosen map does not use), and the
        cluster key of the shared model.
        """
        out: dict[str, Any] = {}
        unused = self._unused()
        for spec in setting_specs():
            if spec.name in FROM_MODEL:
                out[spec.name] = getattr(self.model, spec.name)
            elif spec.name in unused:  # greyed out: the map that runs does not use it
                out[spec.name] = spec.default
            else:
                out[spec.name] = setting_value(spec, self.settings_widgets[spec.name])
        if out["genes"] == GENE_LIST:
            out["genes"] = [g for g in self.gene_list.value.replace(",", " ").split() if g]
        return out

    # ------------------------------------------------------------------ running
    @property
    def _cancel(self) -> threading.Event:
        return self._run.cancel

    def _update_warnings(self) -> list[str]:
        """The input warnings of the current data, shown; checked here only when the worker's
        check has not answered yet (a click right after loading)."""
        if not self.checked:
            m = self.model
            self._checks_done(input_checks(m.reference, m.spatial, m.cluster_key))
        assert self._checks is not None  # set by _checks_done for the current data
        return list(self._checks[1])

    def run(self) -> Any:
        """Start the mapping in a worker thread and return the worker (``None`` if not started).

        Problems of the input that do not stop the mapping (see
        :func:`~napari_spatial_impute.io.files.input_warnings`) are shown as napari warnings first.
        """
        ref, spa = self.model.reference, self.model.spatial
        if ref is None or spa is None:
            return None
        if self.worker is not None:
            self.status.setText("A mapping is running: cancel it first, or wait for it to end.")
            return None
        if self.busy:  # a side task (the store write) holds the data the mapping would replace
            self.status.setText("Writing the results to the store: Map again once it is written.")
            return None
        shown = self._update_warnings()
        for line in shown:
            show_warning(line)
        self._run.shown = set(shown)  # the worker's warnings of these texts are not shown again
        params = self.parameters()
        batch_key = str(self.batch_key.value)
        out = str(self.batch_out.value) if str(self.batch_out.value) not in ("", ".") else ""
        if batch_key != NO_BATCHES and not out:
            msg = "choose the file to write the batches to (Write to: .h5ad or .zarr)."
            self.status.setText(f"Error: {msg}")
            show_error(msg)
            return None
        state = self._run
        state.cancel = threading.Event()
        state.abandoned = False
        state.ended = threading.Event()
        cancel = state.cancel
        n = params["epochs"]
        state.epochs = max(n, 1)
        if batch_key != NO_BATCHES:
            return self._run_batches(ref, spa, batch_key, out, params)
        finish = partial(
            result_layers, fov_key=self.model.fov_key, sample_key=self.model.sample_key
        )
        # shown here already (the input checks) or from the result (a weak imputation, once per
        # run): the worker does not relay them as napari warnings a second time
        silence = [re.escape(line) + r"\Z" for line in shown] + [WEAK_WARNING]
        ended = state.ended

        def mapping() -> Any:
            try:
                value = yield from guarded(
                    iter_mapping(ref, spa, cancel, finish, silence=silence, **params)
                )
                return prepared_layers(value)
            finally:
                ended.set()

        worker = self._new_worker(mapping, cancel)
        self.progress.setVisible(True)
        method = self.map_method()
        if method == "ensemble":
            # nothing is trained: a busy bar while each spatial cell is matched
            state.pbar = progress(desc="Ensemble map: matching cells")
            self._busy_bar(
                "Matching each spatial cell to its most similar reference cells "
                "(ensemble map, nothing to train)..."
            )
        elif method == "auto":
            # the core reports no steps while it chooses: a busy bar until a chosen Tangram map
            # trains (its epochs then fill the bar) or the result arrives
            state.pbar = progress(desc="Choosing the map on held-out genes")
            self._busy_bar(
                "Choosing the map on held-out genes: the ensemble and a Tangram map are built "
                "without a quarter of the training genes, the one that imputes them better is "
                "made..."
            )
        else:
            state.pbar = progress(total=state.epochs, desc="Mapping cells to space")
            self._epoch_bar()
            self.status.setText("Preparing genes and data...")
        self.plot.reset(n)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        return self.start_worker(worker)  # the base keeps it (``worker``, ``busy``)

    def _busy_bar(self, text: str) -> None:
        self.progress.setRange(0, 0)
        self.progress.setFormat("%p%")
        self.status.setText(text)

    def _epoch_bar(self) -> None:
        self.progress.setRange(0, self._run.epochs)
        self.progress.setFormat("%v / %m epochs")
        self.progress.setValue(0)

    def _new_worker(self, mapping: Callable[[], Any], cancel: threading.Event) -> Any:
        """A thread worker over ``mapping`` wired to this widget (not started)."""
        # no ``progress=`` here: napari would advance its bar once per yield; the bars here are
        # advanced by the epochs (or batches) of each throttled list instead
        worker = thread_worker(mapping, start_thread=False)()
        worker.yielded.connect(self._on_epoch)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        # the run's InputWarnings, one notification each (napari's relay, or this widget's)
        self._run.relay = not _napari_relays_warnings(worker)
        worker.warned.connect(self._on_warned)
        # napari's status-bar cancel quits the worker: stop the engine too
        worker.aborted.connect(cancel.set)
        return worker

    def _run_batches(
        self, ref: ad.AnnData, spa: ad.AnnData, batch_key: str, out: str, params: dict[str, Any]
    ) -> Any:
        """Map each batch on its own into ``out``; the result is read back and shown."""
        cancel, ended = self._run.cancel, self._run.ended
        workers = int(self.batch_workers.value)
        fov_key, sample_key = self.model.fov_key, self.model.sample_key

        def mapping() -> Any:
            try:
                value = yield from guarded(
                    iter_batch_mapping(
                        ref,
                        spa,
                        batch_key,
                        out,
                        cancel,
                        workers=workers,
                        fov_key=fov_key,
                        sample_key=sample_key,
                        **params,
                    )
                )
                return prepared_layers(value)
            finally:
                ended.set()

        worker = self._new_worker(mapping, cancel)
        n_batches = max(1, spa.obs[batch_key].nunique())
        self._run.pbar = progress(total=n_batches, desc="Mapping batches")
        self.progress.setVisible(True)
        self.progress.setRange(0, n_batches)
        self.progress.setFormat("%v / %m batches")
        self.progress.setValue(0)
        from napari_spatial_impute.core.cluster import local_workers

        n_workers, lowered = local_workers(workers, n_batches) if workers else (0, "")
        self.status.setText(
            f"Mapping {n_batches} batches of {batch_key!r} one by one"
            + (f" on {n_workers} Dask workers" if n_workers else "")
            + (f" ({lowered.split(' (')[0].replace('--workers', 'workers')})" if lowered else "")
            + f", writing {out}..."
        )
        self.plot.reset(0)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        return self.start_worker(worker)

    @property
    def worker(self) -> Any:
        """The running worker, or ``None``."""
        return self._run.worker

    @worker.setter
    def worker(self, value: Any) -> None:
        self._run.worker = value

    def cancel(self) -> None:
        """Stop the running mapping before its next epoch; nothing is added."""
        if self.worker is None:
            return
        self._run.stop()
        self.cancel_button.setEnabled(False)
        self.status.setText("Cancelling...")

    # ------------------------------------------------------------------ closing
    def closeEvent(self, event: QCloseEvent | None) -> None:
        """Closing the widget cancels its run."""
        self._run.abandon()
        super().closeEvent(event)

    def event(self, event: QEvent | None) -> bool:
        """Taking the widget out of its dock (napari's close button does) cancels its run."""
        if event is not None and event.type() == QEvent.Type.ParentChange:
            parent = self.parent()
            if parent is None and self._had_parent:
                self._run.abandon()
            self._had_parent = parent is not None
        return super().event(event)

    # ------------------------------------------------------------------ worker signals
    def _on_epoch(self, batch: list[Any]) -> None:
        if self._run.abandoned or not batch:
            return
        last = batch[-1]
        if isinstance(last, BatchProgress):  # a batched run: one item per finished batch
            self.progress.setValue(last.done)
            self.status.setText(last.describe())
            pbar = self._run.pbar
            if pbar is not None and last.done > pbar.n:
                pbar.update(last.done - pbar.n)
            return
        if self.progress.maximum() == 0:  # auto chose a Tangram map: its epochs fill the bar
            self._run.close_pbar()
            self._run.pbar = progress(total=self._run.epochs, desc="Tangram map (chosen)")
            self._epoch_bar()
            self.plot.setVisible(True)
        self.plot.extend([info.score for info in batch])
        self.progress.setValue(last.epoch)
        self.status.setText(f"epoch {last.epoch} / {last.n_epochs} · score {last.score:.3f}")
        pbar = self._run.pbar
        if pbar is not None and last.epoch > pbar.n:
            pbar.update(last.epoch - pbar.n)  # napari's bar processes events: do it last

    def _on_warned(self, args: tuple) -> None:
        """A warning of the worker: an :class:`InputWarning` is shown once per run."""
        if self._run.abandoned or len(args) < 2:
            return
        message, category = args[0], args[1]
        if not (isinstance(category, type) and issubclass(category, InputWarning)):
            return
        text = str(message.args[0] if isinstance(message, Warning) and message.args else message)
        if self._run.relay and text not in self._run.shown:
            show_warning(text)
        self._run.shown.add(text)  # shown by napari or here

    def _on_returned(self, value: Any) -> None:
        if self._run.abandoned or self._cancel.is_set():
            return
        if value is None:
            msg = "the mapping stopped without a result."
            self.status.setText(f"Error: {msg}")
            show_error(msg)
            return
        if isinstance(value, Failed):
            self.status.setText(f"Error: {value.message}")
            show_error(value.message)
            return
        batch_run = value[2] if isinstance(value, tuple) and len(value) == 3 else None
        if batch_run is not None:
            value = value[:2]
        adata = value[0] if isinstance(value, tuple) and value else None
        try:
            replaced = self._add_result(*value)
        except Exception as exc:  # never drop a finished result without a word
            first = first_line(exc)
            kept = ""
            if isinstance(adata, ad.AnnData) and self.model.result is not adata:
                try:
                    self.model.set_result(adata)
                    kept = " The result is kept (Explore, Diagnostics, File > Save)."
                except Exception:
                    kept = ""
            msg = f"the mapping finished but its layers could not be added: {first}.{kept}"
            self.status.setText(f"Error: {msg}")
            show_error(msg)
            return
        assert adata is not None  # _add_result(*value) took it as value[0]
        if self.progress.maximum() == 0:  # an ensemble map's busy bar: done
            self.progress.setRange(0, 1)
            self.progress.setValue(1)
        info = adata.uns["spatial_impute"]
        score = info["training_score"]
        ensemble = info["params"].get("method") == "ensemble"
        which = (
            "ensemble map, training-gene score"
            if ensemble
            else f"Tangram map, {describe_stop(info['params'])}, training score"
        )
        if not ensemble and batch_run is None:
            self.progress.setValue(self.progress.maximum())  # a plateau stop ends the bar too
        if batch_run is not None:
            table = batch_run.batches
            skipped = batch_run.skipped
            which = (
                f"{int((table['status'] == 'mapped').sum())} of {len(table)} batches mapped"
                + (f", skipped: {', '.join(map(str, skipped.index))}" if len(skipped) else "")
                + f"; written to {batch_run.path}; mean training-gene score"
            )
            for name, row in skipped.iterrows():
                show_warning(f"batch {str(name)!r} skipped: {row['reason']}")
        choice = map_choice_of(adata)
        lines = [
            f"Done: {adata.n_vars:,} genes imputed at {adata.n_obs:,} cells ({which} {score:.3f})."
            + (
                f" Replaced {replaced} layer{'s' if replaced != 1 else ''} of the previous run."
                if replaced
                else ""
            )
        ]
        if choice is not None and choice.summary:
            lines.append(choice.summary[:1].upper() + choice.summary[1:] + ".")
        if choice is not None and choice.warning:
            lines.append(f"Warning: {choice.warning}")
        self.status.setText("\n".join(lines))
        show_info(f"mapping finished ({which} {score:.3f})")
        if choice is not None and choice.warning and choice.warning not in self._run.shown:
            self._run.shown.add(choice.warning)
            show_warning(choice.warning)

    def _add_result(self, adata: ad.AnnData, layers: list[Points] | BaseException) -> int:
        """Store the result and add its layers (built in the worker, :func:`prepared_layers`),
        replacing this widget's layers of earlier runs; the only work here is napari's adding."""
        if isinstance(layers, BaseException):  # building them failed in the worker
            raise layers
        old = [
            layer
            for layer in self.viewer.layers
            if (meta := plugin_meta(layer)) is not None
            and meta.get("role") == "result"
            and meta.get("origin") == ORIGIN
        ]
        for layer in old:
            self.viewer.layers.remove(layer)
        self.model.set_result(adata)
        for layer in layers:
            self.viewer.add_layer(layer)
        return len(old)

    def _on_error(self, exc: BaseException) -> None:
        if self._run.abandoned:
            return
        self.status.setText(f"Error: {first_line(exc)}")

    def _on_finished(self) -> None:
        state = self._run
        state.close_pbar()
        state.ended.set()  # also a worker quit before its generator ran
        cancelled = state.cancel.is_set() or bool(getattr(state.worker, "abort_requested", False))
        state.worker = None
        if state.abandoned:
            return
        if self.progress.maximum() == 0:  # an ensemble map's busy bar, ended without a result
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
        if cancelled:
            self.status.setText("Cancelled; nothing was added.")
        self.cancel_button.setEnabled(False)
        self._data_changed()
