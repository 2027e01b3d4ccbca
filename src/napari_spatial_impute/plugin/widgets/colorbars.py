"""One titled colour bar at a time: the selected layer's, with what it shows and in what units.

napari draws a colour bar per layer whose bar is visible, stacked in one corner, and without a
title. The viewer's :class:`ColorbarController` keeps one visible: that of the selected plugin
layer with a colour map (imputed, measured, probability, interval width); when another kind of
layer is selected the last one stays. Its title (:func:`~napari_spatial_impute.viz.colorbars.
colorbar_title`, e.g. "Gad1 · imputed (reference counts)") is shown with napari's text overlay
in the same corner; the plugin clears the overlay only when it wrote the text there.
"""

from __future__ import annotations

import weakref
from typing import Any

from napari_spatial_impute.plugin.model import get_model, per_viewer
from napari_spatial_impute.viz.colorbars import colorbar_title
from napari_spatial_impute.viz.layers import plugin_meta

#: Where the title is drawn (napari's colour bars sit in the top right corner too).
TITLE_POSITION = "top_right"


def _text_overlay(viewer: Any) -> Any:
    """napari's text overlay (``viewer.canvas.overlays["text"]`` from 0.9, else ``text_overlay``)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and "text" in overlays:
        return overlays["text"]
    return viewer.text_overlay


def _key(layer: Any) -> Any:
    """A layer's identity that survives napari's public-only proxies (a new proxy per access)."""
    return getattr(layer, "unique_id", None) or id(layer)


def _titled_meta(layer: Any) -> dict[str, Any] | None:
    """The metadata a layer's bar is titled from, ``None`` for a layer without napari's bar: a
    Points layer coloured through napari's colormap path, or a label image painted with values
    (Label images widget: its ``value_kind`` is what the values are)."""
    meta = plugin_meta(layer)
    if str(getattr(layer, "face_color_mode", "")) == "colormap":
        return meta
    if meta.get("value_kind") and getattr(layer, "colorbar", None) is not None:
        return {**meta, "kind": meta["value_kind"]}
    return None


def _bar(layer: Any) -> Any:
    """napari's colour bar overlay of a layer (Points: ``face_colorbar``; Image: ``colorbar``)."""
    bar = getattr(layer, "face_colorbar", None)
    return bar if bar is not None else getattr(layer, "colorbar", None)


class ColorbarController:
    """Keeps one plugin colour bar visible (the selected layer's) and titles it."""

    def __init__(self, viewer: Any) -> None:
        self._viewer = weakref.ref(viewer)
        self.shown: Any = None  # the key (:func:`_key`) of the layer whose bar is visible
        self.title = ""  # the text this controller put in the overlay
        viewer.layers.selection.events.active.connect(self.update)
        viewer.layers.events.inserted.connect(self.update)
        viewer.layers.events.removed.connect(self.update)

    def _params(self) -> dict[str, Any]:
        viewer = self._viewer()
        result = get_model(viewer).result if viewer is not None else None
        if result is None:
            return {}
        return dict(result.uns.get("spatial_impute", {}).get("params", {}))

    def update(self, *_: Any) -> None:
        """Show the selected titled layer's bar only (or keep the last one), with its title."""
        viewer = self._viewer()
        if viewer is None:
            return
        layers = list(viewer.layers)
        params = self._params()
        # napari's bar is drawn only for layers coloured through its colormap path; the Explore
        # widget's layers are coloured directly and titled in its own colour-scale panel
        titles = {
            _key(lay): colorbar_title(meta, params)
            for lay in layers
            if (meta := _titled_meta(lay)) is not None
        }
        titled = {k: v for k, v in titles.items() if v}
        active = viewer.layers.selection.active
        if active is not None and _key(active) in titled:
            self.shown = _key(active)
        elif self.shown not in titled:
            self.shown = None
        for layer in layers:
            bar = _bar(layer)
            if (
                bar is not None
                and _key(layer) in titled
                and bar.visible != (_key(layer) == self.shown)
            ):
                try:
                    bar.visible = _key(layer) == self.shown
                except Exception:
                    # vispy draws a grid cell's bar ticks at once and fails in a canvas never
                    # shown (no dpi yet); the bar follows at the next selection
                    pass
        overlay = _text_overlay(viewer)
        title = titled.get(self.shown, "") if self.shown is not None else ""
        if title:
            overlay.text = title
            overlay.position = TITLE_POSITION
            overlay.visible = True
            self.title = title
        elif self.title and overlay.text == self.title:  # ours: clear it, leave others' alone
            overlay.text = ""
            overlay.visible = False
            self.title = ""


#: The viewer's colour-bar controller (created and wired on first use, one per viewer).
get_colorbar_controller = per_viewer(ColorbarController)
