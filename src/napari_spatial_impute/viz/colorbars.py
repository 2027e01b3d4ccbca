"""Colour-bar titles: what a colour-mapped layer shows, whether imputed or measured, in what units.

napari's colour bar has no title; the plugin shows one (napari's text overlay) for the selected
layer, next to its colour bar (see :mod:`napari_spatial_impute.plugin.widgets.colorbars`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Layer kinds whose colour bar is titled (continuous colour maps).
TITLED_KINDS: tuple[str, ...] = ("imputed", "measured", "probability", "interval")


def value_units(params: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(imputed units, measured units)`` of a result's values, from its stored parameters.

    Imputed values are in the reference's units after the run's transform; measured values are
    the spatial values after the same transform.
    """
    params = params or {}
    transform = str(params.get("transform", "none"))
    if transform == "normalize_log1p":
        return "log1p of normalised reference counts", "log1p of normalised counts"
    ref = str(params.get("reference_values", ""))
    spa = str(params.get("spatial_values", ""))
    # transform "auto": each set of raw counts normalised and log1p'd, any other as given
    counts = "log1p of normalised counts" if transform == "auto" else "counts"
    imputed = f"reference {counts}" if ref == "raw counts" else "reference values as given"
    measured = counts if spa == "raw counts" else "values as given"
    return imputed, measured


def colorbar_title(meta: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> str:
    """The title of a plugin layer's colour bar (``""`` for layers without one).

    Parameters
    ----------
    meta
        The layer's plugin metadata (:func:`~napari_spatial_impute.viz.layers.plugin_meta`).
    params
        The result's stored parameters (``uns["spatial_impute"]["params"]``), for the units.
    """
    kind = meta.get("kind")
    if kind not in TITLED_KINDS:
        return ""
    value = str(meta.get("value", ""))
    imputed, measured = value_units(params)
    if kind == "imputed":
        return f"{value} · imputed ({imputed})"
    if kind == "measured":
        return f"{value} · measured ({measured})"
    if kind == "probability":
        return f"{value} · probability (0-1)"
    level = str(meta.get("level", "90"))
    return f"{value} · {level}% interval width ({imputed})"
