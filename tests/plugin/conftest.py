"""Shared fixtures of the plugin tests: a viewer whose model holds the bundled data, and widgets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from _explore_data import load_into


@pytest.fixture
def loaded_viewer(make_napari_viewer_proxy) -> tuple[Any, Any]:
    """``(viewer, model)``: the reference, spatial data (FOVs "1"/"2"), keys and a result loaded."""
    viewer = make_napari_viewer_proxy()
    return viewer, load_into(viewer)


@pytest.fixture
def make_widget(loaded_viewer, qtbot) -> Callable[[type], tuple[Any, Any, Any]]:
    """``make_widget(WidgetClass)`` -> ``(viewer, model, widget)`` on :func:`loaded_viewer`."""

    def make(cls: type) -> tuple[Any, Any, Any]:
        viewer, model = loaded_viewer
        w = cls(viewer)
        qtbot.addWidget(w)
        return viewer, model, w

    return make
