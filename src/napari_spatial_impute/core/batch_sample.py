"""The run's sample: cells drawn across the batches, on which the map is chosen and calibrated once.

:func:`draw_sample` reads a seeded sample of at most
:data:`~napari_spatial_impute.core.maps.choose.CHOICE_CELLS` cells drawn across the batches (only
those rows) and prepares it against the whole reference; :func:`choose_once` chooses the map on it
(``method="auto"``) and :func:`calibrate_once` calibrates the chosen map's prediction intervals on
it, so that every batch of :func:`~napari_spatial_impute.core.batch_run.map_batches` makes the same
map with the same calibration, and no batch pays either again.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np

from napari_spatial_impute._errors import InputError, first_line
from napari_spatial_impute.core.batches import Batch, SpatialSource, sample_rows
from napari_spatial_impute.core.engine.mapper import CancelFlag
from napari_spatial_impute.core.settings import MappingSettings

if TYPE_CHECKING:
    from napari_spatial_impute.core.maps.choose import MapChoice
    from napari_spatial_impute.core.maps.problem import Problem
    from napari_spatial_impute.core.uncertainty import Calibration


@dataclass
class BatchChoice:
    """The map chosen once for every batch of a run, and the sample it was chosen on.

    Attributes
    ----------
    choice
        What :func:`~napari_spatial_impute.core.maps.choose.choose_map` measured and chose.
    n_batches
        Batches of the run.
    sections
        Names of the batches the sample drew cells from.
    cells_per_section
        Cells of each of ``sections`` the map was chosen on.
    n_drawn
        Cells drawn (those without counts are left out).
    seconds
        Time to read the sample and choose.
    """

    choice: MapChoice
    n_batches: int
    sections: list[str]
    cells_per_section: list[int]
    n_drawn: int
    seconds: float

    @property
    def chosen(self) -> str:
        """The map every batch makes."""
        return self.choice.chosen

    @property
    def n_cells(self) -> int:
        """Cells the map was chosen on."""
        return int(sum(self.cells_per_section))

    def describe(self) -> str:
        """One line: the choice, for all the batches, and the sample it was made on."""
        left = self.n_drawn - self.n_cells
        out = f", {left:,} drawn without counts left out" if left else ""
        k = len(self.sections)
        where = "each of them" if k == self.n_batches else f"{k} of them"
        return (
            f"map chosen once for all {self.n_batches} sections on {self.n_cells:,} cells drawn "
            f"from {where} (seeded, in proportion to their cells{out}): "
            f"{self.choice.describe().removeprefix('map: ')}"
        )

    def record(self) -> dict[str, Any]:
        """The single run's ``map_choice`` record, with the sample (``uns``)."""
        from napari_spatial_impute.core.maps.choose import CHOICE_CELLS

        return {
            **self.choice.record(),
            "scope": "once for all batches",
            "batch_summary": self.describe(),
            "n_batches": int(self.n_batches),
            "sample_sections": np.asarray(self.sections, dtype=object),
            "sample_cells_per_section": np.asarray(self.cells_per_section, dtype=np.int64),
            "sample_n_cells": int(self.n_cells),
            "sample_n_drawn": int(self.n_drawn),
            "sample_rule": (
                f"at most {CHOICE_CELLS:,} cells, seeded (the run's seed), each section's share "
                "in proportion to its cells; cells without counts left out"
            ),
            "seconds": float(self.seconds),
        }


def _with_counts(X: Any) -> np.ndarray:
    """Rows with some counts and only finite values."""
    totals = np.asarray(abs(X).sum(axis=1, dtype=np.float64), dtype=np.float64).ravel()
    keep: np.ndarray = np.isfinite(totals) & (totals > 0)
    return keep


