"""A cross-validation that yields its progress, for a napari ``thread_worker`` (no Qt here).

Its epochs can be far faster than the GUI can show them, so the progress is throttled like the
mapping's (:func:`~napari_spatial_impute.plugin.workers.throttled`): at most one update every
:data:`~napari_spatial_impute.plugin.workers.UPDATE_INTERVAL` seconds, the last one always sent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

import anndata as ad
import pandas as pd

from napari_spatial_impute.core.evaluate import cross_validate
from napari_spatial_impute.core.settings import (
    TANGRAM_ONLY,
    MappingSettings,
    resolve_map_method,
    setting_specs,
)
from napari_spatial_impute.plugin.workers import run_in_thread


class CVProgress(NamedTuple):
    """Where a cross-validation is: ``fold`` folds done (0-based running fold), ``epoch`` of it."""

    fold: int
    folds: int
    epoch: int
    epochs: int

    @property
    def done(self) -> int:
        """Epochs done over all folds (folds done when nothing is trained: the ensemble map)."""
        return self.fold * max(self.epochs, 1) + self.epoch

    @property
    def total(self) -> int:
        """Epochs of the whole cross-validation (its folds for the ensemble map)."""
        return max(self.folds * max(self.epochs, 1), 1)


#: Mapping settings (:class:`~napari_spatial_impute.core.settings.MappingSettings`' fields) of a
#: result that a cross-validation reuses: all but the training genes, which each fold chooses,
#: and the kept-cell count, which depends on the data.
_REUSED = tuple(
    s.name for s in setting_specs() if s.name not in ("genes", "n_markers", "target_count")
)


def cv_kwargs(params: dict[str, Any], epochs: int | None = None) -> dict[str, Any]:
    """The mapping settings of a result's ``uns["spatial_impute"]["params"]`` for a CV run.

    ``epochs`` replaces the stored epochs of a Tangram map; the ensemble map gets none.

    Only settings stored in ``params`` are passed on (older results lack some), decoded by
    :meth:`~napari_spatial_impute.core.settings.MappingSettings.from_params`; an unset setting
    whose default is unset anyway (an empty cluster key) is left out, one whose default is set
    is passed as ``None`` (``tol`` stored as -1: every epoch ran, and so it does in each fold),
    and ``candidates``/``reverse_candidates`` stored as 0 (the engine had none) are left out.
    """
    settings = MappingSettings.from_params(params)
    defaults = {s.name: s.default for s in setting_specs()}
    out: dict[str, Any] = {}
    for name in _REUSED:
        if name not in params:
            continue
        value = getattr(settings, name)
        if value is None and defaults[name] is None:
            continue
        if name in ("candidates", "reverse_candidates") and not value:
            continue
        out[name] = value
    # the map that made the result (older results stored no method: ``from_params`` reads it
    # from their ``neighbours`` setting)
    out["method"] = settings.method
    trains = resolve_map_method(settings.method, settings.mode) == "tangram"
    if not trains:  # the ensemble map trains nothing: no Tangram settings
        return {k: v for k, v in out.items() if k not in TANGRAM_ONLY}
    if epochs is not None:
        out["epochs"] = int(epochs)
    return out


def iter_cross_validation(
    reference: ad.AnnData,
    spatial: ad.AnnData,
    cancel: threading.Event,
    folds: int = 5,
    interval: float | None = None,
    **kwargs: Any,
) -> Generator[CVProgress, None, pd.DataFrame | None]:
    """Run :func:`~napari_spatial_impute.cross_validate`, yielding its :class:`CVProgress`.

    Only the latest progress is yielded, at most every ``interval`` seconds (the end of the last
    fold always). Returns the table, or ``None`` when ``cancel`` was set.
    """
    epochs = int(kwargs.get("epochs", 0) or 0)

    def task(report: Callable[[Any], None]) -> pd.DataFrame:
        def progress(fold: int, n: int, info: Any) -> None:
            if info is None:  # fold ``fold`` (1-based count) finished
                report(CVProgress(fold, n, 0, epochs))
            else:
                report(CVProgress(fold, n, int(info.epoch), int(info.n_epochs) or epochs))

        return cross_validate(
            reference, spatial, folds=folds, progress=progress, cancel=cancel, **kwargs
        )

    return (
        yield from run_in_thread(
            task, cancel, interval=interval, name="spatial-impute-cv", pick=lambda b: b[-1]
        )
    )
