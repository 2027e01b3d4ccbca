"""What the plugin's dock widgets share: the viewer, its shared model, their worker threads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QSize
from qtpy.QtWidgets import QDockWidget, QWidget

from napari_spatial_impute.plugin.model import SpatialImputeModel
from napari_spatial_impute.plugin.sync import connect_model
from napari_spatial_impute.plugin.widgets.colorbars import get_colorbar_controller

#: The widest a dock of ours asks to be at first (px): a figure canvas asks for its figure's
#: size and a table for all its columns, which pushed a 1920 px window's docks to 900 px and
#: more (issue 24). Wider parts scroll, wrap or lay out for the width they get.
DOCK_WIDTH = 420


class PluginWidget(QWidget):
    """Base of the plugin's dock widgets.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it in, usually as a public-API proxy).

    Attributes
    ----------
    viewer
        The viewer given.
    model
        The viewer's shared :class:`SpatialImputeModel`, connected to its layers: plugin layers
        opened before or after the widget (reader, sample data) tell the model their data sets.
    worker
        The worker most recently started through :meth:`start_worker` (``None`` before).
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model: SpatialImputeModel = connect_model(napari_viewer)
        # one titled colour bar at a time (the selected layer's), whichever widget adds layers
        get_colorbar_controller(napari_viewer)
        self.worker: Any = None
        self._running: list[Any] = []

    def sizeHint(self) -> QSize:
        """Qt's preferred size, at most :data:`DOCK_WIDTH` wide (never below the minimum)."""
        hint = super().sizeHint()
        width = min(hint.width(), max(DOCK_WIDTH, self.minimumSizeHint().width()))
        return QSize(width, hint.height())

    # ------------------------------------------------------------------ workers
    def start_worker(
        self,
        worker: Any,
        on_finished: Callable[[], None] | None = None,
        *,
        current: bool = True,
    ) -> Any:
        """Start ``worker`` (created with ``start_thread=False``), keeping it until it finishes.

        ``on_finished`` runs on the main thread when it finishes, whether it returned, failed or
        was quit. ``current=False`` starts a side task (e.g. writing a result somewhere): it
        counts in :attr:`busy` but does not become :attr:`worker`, the widget's own task that
        its buttons wait for. Returns the worker (tests wait on its ``finished`` signal).
        """
        if current:
            self.worker = worker
        self._running.append(worker)

        def _done() -> None:
            if worker in self._running:
                self._running.remove(worker)
            if on_finished is not None:
                on_finished()

        worker.finished.connect(_done)
        worker.start()
        return worker

    @property
    def busy(self) -> bool:
        """Whether a worker started here is still running."""
        return bool(self._running)

    def quit_workers(self) -> None:
        """Ask every running worker started here to stop (generators stop at their next yield)."""
        for worker in list(self._running):
            worker.quit()

    def release_height(self) -> None:
        """After parts were folded away: let the dock shrink to what is left.

        Qt raises a dock's minimum height while its content grows and never lowers it again, so a
        folded widget would keep the space (and the window its minimum height) of the unfolded one.
        """
        self.updateGeometry()
        dock = self.parentWidget()
        if isinstance(dock, QDockWidget):
            dock.setMinimumHeight(0)

    # ------------------------------------------------------------------ viewer events
    def on_layers_changed(self, callback: Callable[..., Any]) -> None:
        """Call ``callback`` (with the napari event) whenever a layer is added or removed."""
        self.viewer.layers.events.inserted.connect(callback)
        self.viewer.layers.events.removed.connect(callback)