@dataclass
class RunSample:
    """The seeded sample of cells drawn across the batches (:func:`~napari_spatial_impute.core.batches.sample_rows`),
    prepared as one mapping problem against the whole reference: the map is chosen on it
    (:func:`choose_once`) and calibrated on it (:func:`calibrate_once`), once for every batch."""

    problem: Problem
    rows: np.ndarray
    n_drawn: int
    counts: np.ndarray


def draw_sample(
    reference: ad.AnnData,
    source: SpatialSource,
    batches: Sequence[Batch],
    settings: MappingSettings,
    what: str = "choose the map",
) -> RunSample:
    """Read at most :data:`~napari_spatial_impute.core.maps.choose.CHOICE_CELLS` cells drawn
    across ``batches`` (seeded by the run's seed; only those rows are read) and prepare them as a
    problem against the whole reference, with the run's settings.

    Cells without counts (or with values that are not finite) are left out: they would not map
    in their batch either. The input warnings of the sample are not shown (each batch reports
    its own).
    """
    from napari_spatial_impute.core.maps.choose import CHOICE_CELLS
    from napari_spatial_impute.core.maps.problem import prepare_problem

    seed = 0 if settings.seed is None else int(settings.seed)
    rows = sample_rows(batches, CHOICE_CELLS, seed)
    cells = source.take(rows)
    keep = _with_counts(cells.X)
    if not keep.any():
        raise InputError(
            f"the {rows.size:,} cells drawn across the {len(batches)} sections to {what} have no "
            "counts (every value 0, or not finite): check the spatial values, or give the map "
            "(--method ensemble or tangram) and leave out the intervals (--no-uncertainty)."
        )
    if not keep.all():
        rows, cells = rows[keep], cells[keep].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each batch reports its own input warnings
        try:
            problem = prepare_problem(reference, cells, settings)
        except InputError as exc:
            raise InputError(
                f"the map could not be prepared on {rows.size:,} cells drawn across the sections: "
                f"{first_line(exc).rstrip('.')}."
            ) from None
    labels = np.empty(source.adata.n_obs, dtype=np.int64)
    for b in batches:
        labels[b.rows] = b.index
    counts = np.bincount(labels[rows], minlength=len(batches))
    return RunSample(problem, rows, int(keep.size), counts)


def choose_once(
    sample: RunSample,
    batches: Sequence[Batch],
    cancel: CancelFlag = None,
) -> BatchChoice:
    """Choose the map once for every batch: :func:`~napari_spatial_impute.core.maps.choose.choose_map`
    on the run's sample of cells drawn across the batches (:func:`draw_sample`), against the
    whole reference, with the run's settings."""
    from napari_spatial_impute.core.maps.choose import choose_map

    t0 = time.perf_counter()
    choice = choose_map(sample.problem, cancel=cancel)
    drawn = [b for b in batches if sample.counts[b.index]]
    return BatchChoice(
        choice,
        len(batches),
        [b.name for b in drawn],
        [int(sample.counts[b.index]) for b in drawn],
        sample.n_drawn,
        time.perf_counter() - t0,
    )


def calibrate_once(
    sample: RunSample,
    method: str,
    choice: MapChoice | None = None,
    cancel: CancelFlag = None,
) -> Calibration:
    """The prediction intervals and per-gene reliability of map ``method``, calibrated once for
    every batch on the run's sample: the map made on the sample and calibrated as a run on those
    cells alone would be (:func:`~napari_spatial_impute.core.mapping.calibrate_map`; the
    choice's inner map reused). Each batch applies it to its own cells
    (:func:`~napari_spatial_impute.core.uncertainty.for_cells`) instead of calibrating again: a
    batch then costs its map and its genes, not four inner maps more."""
    from napari_spatial_impute.core.mapping import assemble_result, calibrate_map
    from napari_spatial_impute.core.maps.registry import get_map

    problem = sample.problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each batch reports its own input warnings
        built = get_map(method).build(problem, cancel=cancel)
        result = assemble_result(problem, built, choice)
        return calibrate_map(problem, result, built, choice, cancel=cancel)
