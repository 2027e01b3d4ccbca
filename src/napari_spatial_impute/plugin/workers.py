"""Generators that GUI workers run: a mapping that yields its epochs in batches (no Qt here).

:func:`iter_mapping` drives :func:`~napari_spatial_impute.map_cells_to_space` in a helper thread
and turns its per-epoch callback into ``yield``, so that a ``napari.qt.threading.thread_worker``
can report progress and be cancelled between epochs.

Epochs can be much faster than the GUI can draw them (a clusters-mode mapping runs thousands of
epochs a second). Every ``yield`` becomes a queued signal and a progress-bar update on the main
thread, and napari's progress bar processes events inside its update, so one yield per epoch
nests those updates until Python's recursion limit, freezes the window and loses the result.
:func:`throttled` therefore groups the epochs: a list is yielded at most every
:data:`UPDATE_INTERVAL` seconds, and the last epoch always comes in a final list.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import anndata as ad

from napari_spatial_impute._errors import InputError, InputWarning, MappingCancelled, first_line
from napari_spatial_impute.core.mapping import EpochInfo, map_cells_to_space
from napari_spatial_impute.core.result import MappingResult

T = TypeVar("T")

_DONE = object()
#: Seconds between two progress updates sent to the GUI (the last epoch is always sent).
UPDATE_INTERVAL = 0.075
#: How the weak-imputation warning of ``method="auto"`` begins
#: (:meth:`~napari_spatial_impute.core.maps.choose.MapChoice.weak`; a ``warnings`` filter
#: pattern). The result records it, and the Map widget shows it from there, once per run.
WEAK_WARNING = r"imputation is weak"


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
        return Failed(first_line(exc))


def throttled(
    events: queue.Queue[Any], done: object, interval: float | None = None
) -> Generator[list[Any], None, None]:
    """The items put on ``events`` until ``done``, as lists yielded at most every ``interval`` s.

    The first item is yielded at once; later ones are gathered until ``interval`` seconds have
    passed since the previous yield (a slow producer's items still come one by one, as soon as
    the interval allows). Whatever is left when ``done`` arrives is yielded last, so the final
    item is never dropped. ``interval=0`` yields every item on its own; ``None`` is
    :data:`UPDATE_INTERVAL` when called (tests set it).
    """
    if interval is None:
        interval = UPDATE_INTERVAL
    batch: list[Any] = []
    last = -float("inf")
    while True:
        timeout = None if not batch else max(0.0, last + interval - time.monotonic())
        try:
            item = events.get(timeout=timeout)
        except queue.Empty:  # the interval passed with items waiting: send them
            item = None
        else:
            if item is done:
                break
            batch.append(item)
        if batch and time.monotonic() - last >= interval:
            yield batch
            batch = []
            last = time.monotonic()
    if batch:
        yield batch


def run_in_thread(
    task: Callable[[Callable[[Any], None]], T],
    cancel: threading.Event,
    *,
    interval: float | None = None,
    name: str = "spatial-impute-task",
    pick: Callable[[list[Any]], Any] = lambda batch: batch,
) -> Generator[Any, None, T | None]:
    """Run ``task(report)`` in a helper thread and turn its ``report(item)`` calls into yields.

    The one adapter between the engine's callbacks and a napari ``thread_worker`` generator: the
    reported items come out in batches at most every ``interval`` seconds (:func:`throttled`),
    each batch passed through ``pick`` (``lambda batch: batch[-1]`` keeps only the latest).
    Closing the generator early (the worker was quit, the widget closed) sets ``cancel`` and
    waits for the task to stop.

    Returns
    -------
    The task's value, or ``None`` when it was cancelled (:class:`MappingCancelled` or ``cancel``
    set). Any other error of the task is raised in the worker thread.
    """
    events: queue.Queue[Any] = queue.Queue()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = task(events.put)
        except BaseException as exc:  # re-raised in the worker thread below
            box["error"] = exc
        finally:
            events.put(_DONE)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        for batch in throttled(events, _DONE, interval):
            yield pick(batch)
    finally:
        if thread.is_alive():  # the generator was closed early: stop the task too
            cancel.set()
        thread.join()
    if isinstance(box.get("error"), MappingCancelled) or cancel.is_set():
        return None
    if "error" in box:
        raise box["error"]
    return box["value"]


def iter_mapping(
    reference: ad.AnnData,
    spatial: ad.AnnData,
    cancel: threading.Event,
    finish: Callable[[MappingResult], Any] | None = None,
    interval: float | None = None,
    silence: Collection[str] = (),
    **kwargs: Any,
) -> Generator[list[EpochInfo], None, Any]:
    """Run a mapping, yielding lists of :class:`~napari_spatial_impute.EpochInfo` as it trains.

    Parameters
    ----------
    reference, spatial
        The data sets (see :func:`~napari_spatial_impute.map_cells_to_space`).
    cancel
        Set it to stop the mapping before its next epoch; the generator then returns ``None``.
    finish
        Called with the :class:`~napari_spatial_impute.MappingResult` in the same (worker) thread;
        its value is returned. Use it for slow follow-up work such as assembling the result AnnData.
    interval
        Seconds between two yields (see :func:`throttled`); every epoch is in exactly one list,
        in order, and the last epoch is always yielded. ``0`` yields each epoch in its own list.
    silence
        ``warnings`` message patterns (regular expressions matched at the start) of
        :class:`~napari_spatial_impute.InputWarning` s the mapping does not raise: the caller
        shows them itself. A napari worker relays every other warning as a notification.
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

    def task(report: Callable[[Any], None]) -> MappingResult:
        # a warnings context of the helper thread: it opens after and closes before the
        # worker's own (superqt's relay), so the filters go with it
        with warnings.catch_warnings():
            for pattern in silence:
                warnings.filterwarnings("ignore", message=pattern, category=InputWarning)
            return map_cells_to_space(reference, spatial, callback=report, cancel=cancel, **kwargs)

    value = yield from run_in_thread(task, cancel, interval=interval, name="spatial-impute-mapping")
    if value is None:
        return None
    return finish(value) if finish is not None else value


