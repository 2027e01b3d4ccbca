"""Category colours: one palette for the viewer's layers and for tables written to files.

matplotlib's ``tab10`` / ``tab20`` (as hex, so that ``io`` and ``core`` need no matplotlib), and
for more categories evenly spaced hues. scanpy's ``uns['<key>_colors']`` wins when given.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

TAB10 = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
TAB20 = (
    "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728",
    "#ff9896", "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2",
    "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d", "#17becf", "#9edae5",
)  # fmt: skip


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(255 * min(max(v, 0.0), 1.0)):02x}" for v in rgb[:3])


def _to_hex(color: Any) -> str:
    """``'#rrggbb'`` of a hex string or an RGB(A) sequence in 0..1."""
    if isinstance(color, str):
        return color.lower()[:7] if color.startswith("#") else color
    return _hex([float(v) for v in color])


def base_palette(n: int) -> list[str]:
    """``n`` distinct colours: tab10 up to 10, tab20 up to 20, then evenly spaced hues."""
    if n <= 10:
        return list(TAB10[: max(n, 0)])
    if n <= 20:
        return list(TAB20[:n])
    return [
        _hex(colorsys.hsv_to_rgb(i / n, 0.75 if i % 2 else 0.95, 0.95 if i % 2 else 0.7))
        for i in range(n)
    ]


def category_colors(
    categories: Iterable[Any], palette: Sequence[Any] | None = None
) -> dict[Any, str]:
    """A ``{category: '#rrggbb'}`` map (scanpy's ``uns['<key>_colors']`` when given, else tab10/20)."""
    cats = list(categories)
    if palette is not None and len(palette) >= len(cats):
        return {c: _to_hex(palette[i]) for i, c in enumerate(cats)}
    base = base_palette(len(cats))
    return {c: base[i] for i, c in enumerate(cats)}


def stored_palette(uns: Mapping[str, Any], column: str | None) -> list[str] | None:
    """scanpy's colours of ``column`` in ``uns`` (``<column>_colors``; for a predicted column
    ``<key>_predicted`` also the clusters' own ``<key>_colors``), or ``None``."""
    if column is None:
        return None
    for key in (f"{column}_colors", f"{column.removesuffix('_predicted')}_colors"):
        pal = uns.get(key)
        if pal is not None:
            return [str(c) for c in np.asarray(pal).ravel()]
    return None
