"""Data shipped with the package and the shared data folder used by tests and benchmarks."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import anndata as ad

from napari_spatial_impute.io.files import read_h5ad

BUNDLED = "merfish_hypothalamus"


def bundled_paths() -> tuple[Path, Path]:
    """Paths of the bundled MERFISH hypothalamus pair: ``(reference, spatial)``.

    Moffitt et al. 2018, Science 362:eaau5324 (see ``data/merfish_hypothalamus/CITATION.md``).
    """
    root = Path(str(files("napari_spatial_impute") / "data" / BUNDLED))
    return root / "reference.h5ad", root / "spatial.h5ad"


def load_merfish_hypothalamus() -> tuple[ad.AnnData, ad.AnnData]:
    """The bundled MERFISH hypothalamus pair: 1,308 reference cells (14 ``cell_type``) and
    750 MERFISH cells, 134 genes, raw counts.

    Returns
    -------
    ``(reference, spatial)``.
    """
    ref, spa = bundled_paths()
    return read_h5ad(ref, "reference"), read_h5ad(spa, "spatial")


def shared_data_dir() -> Path | None:
    """The shared real-data folder (``$NSI_DATA_DIR`` or ``../shared/data`` beside the checkout)."""
    env = os.environ.get("NSI_DATA_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidates.append(parent.parent / "shared" / "data")
        candidates.append(parent / "shared" / "data")
    candidates.append(Path.cwd().parent / "shared" / "data")
    for c in candidates:
        if (c / "README.md").exists():
            return c
    return None
