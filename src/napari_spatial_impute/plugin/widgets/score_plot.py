"""A small live line plot of the training score (QPainter; at most two points per pixel column)."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPaintEvent, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget


class ScorePlot(QWidget):
    """Score per epoch as a line, with the epoch range and the last value written on it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values: list[float] = []
        self.n_epochs = 0
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("training score (mean cosine similarity of the training genes) per epoch")

    def reset(self, n_epochs: int) -> None:
        """Clear the plot for a run of ``n_epochs`` epochs."""
        self.values = []
        self.n_epochs = max(int(n_epochs), 1)
        self.update()

    def add(self, value: float) -> None:
        """Append one epoch's score."""
        self.extend([value])

    def extend(self, values: list[float]) -> None:
        """Append the scores of several epochs and schedule one repaint."""
        self.values.extend(float(v) for v in values)
        self.update()

    def _line(self, box: QRectF, lo: float, hi: float) -> QPolygonF:
        """The polyline of the finite scores, thinned to about two points per pixel column."""
        v = np.asarray(self.values, dtype=np.float64)
        x = np.arange(len(v), dtype=np.float64)
        keep = np.isfinite(v)
        v, x = v[keep], x[keep]
        n = max(self.n_epochs - 1, len(self.values) - 1, 1)
        n_px = max(int(box.width()), 1)
        if len(v) > 2 * n_px:  # min and max of each pixel column keep the line's envelope
            col = (x * n_px / n).astype(np.int64)
            starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
            lo_i = np.minimum.reduceat(v, starts)
            hi_i = np.maximum.reduceat(v, starts)
            x = np.repeat(x[starts], 2)
            v = np.column_stack([lo_i, hi_i]).ravel()
        px = box.left() + box.width() * x / n
        py = box.bottom() - box.height() * (v - lo) / (hi - lo)
        return QPolygonF([QPointF(a, b) for a, b in zip(px.tolist(), py.tolist(), strict=True)])

    def paintEvent(self, event: QPaintEvent | None) -> None:
        """Draw the frame, the line and the labels."""
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().color(self.foregroundRole())
        box = QRectF(self.rect()).adjusted(34, 6, -6, -16)
        p.setPen(QPen(QColor(fg.red(), fg.green(), fg.blue(), 90), 1))
        p.drawRect(box)
        font = p.font()
        font.setPointSizeF(max(font.pointSizeF() * 0.8, 6))
        p.setFont(font)
        p.setPen(fg)
        vals = np.asarray(self.values, dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.05, hi + 0.05
        p.drawText(QRectF(0, box.top() - 6, 32, 14), Qt.AlignmentFlag.AlignRight, f"{hi:.2f}")
        p.drawText(QRectF(0, box.bottom() - 8, 32, 14), Qt.AlignmentFlag.AlignRight, f"{lo:.2f}")
        p.drawText(
            QRectF(box.left(), box.bottom() + 1, box.width(), 14),
            Qt.AlignmentFlag.AlignLeft,
            "epoch 1",
        )
        p.drawText(
            QRectF(box.left(), box.bottom() + 1, box.width(), 14),
            Qt.AlignmentFlag.AlignRight,
            f"{self.n_epochs}",
        )
        if self.values:
            p.setPen(QPen(QColor("#3fa9f5"), 1.6))
            p.drawPolyline(self._line(box, lo, hi))
            p.setPen(fg)
            p.drawText(
                box.adjusted(4, 2, -4, -2),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignBottom,
                f"score {self.values[-1]:.3f}",
            )
        p.end()
