"""Issue 11: the Map widget's settings form is built from MappingSettings, one widget per field."""

from __future__ import annotations

import pytest

from napari_spatial_impute.core.settings import MappingSettings, setting_names, setting_specs
from napari_spatial_impute.plugin.sync import viewer_model
from napari_spatial_impute.plugin.widgets.map_widget import FORM_DEFAULTS, FROM_MODEL, MapWidget


@pytest.fixture
def widget(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    w = MapWidget(viewer)
    qtbot.addWidget(w)
    return viewer, w


def test_form_covers_exactly_the_settings(widget):
    _, w = widget
    assert set(w.settings_widgets) | set(FROM_MODEL) == set(setting_names())
    assert not set(w.settings_widgets) & set(FROM_MODEL)
    form_names = {x.name for x in w.form} | {x.name for x in w.advanced}
    assert form_names == set(w.settings_widgets) | {"gene_list"}
    assert set(w.parameters()) == set(setting_names())


def test_form_defaults_and_parameters_validate(widget):
    _, w = widget
    w.settings_widgets["method"].value = "tangram"  # every setting is then used and sent
    p = w.parameters()
    for s in setting_specs():
        if s.name not in FROM_MODEL:
            expected = "tangram" if s.name == "method" else FORM_DEFAULTS.get(s.name, s.default)
            assert p[s.name] == expected, s.name
        widget_ = w.settings_widgets.get(s.name)
        if widget_ is not None:
            assert widget_.tooltip == s.help and widget_.label == s.label
            if s.choices:
                assert set(s.choices) <= set(widget_.choices)
    assert p["epochs"] == 500 and p["tol"] == 1e-3 and p["lambda_d"] is None
    MappingSettings(**p).validate()


def test_optional_numbers_set_and_unset(widget):
    _, w = widget
    w.settings_widgets["method"].value = "tangram"  # tol is a Tangram setting
    tol, seed = w.settings_widgets["tol"], w.settings_widgets["seed"]
    tol.value = 0.002
    seed.value = 7
    p = w.parameters()
    assert p["tol"] == pytest.approx(0.002)
    assert p["seed"] == 7 and isinstance(p["seed"], int)
    tol.value = tol.min
    seed.value = seed.min
    p = w.parameters()
    assert p["tol"] is None and p["seed"] is None
    assert tol.native.specialValueText() == "run every epoch"
    w.settings_widgets["method"].value = "auto"  # the ensemble map: its uncertainty switch counts
    w.settings_widgets["uncertainty"].value = False
    assert w.parameters()["uncertainty"] is False


def test_cluster_key_comes_from_the_model(widget):
    viewer, w = widget
    model = viewer_model(viewer)
    assert w.parameters()["cluster_key"] is None
    model.set_keys(cluster_key="cell_type")
    assert w.parameters()["cluster_key"] == "cell_type"


def test_advanced_settings_are_folded(widget):
    _, w = widget
    assert not w.advanced.native.isVisibleTo(w)
    w.advanced_button.setChecked(True)
    assert w.advanced.native.isVisibleTo(w)
    advanced = {s.name for s in setting_specs() if s.advanced}
    assert {x.name for x in w.advanced} == advanced
