"""The package imports lazily: its public names and submodules resolve on first use, torch only then."""

from __future__ import annotations

import subprocess
import sys

import napari_spatial_impute as nsi


def test_import_does_not_load_torch():
    code = "import sys, napari_spatial_impute as n; print(n.__version__, 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [nsi.__version__, "False"]


def test_public_names_and_submodules_resolve():
    for name in nsi.__all__:
        assert getattr(nsi, name) is not None, name
    assert nsi.map_cells_to_space.__module__ == "napari_spatial_impute.core.mapping"
    assert nsi.io.datasets.load_merfish_hypothalamus is nsi.load_merfish_hypothalamus
    assert set(nsi.__all__) <= set(dir(nsi))
    try:
        nsi.not_a_name  # noqa: B018
    except AttributeError as exc:
        assert "not_a_name" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")


def test_reader_and_writer_import_no_torch():
    """napari imports the reader/writer module to open or save a file; torch waits for a mapping."""
    code = (
        "import sys, napari_spatial_impute.plugin.reader, napari_spatial_impute.plugin.writer; "
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
