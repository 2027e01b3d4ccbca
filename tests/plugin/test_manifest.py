"""The npe2 manifest validates and every contribution resolves to real code."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")


def test_npe2_validate_cli():
    exe = shutil.which("npe2") or str(Path(sys.executable).with_name("npe2"))
    if not Path(exe).exists():
        pytest.skip("npe2 command not installed")
    proc = subprocess.run(
        [exe, "validate", "napari-spatial-impute"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout


def test_contributions_resolve():
    pm = npe2.PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("napari-spatial-impute")
    contrib = mf.contributions
    assert any("*.h5ad" in r.filename_patterns for r in contrib.readers)
    assert any(
        ".h5ad" in w.filename_extensions and "points+" in w.layer_types for w in contrib.writers
    )
    assert {s.key for s in contrib.sample_data} >= {"merfish_pair", "merfish_mapping"}
    names = {w.display_name for w in contrib.widgets}
    assert {"Load data", "Map cells to space"} <= names
    for cmd in contrib.commands:
        module, _, attr = cmd.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), cmd.id


def test_reader_is_found_for_h5ad(tmp_path, merfish_pair):
    import numpy as np

    _, spa = merfish_pair
    path = tmp_path / "sp.h5ad"
    spa.write_h5ad(path)
    readers = list(npe2.PluginManager.instance().iter_compatible_readers([str(path)]))
    assert any(r.plugin_name == "napari-spatial-impute" for r in readers)
    layers = npe2.read([str(path)], plugin_name="napari-spatial-impute", stack=False)
    assert len(layers) == 1 and np.asarray(layers[0][0]).shape == (750, 2)
