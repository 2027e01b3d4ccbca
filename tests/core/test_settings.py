"""Issue 11: the mapping settings are listed once, in MappingSettings; every front end covers them.

The command line, the stored params and (tests/plugin/test_settings_form.py) the Map widget's
form must each cover exactly MappingSettings' fields, so that a new field cannot be forgotten in
one of them; a stored params dict reads back to the same settings.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from napari_spatial_impute import InputError, map_cells_to_space
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.core.settings import (
    DENSITIES,
    ENGINES,
    MODES,
    RUN_RECORD_KEYS,
    TRANSFORMS,
    MappingSettings,
    setting_names,
    setting_specs,
)

FIELDS = set(setting_names())
OLD_RESULT = Path(__file__).parents[1] / "data" / "result_v0.1.0.h5ad"


def test_every_field_has_its_metadata():
    specs = setting_specs()
    assert [s.name for s in specs] == [f.name for f in dataclasses.fields(MappingSettings)]
    for s in specs:
        assert s.type in (bool, int, float, str), s.name
        assert s.help and s.label, s.name
        assert s.default is None or s.optional or isinstance(s.default, s.type), s.name
        if s.optional:
            assert s.unset, f"{s.name}: say what unset means"
    by_name = {s.name: s for s in specs}
    assert by_name["mode"].choices == MODES and by_name["engine"].choices == ENGINES
    assert by_name["density"].choices == DENSITIES
    assert by_name["transform"].choices == TRANSFORMS


def test_fields_are_the_settings_of_map_cells_to_space():
    """Every keyword of map_cells_to_space is a setting, with the same default, except the run's
    plumbing (data, callbacks, initial logits, the memory check)."""
    params = inspect.signature(map_cells_to_space).parameters
    plumbing = {"reference", "spatial", "callback", "cancel", "init", "check_memory"}
    assert set(params) - plumbing == FIELDS
    for s in setting_specs():
        assert params[s.name].default == s.default, s.name


def test_defaults_validate_and_bad_values_are_one_line():
    assert MappingSettings().validate() == MappingSettings()
    with pytest.raises(InputError, match="mode 'nope' is not known"):
        MappingSettings(mode="nope").validate()
    with pytest.raises(InputError, match="learning rate must be a positive number"):
        MappingSettings(learning_rate=float("nan")).validate()
    with pytest.raises(InputError, match="seed must be a whole number from 0 to"):
        MappingSettings(seed=1.5).validate()
    with pytest.raises(InputError, match="density 'weird' is not known"):
        MappingSettings(density="weird").validate()
    MappingSettings(density=np.ones(3)).validate()  # a vector is checked against the data later
    # the generic checks of the metadata: any field, no code of its own
    with pytest.raises(InputError, match="reverse_candidates must be a finite number"):
        MappingSettings(reverse_candidates="many").validate()
    with pytest.raises(InputError, match="epochs must be set"):
        MappingSettings(epochs=None).validate()


# ---------------------------------------------------------------------------- command line
def _subparser(name: str):
    from napari_spatial_impute.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


def _option_dests(parser) -> dict[str, list[str]]:
    return {a.dest: a.option_strings for a in parser._actions if a.option_strings}


def test_cli_options_cover_exactly_the_settings():
    from napari_spatial_impute.cli import _NOT_EVALUATED

    own = {"help", "reference", "spatial", "out", "impute", "projection", "fov_key", "sample_key"}
    own |= {"table", "coordinate_system"}  # a SpatialData store as --spatial
    dests = _option_dests(_subparser("map"))
    batches = {"batch_key", "workers", "memory_limit", "scheduler"}  # map --batch-key
    assert set(dests) - own - {"result_table", "overwrite"} - batches == FIELDS
    for s in setting_specs():
        assert "--" + s.name.replace("_", "-") in dests[s.name]
    dests = _option_dests(_subparser("evaluate"))
    assert set(dests) - own - {"folds", "fold_order"} == FIELDS - set(_NOT_EVALUATED)


def test_cli_defaults_choices_and_kwargs_come_from_the_settings():
    from napari_spatial_impute.cli import _mapping_kwargs

    parser = _subparser("map")
    actions = {a.dest: a for a in parser._actions}
    for s in setting_specs():
        assert actions[s.name].default == s.default, s.name
        if s.choices and not s.names_ok:
            assert tuple(actions[s.name].choices) == s.choices, s.name
    args = parser.parse_args(["-r", "r.h5ad", "-s", "s.h5ad", "-o", "o.h5ad"])
    assert _mapping_kwargs(args) == dataclasses.asdict(MappingSettings())
    args = parser.parse_args(
        ["-r", "r", "-s", "s", "-o", "o.h5ad", "--no-uncertainty", "--lambda-count", "2"]
        + ["--tol", "0.01", "--patience", "7", "--target-count", "9", "--mode", "constrained"]
    )
    kw = _mapping_kwargs(args)
    assert kw["uncertainty"] is False and kw["lambda_count"] == 2.0 and kw["tol"] == 0.01
    assert kw["patience"] == 7 and kw["target_count"] == 9 and kw["mode"] == "constrained"


def test_help_shows_every_option_of_before():
    import contextlib
    import io

    from napari_spatial_impute.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["map", "--help"])
    text = out.getvalue()
    before = (
        "--reference --spatial --cluster-key --mode --density --epochs --learning-rate "
        "--lambda-g1 --lambda-g2 --lambda-d --lambda-r --transform --seed --device --engine "
        "--candidates --tol --out --genes --n-markers --impute --projection --fov-key"
    ).split()
    assert all(f"{o} " in text or f"{o}," in text for o in before), text


# ---------------------------------------------------------------------------- stored params
@pytest.fixture(scope="module")
def stored(merfish_pair, tmp_path_factory):
    ref, spa = merfish_pair
    result = map_cells_to_space(
        ref,
        spa,
        method="tangram",
        cluster_key="cell_type",
        epochs=3,
        tol=0.5,
        patience=2,
        uncertainty=False,
    )
    path = tmp_path_factory.mktemp("stored") / "result.h5ad"
    result_to_anndata(result, genes=[]).write_h5ad(path)
    return result.params, dict(ad.read_h5ad(path).uns["spatial_impute"]["params"])


def test_stored_params_cover_exactly_the_settings(stored):
    params, _ = stored
    assert set(params) == FIELDS | set(RUN_RECORD_KEYS)
    assert params["tol"] == 0.5 and params["patience"] == 2 and params["uncertainty"] is False
    assert params["seed"] == 0 and params["lambda_d"] == 1.0  # what ran (the resolved weight)
    assert params["target_count"] == -1 and params["cluster_key"] == "cell_type"


def test_stored_params_round_trip(stored):
    params, from_file = stored
    for p in (params, from_file):
        settings = MappingSettings.from_params(p)
        assert settings.tol == 0.5 and settings.target_count is None and settings.seed == 0
        assert settings.to_params() == {k: params[k] for k in FIELDS}
        assert MappingSettings.from_params(settings.to_params()) == settings


def test_unset_values_round_trip():
    s = MappingSettings(seed=None, tol=None, lambda_d=None, target_count=None, cluster_key=None)
    p = s.to_params()
    assert (p["seed"], p["tol"], p["lambda_d"], p["target_count"], p["cluster_key"]) == (
        -1,
        -1.0,
        -1.0,
        -1,
        "",
    )
    assert MappingSettings.from_params(p) == s
    assert MappingSettings(genes=["Gad1", "Sst"]).to_params()["genes"] == "list"
    assert MappingSettings(density=np.ones(3)).to_params()["density"] == "custom"


@pytest.mark.parametrize(("neighbours", "method"), [(True, "auto"), (False, "tangram")])
def test_params_before_the_map_method_read_back_as_the_map_that_imputed(neighbours, method):
    """Results written before ``method`` existed: ``neighbours=False`` imputed with Tangram."""
    params = {**MappingSettings().to_params(), "neighbours": neighbours}
    del params["method"]
    assert MappingSettings.from_params(params).method == method


def test_ensemble_refuses_the_tangram_modes():
    with pytest.raises(InputError, match="clusters mode is a Tangram option"):
        MappingSettings(method="ensemble", mode="clusters").validate()
    with pytest.raises(InputError, match="map method 'fast' is not known"):
        MappingSettings(method="fast").validate()
    assert MappingSettings(mode="clusters").validate().method == "auto"


def test_stop_reasons_are_recorded_and_described(stored):
    from napari_spatial_impute.core.settings import STOP_REASONS, describe_stop

    params, from_file = stored  # 3 epochs with tol 0.5 over 2 epochs: all 3 ran
    assert params["stop_reason"] == from_file["stop_reason"] == "epochs"
    assert set(STOP_REASONS) == {"plateau", "epochs", "not trained"}
    assert describe_stop(from_file) == "all 3 epochs"
    plateau = {"stop_reason": "plateau", "epochs_done": 266, "epochs": 1000}
    plateau |= {"tol": np.float64(0.001), "patience": np.int64(50)}
    assert describe_stop(plateau) == (
        "stopped at a plateau after 266 of 1,000 epochs (score gain under 0.001 over 50 epochs)"
    )
    assert describe_stop({"stop_reason": "not trained", "epochs_done": 0}) == "nothing trained"
    # results written before stop_reason: the ensemble trained nothing; else the epochs done
    assert describe_stop({"method": "ensemble", "epochs_done": 0}) == "nothing trained"
    old = dict(ad.read_h5ad(OLD_RESULT).uns["spatial_impute"]["params"])
    assert "stop_reason" not in old and describe_stop(old) == "30 epochs"


def test_the_default_plateau_and_tol_0():
    s = MappingSettings()
    assert (s.tol, s.patience) == (1e-3, 50)
    assert MappingSettings(tol=0).validate().tol == 0  # 0 runs every epoch
    with pytest.raises(InputError, match="0 runs every epoch"):
        MappingSettings(tol=-1.0).validate()


def test_old_result_params_read_back():
    params = dict(ad.read_h5ad(OLD_RESULT).uns["spatial_impute"]["params"])
    settings = MappingSettings.from_params(params)
    assert settings.epochs == 30 and settings.cluster_key == "cell_type" and settings.tol is None
    assert settings.patience == 50 and settings.method == "auto"  # not stored then: defaults
    again = settings.to_params()
    assert {k: again[k] for k in params if k in FIELDS} == {
        k: (v.item() if hasattr(v, "item") else v) for k, v in params.items() if k in FIELDS
    }
