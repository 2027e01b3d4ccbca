"""A small live line plot of the training score (QPainter; cheap to redraw every epoch)."""

from __future__ import annotations

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
        self.values.append(float(value))
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt name)
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
        vals = [v for v in self.values if v == v]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.05, hi + 0.05
        p.drawText(QRectF(0, box.top() - 6, 32, 14), Qt.AlignmentFlag.AlignRight, f"{hi:.2f}")
        p.drawText(QRectF(0, box.bottom() - 8, 32, 14), Qt.AlignmentFlag.AlignRight, f"{lo:.2f}")
        p.drawText(QRectF(box.left(), box.bottom() + 1, box.width(), 14), Qt.AlignmentFlag.AlignLeft, "epoch 1")
        p.drawText(QRectF(box.left(), box.bottom() + 1, box.width(), 14), Qt.AlignmentFlag.AlignRight, f"{self.n_epochs}")
        if self.values:
            n = max(self.n_epochs - 1, 1)
            pts = QPolygonF(
                [
                    QPointF(box.left() + box.width() * i / n, box.bottom() - box.height() * (v - lo) / (hi - lo))
                    for i, v in enumerate(self.values)
                    if v == v
                ]
            )
            p.setPen(QPen(QColor("#3fa9f5"), 1.6))
            p.drawPolyline(pts)
            p.setPen(fg)
            p.drawText(
                box.adjusted(4, 2, -4, -2),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignBottom,
                f"score {self.values[-1]:.3f}",
            )
        p.end()
