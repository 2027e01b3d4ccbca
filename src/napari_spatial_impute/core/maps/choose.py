"""The user's own held-out genes choose the map (``method="auto"``).

A quarter of the training genes (seeded) is held out once; every candidate map is built on the
other training genes (:meth:`~napari_spatial_impute.core.maps.problem.Problem.restrict`, on at
most :data:`CHOICE_CELLS` spatial cells; a Tangram map to a plateau of :data:`CHOICE_SLOPE` per epoch) and
imputes the held-out ones; the map with the larger median per-gene gain in Pearson is made on all
training genes. Which map imputes best depends on the data: the ensemble averages many similar
reference cells, which blends types when the reference holds few cells per type (class
profiles); the Tangram map places single cells (docs/benchmarks.md, "The data choose the map").

Scores are Pearson correlations over cells of the values as cells are compared: each data set
of raw counts log-normalised (:func:`~napari_spatial_impute.core.neighbours.similarity_values`),
so that they measure the map and not each cell's size. Beside them the *size baseline*: each
held-out gene predicted by the cell's total over the other training genes.

The inner maps are kept (:class:`InnerFold`): they calibrate the prediction intervals and the
per-gene reliability of the chosen map (:func:`napari_spatial_impute.core.uncertainty.calibrate`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_spatial_impute.core.engine.mapper import CancelFlag, EpochInfo
from napari_spatial_impute.core.maps.base import BuiltMap
from napari_spatial_impute.core.maps.problem import Problem
from napari_spatial_impute.core.maps.registry import get_map
from napari_spatial_impute.core.metrics import (
    gene_folds,
    pearson_per_gene,
    size_baseline_pearson,
)

#: The maps ``method="auto"`` chooses among (cells mode).
CANDIDATES: tuple[str, ...] = ("ensemble", "tangram")
#: The inner maps (the choice's and the calibration's) use at most this many spatial cells, a
#: seeded subset above it: at the seed's shape (40,864 cells) the inner Tangram map took 33 s on
#: 4,000 cells and 21 s on 2,000, whose held-out median was 0.008 lower.
CHOICE_CELLS = 4000
#: Held-out share of the training genes (one split).
HELD_SHARE = 0.25
#: With fewer training genes there is no choice: the ensemble map is made.
MIN_CHOICE_GENES = 8
#: The inner maps of the choice stop at a plateau of this score gain per epoch (at least; the run's
#: own ``tol / patience`` when steeper) over at most :data:`CHOICE_PATIENCE` epochs: a gain under
#: 0.006 over 30 epochs, where the default run's is 0.001 over 50. Their held-out medians, this
#: rule vs the default plateau (measured on the pairs of docs/benchmarks.md): MERFISH 0.200 vs
#: 0.193 after 92 vs 171 epochs, STARmap split 0.115 vs 0.122 (124 vs 234), osmFISH split 0.215
#: vs 0.211, one-cell-per-type synthetic 0.789 vs 0.785.
CHOICE_SLOPE = 2e-4
CHOICE_PATIENCE = 30
#: Below this inner held-out median Pearson the imputation is called weak.
WEAK_PEARSON = 0.1


@dataclass
class InnerFold:
    """A map built without some training genes.

    Attributes
    ----------
    held
        Positions (in the problem's training genes) of the genes held out.
    cells
        Positions of the spatial cells it was built on (``None``: all).
    built
        The map, on the other training genes.
    """

    held: list[int]
    cells: np.ndarray | None
    built: BuiltMap


def choice_cells(n: int, seed: int, limit: int | None = None) -> np.ndarray | None:
    """A seeded, sorted subset of ``limit`` (default :data:`CHOICE_CELLS`) of ``n`` spatial
    cells (``None``: all of them)."""
    limit = CHOICE_CELLS if limit is None else limit
    if n <= limit:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def held_genes(genes: Sequence[str], seed: int, share: float = HELD_SHARE) -> list[int]:
    """Positions of the seeded held-out share of ``genes`` (at least one, never all)."""
    folds = max(2, int(round(1.0 / share)))
    first = set(gene_folds(list(genes), min(folds, len(genes)), seed)[0])
    return [i for i, g in enumerate(genes) if g in first]


def build_inner(
    problem: Problem,
    name: str,
    held: Sequence[int],
    cells: np.ndarray | None,
    *,
    callback: Callable[[EpochInfo], None] | None = None,
    cancel: CancelFlag = None,
) -> InnerFold:
    """Build map ``name`` on ``problem`` without the ``held`` training genes."""
    held_set = set(held)
    train = [i for i in range(len(problem.genes)) if i not in held_set] or list(held)
    built = get_map(name).build(problem.restrict(train, cells), callback=callback, cancel=cancel)
    return InnerFold(list(held), cells, built)


def inner_scores(fold: InnerFold, S: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Pearson of each held-out gene of ``fold``, imputed by its map, against the measured one.

    ``S`` and ``G``: the reference cells' and ``fold.cells``' training values as cells are
    compared (:meth:`Problem.similarity`).
    """
    pred = np.asarray(fold.built.operator() @ S[:, fold.held], dtype=np.float64)
    return pearson_per_gene(pred, G[:, fold.held])


def size_baseline(given: np.ndarray, G: np.ndarray, held: Sequence[int]) -> np.ndarray:
    """Pearson of each held-out gene (``G``, as cells are compared) with the cell's total over
    the other training genes (``given``, the values as given; same cells)."""
    return size_baseline_pearson(np.delete(given, list(held), axis=1), G[:, list(held)])


def _median(x: np.ndarray) -> float:
    return float(np.nanmedian(x)) if np.isfinite(x).any() else float("nan")


@dataclass
class MapChoice:
    """What ``method="auto"`` measured and chose.

    Attributes
    ----------
    chosen
        The map made on all training genes.
    scores
        Each candidate's median inner held-out Pearson.
    size_baseline
        The size baseline's median on the same genes and cells.
    held_genes
        The inner held-out genes (reference names).
    n_cells
        Spatial cells the inner maps were built on.
    seconds
        Each candidate's build time.
    per_gene
        Each candidate's inner Pearson per held-out gene.
    folds
        The inner maps (not recorded in files).
    reason
        Why there was no choice (too few training genes), else ``""``.
    """

    chosen: str
    scores: dict[str, float] = field(default_factory=dict)
    size_baseline: float = float("nan")
    held_genes: list[str] = field(default_factory=list)
    n_cells: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    per_gene: dict[str, np.ndarray] = field(default_factory=dict)
    folds: dict[str, InnerFold] = field(default_factory=dict)
    reason: str = ""

    @property
    def best_score(self) -> float:
        """The chosen map's inner held-out median (NaN without a choice)."""
        return self.scores.get(self.chosen, float("nan"))

    def describe(self) -> str:
        """One line: the choice and the figures it was made on."""
        if self.reason:
            return f"map: {self.chosen} ({self.reason})"
        others = ", ".join(
            f"{name} {score:.3f}" for name, score in self.scores.items() if name != self.chosen
        )
        return (
            f"map: {self.chosen}, chosen on {len(self.held_genes)} held-out training genes "
            f"({self.n_cells:,} cells): median Pearson {self.best_score:.3f} vs {others}; "
            f"size baseline {self.size_baseline:.3f}"
        )

    def weak(self) -> str:
        """A warning when the chosen map imputes its held-out genes weakly, else ``""``."""
        best = self.best_score
        if not np.isfinite(best):
            return ""
        size = self.size_baseline
        if best < WEAK_PEARSON or (np.isfinite(size) and best <= size):
            why = (
                f"below the size baseline ({size:.3f}: the cell's total count alone)"
                if np.isfinite(size) and best <= size
                else f"under {WEAK_PEARSON}"
            )
            return (
                f"imputation is weak on these data: the chosen {self.chosen} map's held-out "
                f"training genes reach a median Pearson of {best:.3f}, {why}; check that both "
                "data sets are the same tissue and gene names match, try --transform "
                "normalize_log1p, --mode clusters, or a closer reference"
            )
        return ""

    def record(self) -> dict[str, Any]:
        """Plain values for ``uns['spatial_impute']['map_choice']``."""
        names = list(self.scores)
        return {
            "chosen": self.chosen,
            "candidates": np.asarray(names, dtype=object),
            "inner_median_pearson": np.asarray([self.scores[n] for n in names], dtype=np.float64),
            "size_baseline": float(self.size_baseline),
            "held_genes": np.asarray(self.held_genes, dtype=object),
            "n_cells": int(self.n_cells),
            "reason": self.reason,
            "summary": self.describe(),
            "warning": self.weak(),
        }


def choose_map(
    problem: Problem,
    candidates: Sequence[str] = CANDIDATES,
    *,
    cancel: CancelFlag = None,
    progress: Callable[[str], None] | None = None,
    callback: Callable[[EpochInfo], None] | None = None,
) -> MapChoice:
    """Build each candidate without a held-out quarter of the training genes; keep the best.

    Best: the largest median per-gene gain in Pearson over the first candidate (:func:`_best`);
    ties go to the first candidate (the ensemble, which trains nothing).
    """
    genes = problem.genes
    if len(genes) < MIN_CHOICE_GENES:
        return MapChoice(
            chosen=candidates[0],
            reason=(
                f"{len(genes)} training genes are too few to hold some out and choose; "
                f"{MIN_CHOICE_GENES} or more are needed"
            ),
        )
    held = held_genes(genes, problem.seed)
    cells = choice_cells(problem.n_spatial, problem.seed)
    choice = MapChoice(
        chosen=candidates[0],
        held_genes=[genes[i] for i in held],
        n_cells=problem.n_spatial if cells is None else len(cells),
    )
    tol, patience = problem.settings.tol, int(problem.settings.patience)
    if tol:  # a run that asks for every epoch (tol 0) gets every epoch here too
        inner_patience = min(patience, CHOICE_PATIENCE)
        slope = max(float(tol) / patience, CHOICE_SLOPE)
        settings = dataclasses.replace(
            problem.settings, tol=slope * inner_patience, patience=inner_patience
        )
        inner_problem = dataclasses.replace(problem, settings=settings)
    else:
        inner_problem = problem
    # the values as cells are compared, once for every candidate and the size baseline
    S, G = problem.similarity(cells)
    given = problem.G if cells is None else problem.G[cells]
    for name in candidates:
        if progress is not None:
            progress(name)
        t0 = time.perf_counter()
        fold = build_inner(inner_problem, name, held, cells, callback=callback, cancel=cancel)
        choice.seconds[name] = time.perf_counter() - t0
        choice.folds[name] = fold
        choice.per_gene[name] = inner_scores(fold, S, G)
        choice.scores[name] = _median(choice.per_gene[name])
    choice.size_baseline = _median(size_baseline(given, G, held))
    choice.chosen = _best(choice.per_gene, list(candidates))
    return choice


def _best(per_gene: dict[str, np.ndarray], candidates: list[str]) -> str:
    """The candidate that imputes the held-out genes best, gene by gene.

    Each candidate is compared with the first on the same genes: the median of the per-gene
    differences of Pearson (a paired comparison: on the class-profile references of
    docs/benchmarks.md, where the two maps' medians differ by under 0.01, comparing the two
    medians chose the worse map in 2-4 of 10 folds). The largest positive median difference
    wins; none positive keeps the first (the ensemble, which trains nothing).
    """
    first = per_gene[candidates[0]]
    best, gain = candidates[0], 0.0
    for name in candidates[1:]:
        diff = per_gene[name] - first
        ok = np.isfinite(diff)
        if not ok.any():
            continue
        d = float(np.median(diff[ok]))
        if d > gain:
            best, gain = name, d
    return best
