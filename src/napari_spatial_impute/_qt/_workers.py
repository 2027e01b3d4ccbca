"""Generators that GUI workers run: a mapping that yields each epoch (no Qt here).

:func:`iter_mapping` drives :func:`~napari_spatial_impute.map_cells_to_space` in a helper thread
and turns its per-epoch callback into ``yield``, so that a ``napari.qt.threading.thread_worker``
can report progress and be cancelled between epochs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import anndata as ad

from .._errors import InputError, MappingCancelled
from ..mapping import EpochInfo, MappingResult, map_cells_to_space

_DONE = object()


@dataclass(frozen=True)
class Failed:
    """What a guarded worker returns instead of raising an :class:`InputError` (its message)."""

    message: str


def guarded(gen: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    """Run ``gen``, returning :class:`Failed` for an :class:`InputError` instead of raising.

    Bad input is the user's to fix, not a crash: the widget shows the one-line message as a
    napari notification, and napari's traceback dialog is kept for real bugs.
    """
    try:
        return (yield from gen)
    except InputError as exc:
        return Failed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def iter_mapping(
    reference: ad.AnnData,
    spatial: ad.AnnData,
    cancel: threading.Event,
    finish: Callable[[MappingResult], Any] | None = None,
    **kwargs: Any,
) -> Generator[EpochInfo, None, Any]:
    """Run a mapping, yielding an :class:`~napari_spatial_impute.EpochInfo` after each epoch.

    Parameters
    ----------
    reference, spatial
        The data sets (see :func:`~napari_spatial_impute.map_cells_to_space`).
    cancel
        Set it to stop the mapping before its next epoch; the generator then returns ``None``.
    finish
        Called with the :class:`~napari_spatial_impute.MappingResult` in the same (worker) thread;
        its value is returned. Use it for slow follow-up work such as assembling the result AnnData.
    **kwargs
        Passed to :func:`~napari_spatial_impute.map_cells_to_space` (``mode``, ``epochs``, ...).

    Returns
    -------
    ``finish(result)`` (or the result itself), or ``None`` when cancelled.

    Raises
    ------
    InputError
        The engine's one-line error for bad input or settings.
    """
    events: queue.Queue[Any] = queue.Queue()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = map_cells_to_space(reference, spatial, callback=events.put, cancel=cancel, **kwargs)
        except BaseException as exc:  # re-raised in the worker thread below
            box["error"] = exc
        finally:
            events.put(_DONE)

    thread = threading.Thread(target=run, name="spatial-impute-mapping", daemon=True)
    thread.start()
    try:
        while (item := events.get()) is not _DONE:
            yield item
    finally:
        if thread.is_alive():  # the generator was closed early: stop the engine too
            cancel.set()
            thread.join()
    if isinstance(box.get("error"), MappingCancelled) or cancel.is_set():
        return None
    if "error" in box:
        raise box["error"]
    result = box["result"]
    return finish(result) if finish is not None else result


def result_layers(result: MappingResult, fov_key: str | None = None) -> tuple[ad.AnnData, list[Any]]:
    """The result AnnData of a mapping and its most-likely-cluster layer data, one per FOV.

    Runs in the worker thread (projection of all genes can take a while); the layers are added on
    the main thread. The FOV column is recorded in ``uns['spatial_impute']['fov_key']``.
    """
    from ..layers import result_cluster_key, spatial_layers

    adata = result.to_anndata()
    if fov_key:
        adata.uns["spatial_impute"]["fov_key"] = fov_key
    return adata, spatial_layers(adata, fov_key=fov_key, detect_fov=False, role="result", name=None if result_cluster_key(adata) else "mapped cells")
