"""A matplotlib figure that fits its dock: panels in as many columns as fit, and a Save button."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtGui import QResizeEvent, QShowEvent
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_spatial_impute.plugin.widgets.layer_ops import notify_error
from napari_spatial_impute.viz.plots import FIGURE_FORMATS, save_figure

#: Smallest width and the height of one panel, in pixels: narrower docks stack the panels.
PANEL_WIDTH = 320
PANEL_HEIGHT = 260
#: Narrower than this (a widget not laid out yet), nothing is drawn.
MIN_DRAW_WIDTH = 120
#: A resize re-lays the panels out once it has settled for this long (ms).
RELAYOUT_DELAY_MS = 150

_FILTERS = {f: f"{f.upper()} (*.{f})" for f in FIGURE_FORMATS}


def ask_and_save(parent: QWidget, fig: Figure, name: str) -> Path | None:
    """Ask for a file (PNG, SVG or PDF) and save ``fig`` there; errors become one notification."""
    path, chosen = QFileDialog.getSaveFileName(
        parent, "Save figure", f"{name}.png", ";;".join(_FILTERS.values())
    )
    if not path:
        return None
    if not Path(path).suffix:  # the format from the chosen filter
        fmt = next((f for f, text in _FILTERS.items() if text == chosen), "png")
        path = f"{path}.{fmt}"
    try:
        return save_figure(fig, path)
    except Exception as exc:
        notify_error(exc)
        return None


class FigurePanel(QWidget):
    """A figure of ``n_panels`` panels drawn by ``draw(fig, ncols)``, laid out for the width.

    As many panels as fit side by side (at least :data:`PANEL_WIDTH` px each) go in one row; the
    rows scroll vertically, each ``panel_height`` px high (:data:`PANEL_HEIGHT` by default), so labels stay readable in a
    narrow dock. Resizing re-lays the panels out once it settles. *Save figure...* writes the
    figure as PNG, SVG or PDF (:meth:`save`).

    Parameters
    ----------
    draw
        Draws the figure for a number of columns (called again when that number changes).
    n_panels
        How many panels ``draw`` makes (a number, or a callable asked at each layout).
    name
        Default file name of a saved figure.
    panel_height
        Height of one row of panels, in pixels.
    """

    def __init__(
        self,
        draw: Callable[[Figure, int], Any],
        n_panels: int | Callable[[], int],
        name: str,
        panel_height: int = PANEL_HEIGHT,
    ) -> None:
        super().__init__()
        self._draw = draw
        self.panel_height = panel_height
        self._n_panels = n_panels
        self.name = name
        self.ncols = 0
        self._pending = False
        self.fig = Figure(dpi=90, layout="tight")
        self.canvas = FigureCanvasQTAgg(self.fig)
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setWidget(self.canvas)
        self.save_button = QPushButton("Save figure...")
        self.save_button.setToolTip("save this figure as PNG, SVG or PDF")
        self.save_button.clicked.connect(lambda: ask_and_save(self, self.fig, self.name))
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(RELAYOUT_DELAY_MS)
        self._timer.timeout.connect(self.relayout)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroll_area, 1)
        layout.addLayout(buttons)

    def n_panels(self) -> int:
        """How many panels the figure has now."""
        n = self._n_panels() if callable(self._n_panels) else self._n_panels
        return max(1, int(n))

    def columns_for(self, width: int) -> int:
        """Panels per row for a width in pixels."""
        return max(1, min(self.n_panels(), width // PANEL_WIDTH))

    def relayout(self, force: bool = False) -> None:
        """Fit the panels to the current width; redraw when the columns change (or ``force``)."""
        viewport = self.scroll_area.viewport()
        width = viewport.width() if viewport is not None else self.width()
        ncols = self.columns_for(width)
        rows = -(-self.n_panels() // ncols)
        self.canvas.setMinimumHeight(rows * self.panel_height)
        if width < MIN_DRAW_WIDTH:  # not laid out yet: draw once the dock has a size
            self.ncols = 0
            self.fig.clear()
            return
        if force or ncols != self.ncols:
            if self._out_of_sight():  # drawn when shown: never for a tab nobody looks at
                self._pending = True
                return
            self._pending = False
            self.ncols = ncols
            self.fig.clear()
            with warnings.catch_warnings():  # a panel too small for its labels says so once
                warnings.filterwarnings("ignore", message="Tight layout not applied")
                self._draw(self.fig, ncols)
            # a drawing's own ``fig.tight_layout()`` switches the layout engine off: back on, so
            # the panels are laid out again at every size the canvas takes
            self.fig.set_layout_engine("tight")
        self.canvas.draw_idle()

    def _out_of_sight(self) -> bool:
        """Whether the panel is hidden in a shown window (another tab, a folded part): a new
        result then draws only the figure in sight, not every panel of every tab on the main
        thread (issue 24: 1.4 s for the cell-type validation at 75,000 cells, unseen)."""
        window = self.window()
        return (
            window is not None
            and window is not self
            and window.isVisible()
            and not self.isVisible()
        )

    @property
    def pending(self) -> bool:
        """Whether a drawing waits for the panel to be shown."""
        return self._pending

    def showEvent(self, event: QShowEvent | None) -> None:
        """Draw what was left while the panel was out of sight."""
        super().showEvent(event)
        if self._pending:
            self.relayout(force=True)

    def redraw(self) -> None:
        """Draw the figure again (new data), laid out for the current width."""
        self.relayout(force=True)

    def save(self, path: str | Path) -> Path:
        """Save the figure as PNG, SVG or PDF (by the suffix of ``path``)."""
        return save_figure(self.fig, path)

    def resizeEvent(self, event: QResizeEvent | None) -> None:
        """Re-lay the panels out once a resize settles."""
        super().resizeEvent(event)
        self._timer.start()