def warm_up() -> None:
    """Load, on the main thread when a widget opens, what a worker would otherwise load mid-run.

    A module import or a library's first-use set-up holds the GIL, so done in the worker it
    freezes the window: numba (the exact engine's fused kernel, loaded from numba's cache or
    compiled) stalled a clusters-mode mapping by about 0.3 s, and pint's unit definitions, which
    napari loads for the first layer of a session, stalled the adding of the result's layer by
    0.56 s (both measured here). Cheap after the first call.
    """
    import pint

    from napari_spatial_impute.core.engine import kernels

    kernels.available()
    pint.get_application_registry().pixel  # noqa: B018 (the attribute access loads it)


def result_layers(
    result: MappingResult, fov_key: str | None = None, sample_key: str | None = None
) -> tuple[ad.AnnData, list[Any]]:
    """The result AnnData of a mapping and its most-likely-cluster layer data (a list of one:
    every sample in one layer).

    Runs in the worker thread; the layers are added on the main thread. The imputed genes and
    their intervals are computed from the map when shown or written
    (:func:`~napari_spatial_impute.core.lazy_result.lazy_result`): the viewer holds the map,
    not every gene at every cell. The FOV and sample columns are recorded in
    ``uns['spatial_impute']`` (``fov_key``, ``sample_key``).
    """
    from napari_spatial_impute.core.lazy_result import lazy_result

    return layers_of_result(lazy_result(result), fov_key, sample_key)


def layers_of_result(
    adata: ad.AnnData, fov_key: str | None = None, sample_key: str | None = None
) -> tuple[ad.AnnData, list[Any]]:
    """A result AnnData and its layer data (see :func:`result_layers`), in the worker thread."""
    from napari_spatial_impute.viz.layers import result_cluster_key, spatial_layers
    from napari_spatial_impute.viz.sections import fov_boxes, resolve_fov_key, resolve_sample_key

    if fov_key:
        adata.uns["spatial_impute"]["fov_key"] = fov_key
    samples = resolve_sample_key(adata, sample_key, fov_key)
    adata.uns["spatial_impute"]["sample_key"] = samples or ""
    # what the Explore widget needs on the main thread, cached per result (1-2 s at 10^6 cells)
    fov_boxes(adata, resolve_fov_key(adata, fov_key), samples)
    return adata, spatial_layers(
        adata,
        fov_key=fov_key,
        sample_key=samples or "",
        detect_fov=False,
        role="result",
        name=None if result_cluster_key(adata) else "mapped cells",
    )


def iter_batch_mapping(
    reference: ad.AnnData,
    spatial: ad.AnnData,
    batch_key: str,
    out: str,
    cancel: threading.Event,
    *,
    workers: int = 0,
    fov_key: str | None = None,
    sample_key: str | None = None,
    interval: float | None = None,
    **kwargs: Any,
) -> Generator[list[Any], None, Any]:
    """Map batch by batch into ``out`` (:func:`~napari_spatial_impute.core.batch_run.map_batches`),
    yielding lists of :class:`~napari_spatial_impute.core.batch_run.BatchProgress`; then read the
    written result back and build its layer data (both in the worker thread).

    Returns
    -------
    ``(result AnnData, layer data, BatchRun)``, or ``None`` when cancelled.
    """
    from napari_spatial_impute.core.batch_run import map_batches

    run = yield from run_in_thread(
        lambda report: map_batches(
            reference,
            spatial,
            batch_key,
            out,
            workers=workers,
            progress=report,
            cancel=cancel,
            extra_uns={"fov_key": fov_key or ""},
            **kwargs,
        ),
        cancel,
        interval=interval,
        name="spatial-impute-batches",
    )
    if run is None:
        return None
    import numpy as np

    from napari_spatial_impute.io.lazy import read_result_lazy
    from napari_spatial_impute.io.schema import level_name
    from napari_spatial_impute.viz.intervals import mean_widths

    adata = read_result_lazy(run.path)  # genes left in the file: read one when shown
    uncertainty = adata.uns.get("spatial_impute", {}).get("uncertainty")
    if uncertainty is not None and "mean_width" not in uncertainty:  # once, here in the worker
        levels = mean_widths(adata)
        uncertainty["mean_width"] = np.asarray(
            [levels.get(level_name(float(lv)), np.nan) for lv in uncertainty.get("levels", [])]
        )
        uncertainty["mean_width_shape"] = np.asarray(adata.shape, dtype=np.int64)
    adata, layers = layers_of_result(adata, fov_key, sample_key)
    return adata, layers, run
