"""A cross-validation that yields its progress, for a napari ``thread_worker`` (no Qt here)."""

from __future__ import annotations

import inspect
import queue
import threading
from collections.abc import Generator
from typing import Any

import anndata as ad
import pandas as pd

from .._errors import MappingCancelled
from ..evaluate import cross_validate
from ..mapping import map_cells_to_space

_DONE = object()
#: Mapping parameters of a result that a cross-validation reuses.
_REUSED = tuple(
    p
    for p in inspect.signature(map_cells_to_space).parameters
    if p not in ("reference", "spatial", "genes", "callback", "cancel", "init")
)


def cv_kwargs(params: dict[str, Any], epochs: int | None = None) -> dict[str, Any]:
    """The mapping settings of a result's ``uns["spatial_impute"]["params"]`` for a CV run."""
    out = {
        k: v for k, v in params.items() if k in _REUSED and k not in ("n_markers", "target_count")
    }
    for k, v in list(out.items()):
        if hasattr(v, "item"):
            out[k] = v.item()
    for k in ("candidates", "reverse_candidates"):  # stored as 0 when the engine had none
        if k in out and not out[k]:
            out.pop(k)
    if epochs is not None:
        out["epochs"] = int(epochs)
    return out


def iter_cross_validation(
    reference: ad.AnnData,
    spatial: ad.AnnData,
    cancel: threading.Event,
    folds: int = 5,
    **kwargs: Any,
) -> Generator[tuple[int, int], None, pd.DataFrame | None]:
    """Run :func:`~napari_spatial_impute.cross_validate`, yielding ``(done_folds, folds)``.

    Returns the table, or ``None`` when ``cancel`` was set.
    """
    events: queue.Queue[Any] = queue.Queue()
    box: dict[str, Any] = {}

    def progress(fold: int, n: int, info: Any) -> None:
        if info is None:
            events.put((fold, n))

    def run() -> None:
        try:
            box["table"] = cross_validate(
                reference, spatial, folds=folds, progress=progress, cancel=cancel, **kwargs
            )
        except BaseException as exc:
            box["error"] = exc
        finally:
            events.put(_DONE)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while True:
        item = events.get()
        if item is _DONE:
            break
        yield item
    thread.join()
    if "error" in box:
        if isinstance(box["error"], MappingCancelled):
            return None
        raise box["error"]
    return box["table"]
