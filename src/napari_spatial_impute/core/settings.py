"""The mapping settings, listed once: :class:`MappingSettings`.

Each user-facing setting of :func:`~napari_spatial_impute.map_cells_to_space` is one field of
:class:`MappingSettings`, with its type, default, allowed values, bounds and a short help text in
the field's metadata (read them with :func:`setting_specs`). Everything else is derived from it:

- :func:`~napari_spatial_impute.map_cells_to_space` builds a :class:`MappingSettings` from its
  keyword arguments, refuses bad ones with :meth:`MappingSettings.validate` and stores
  :meth:`MappingSettings.to_params` of what ran in ``uns["spatial_impute"]["params"]``;
- the command line's mapping options (``--kebab-case`` of each field);
- the Map widget's settings form (a magicgui widget per field);
- the Diagnostics widget's cross-validation, which reads a result's settings back with
  :meth:`MappingSettings.from_params`.

A new setting therefore needs a field here (and its use in the mapping), nothing else.

Only the standard library is imported here: the command line reads these fields to build its
``--help`` without loading numpy, torch or anndata.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from napari_spatial_impute._errors import InputError

if TYPE_CHECKING:
    import numpy as np

Mode = Literal["cells", "clusters", "constrained"]
Engine = Literal["exact", "lean", "auto"]
Search = Literal["exact", "approximate", "auto"]
Method = Literal["auto", "ensemble", "tangram"]
Transform = Literal["none", "normalize_log1p", "auto"]

MODES: tuple[str, ...] = ("cells", "clusters", "constrained")
#: How the map is made (see :func:`resolve_map_method`).
MAP_METHODS: tuple[str, ...] = ("auto", "ensemble", "tangram")
ENGINES: tuple[str, ...] = ("exact", "lean", "auto")
#: How neighbours and lean candidates are found (see core.engine.search.resolve_search).
SEARCHES: tuple[str, ...] = ("exact", "approximate", "auto")
DENSITIES: tuple[str, ...] = ("uniform", "rna_count_based", "none")
#: ``auto`` decides per data set: raw counts are normalised and log1p'd, other values kept.
TRANSFORMS: tuple[str, ...] = ("none", "normalize_log1p", "auto")
#: Named training gene sets (a list of gene names is also accepted).
GENE_SETS: tuple[str, ...] = ("overlap", "markers")
#: Largest seed accepted (numpy and torch both take seeds in 0 .. 2**32 - 1).
MAX_SEED = 2**32 - 1

#: Keys of ``uns["spatial_impute"]["params"]`` that describe the run, not a setting.
#: ``stop_reason`` is one of :data:`STOP_REASONS` (results written before it existed have none).
RUN_RECORD_KEYS: tuple[str, ...] = (
    "epochs_done",
    "stop_reason",
    "engine_note",
    "n_pairs",
    "reference_values",
    "spatial_values",
    "values_note",
    "map_choice",
)
#: Why a map's training stopped: ``"plateau"`` (the training score gained less than ``tol``
#: over the last ``patience`` epochs), ``"epochs"`` (every epoch ran) or ``"not trained"`` (the
#: ensemble map, which trains nothing).
STOP_REASONS: tuple[str, ...] = ("plateau", "epochs", "not trained")
#: The default plateau: the training score gained less than this over the last
#: :data:`DEFAULT_PATIENCE` epochs (chosen on measured trajectories, docs/benchmarks.md
#: "Fast defaults (issue 14)").
DEFAULT_TOL = 1e-3
DEFAULT_PATIENCE = 50


#: The weights of the Tangram objective's terms (tangram-sc's names).
LAMBDAS: tuple[str, ...] = (
    "lambda_g1",
    "lambda_g2",
    "lambda_d",
    "lambda_r",
    "lambda_count",
    "lambda_f_reg",
)
#: Settings that only the Tangram map uses (the ensemble map trains nothing).
TANGRAM_ONLY: tuple[str, ...] = (
    "density",
    "epochs",
    "learning_rate",
    *LAMBDAS,
    "target_count",
    "device",
    "engine",
    "candidates",
    "reverse_candidates",
    "tol",
    "patience",
)
#: Settings that only the ensemble map uses (none since a Tangram map in cells mode has
#: prediction intervals too).
ENSEMBLE_ONLY: tuple[str, ...] = ()


class Setting(NamedTuple):
    """One field of :class:`MappingSettings` with its metadata.

    ``type`` is the scalar type a form or command line asks for (``bool``, ``int``, ``float`` or
    ``str``). ``optional`` settings may be unset (``None``; ``unset`` says what that means); in
    the stored params an unset number is ``-1`` and an unset name ``""``. ``low``/``high`` bound
    numbers (``low`` excluded when ``above``). ``names_ok``: a list of names is also accepted
    besides ``choices``. ``advanced`` settings are shown folded in the Map widget.
    """

    name: str
    type: type
    default: Any
    help: str
    label: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    above: bool = False
    optional: bool = False
    unset: str = ""
    names_ok: bool = False
    advanced: bool = False
    step: float | None = None


def _setting(
    default: Any,
    type_: type,
    help: str,
    *,
    label: str = "",
    choices: tuple[str, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    above: bool = False,
    optional: bool = False,
    unset: str = "",
    names_ok: bool = False,
    advanced: bool = False,
    step: float | None = None,
) -> Any:
    meta = {
        "type": type_,
        "help": help,
        "label": label,
        "choices": choices,
        "low": low,
        "high": high,
        "above": above,
        "optional": optional,
        "unset": unset,
        "names_ok": names_ok,
        "advanced": advanced,
        "step": step,
    }
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class MappingSettings:
    """The settings of one mapping (see :func:`~napari_spatial_impute.map_cells_to_space`).

    Constructing one checks nothing: a record of a run (:meth:`from_params`) holds what ran
    (e.g. ``density="custom"`` for a vector, ``engine="exact"`` with ``candidates=0``), which
    need not be valid input. :meth:`validate` refuses settings that would crash or silently
    corrupt a run, with one line each.
    """

    method: Method = _setting(
        "auto",
        str,
        "how the map is made: ensemble matches each spatial cell to its most similar reference "
        "cells (no training); tangram trains the Tangram objective (epochs, engine and the "
        "lambdas apply); auto: in cells mode both are made without a quarter of the training "
        "genes and the one that imputes those genes best is kept; tangram in clusters and "
        "constrained modes",
        label="Map",
        choices=MAP_METHODS,
    )
    mode: Mode = _setting(
        "cells",
        str,
        "cells: map every reference cell; clusters: map cluster profiles (faster, needs a "
        "cluster key); constrained: also learn which reference cells to keep",
        choices=MODES,
    )
    cluster_key: str | None = _setting(
        None,
        str,
        "reference obs column with clusters (projected onto space)",
        optional=True,
        unset="no clusters",
    )
    genes: str | Sequence[str] = _setting(
        "overlap",
        str,
        "training genes: overlap (all shared genes), markers (marker genes of each cluster) "
        "or a list of gene names",
        label="Training genes",
        choices=GENE_SETS,
        names_ok=True,
    )
    n_markers: int = _setting(
        100,
        int,
        "marker genes per cluster (rank_genes_groups) with the markers gene set",
        label="Markers / cluster",
        low=1,
    )
    density: str | np.ndarray | Sequence[float] | None = _setting(
        "uniform",
        str,
        "density prior over spatial cells: uniform (single-cell data), rna_count_based (spots "
        "holding several cells), none",
        label="Density prior",
        choices=DENSITIES,
    )
    epochs: int = _setting(1000, int, "training epochs", low=0)
    learning_rate: float = _setting(0.1, float, "Adam's step size", low=0, above=True, step=0.01)
    lambda_g1: float = _setting(
        1.0,
        float,
        "weight of the gene-wise cosine similarity (the objective; cannot be 0)",
        low=0,
        above=True,
        advanced=True,
    )
    lambda_g2: float = _setting(
        0.0, float, "weight of the cell-wise cosine similarity", low=0, advanced=True
    )
    lambda_d: float | None = _setting(
        None,
        float,
        "density weight",
        low=0,
        optional=True,
        unset="1 with a density prior, else 0",
        advanced=True,
    )
    lambda_r: float = _setting(0.0, float, "entropy weight", low=0, advanced=True)
    lambda_count: float = _setting(
        1.0, float, "constrained mode: weight of the cell-count term", low=0, advanced=True
    )
    lambda_f_reg: float = _setting(
        1.0, float, "constrained mode: weight of the filter regulariser", low=0, advanced=True
    )
    target_count: int | None = _setting(
        None,
        int,
        "constrained mode: reference cells kept",
        low=1,
        optional=True,
        unset="the number of spatial cells",
        advanced=True,
    )
    transform: Transform = _setting(
        "none",
        str,
        "value transform before mapping: none keeps values as given (like tangram-sc); "
        "normalize_log1p normalises each set to its median total count and applies log1p; "
        "auto does so to each set that holds raw counts and keeps any other as given",
        choices=TRANSFORMS,
    )
    seed: int | None = _setting(
        0,
        int,
        "seed of the initial mapping; the same seed gives the same result on the same device",
        low=0,
        high=MAX_SEED,
        optional=True,
        unset="random",
        advanced=True,
    )
    device: str = _setting("cpu", str, "cpu, cuda (or cuda:N) or auto")
    engine: Engine = _setting(
        "auto",
        str,
        "exact: dense objective; lean: candidate pairs, linear memory; auto: the one "
        "measured cheaper per epoch on this problem (a few probe epochs; the choice and the "
        "costs are recorded in the result)",
        choices=ENGINES,
    )
    candidates: int = _setting(
        50,
        int,
        "lean engine: reference candidates per spatial cell",
        low=1,
        advanced=True,
    )
    reverse_candidates: int = _setting(
        5,
        int,
        "lean engine: spatial candidates per reference cell",
        low=0,
        advanced=True,
    )
    tol: float | None = _setting(
        DEFAULT_TOL,
        float,
        "stop when the training score gains less than this over the last patience epochs "
        "(a plateau); 0 runs every epoch",
        low=0,
        optional=True,
        unset="run every epoch",
        advanced=True,
        step=0.001,
    )
    patience: int = _setting(
        DEFAULT_PATIENCE, int, "window of tol, in epochs", low=1, advanced=True
    )
    uncertainty: bool = _setting(
        True,
        bool,
        "cells mode: calibrate prediction intervals and per-gene reliability of the map on "
        "held-out training genes",
        advanced=True,
    )
    search: Search = _setting(
        "auto",
        str,
        "how similar cells are found (ensemble neighbours, lean candidates): exact compares "
        "every pair; approximate searches a cluster index (inverted file) of the cells; auto: "
        "approximate above 10^9 pairs with 20,000 or more reference cells",
        label="Neighbour search",
        choices=SEARCHES,
        advanced=True,
    )

    # ------------------------------------------------------------------ checking
    def validate(self) -> MappingSettings:
        """Refuse settings that would crash or silently corrupt a run, one line each.

        Returns the settings, so that ``MappingSettings(**kwargs).validate()`` chains.
        """
        if self.mode not in MODES:
            raise InputError(f"mode {self.mode!r} is not known; use one of {', '.join(MODES)}.")
        if self.method not in MAP_METHODS:
            hint = (
                " (a projection such as this is projection=/--projection)"
                if self.method in ("neighbours", "probabilistic", "argmax")
                else ""
            )
            raise InputError(
                f"map method {self.method!r} is not known; use one of "
                f"{', '.join(MAP_METHODS)}{hint}."
            )
        if self.method == "ensemble" and self.mode != "cells":
            raise InputError(
                f"{self.mode} mode is a Tangram option; use method='tangram' (--method tangram), "
                "or cells mode with a cluster key to get cluster probabilities from the ensemble."
            )
        if _number(self.epochs) and self.epochs < 0:
            raise InputError(f"epochs must be 0 or more, got {self.epochs}.")
        if self.engine not in ENGINES:
            raise InputError(
                f"engine {self.engine!r} is not known; use one of {', '.join(ENGINES)}."
            )
        if (
            _number(self.candidates)
            and _number(self.reverse_candidates)
            and (self.candidates < 1 or self.reverse_candidates < 0)
        ):
            raise InputError("candidates must be 1 or more and reverse_candidates 0 or more.")
        lr = self.learning_rate
        if not (_number(lr) and math.isfinite(lr) and lr > 0):
            raise InputError(
                f"learning rate must be a positive number, got {lr}; the default is 0.1."
            )
        for name in LAMBDAS:
            value = getattr(self, name)
            if value is not None and not (_number(value) and math.isfinite(value) and value >= 0):
                raise InputError(
                    f"{name} must be a finite number of 0 or more, got {value}; "
                    "the weights of the objective cannot be negative."
                )
        if self.lambda_g1 == 0:
            raise InputError("lambda_g1 cannot be 0: the gene-wise similarity is the objective.")
        tol = self.tol
        if tol is not None and not (_number(tol) and math.isfinite(tol) and tol >= 0):
            raise InputError(
                f"tol must be a finite number of 0 or more, got {tol}; 0 runs every epoch."
            )
        seed = self.seed
        if seed is not None and not (
            isinstance(seed, numbers.Integral)
            and not isinstance(seed, bool)
            and 0 <= int(seed) <= MAX_SEED
        ):
            raise InputError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.")
        if _number(self.n_markers) and self.n_markers < 1:
            raise InputError(
                f"n_markers must be 1 or more, got {self.n_markers}; the default is 100 per cluster."
            )
        if _number(self.patience) and self.patience < 1:
            raise InputError(f"patience must be 1 or more, got {self.patience}.")
        if self.target_count is not None and _number(self.target_count) and self.target_count < 1:
            raise InputError(f"target_count must be 1 or more, got {self.target_count}.")
        if self.engine == "lean" and self.mode == "clusters":
            raise InputError(
                "the lean engine maps single cells; clusters mode maps a few cluster profiles with "
                "the exact engine: use engine='exact' or 'auto' (--engine exact)."
            )
        if self.transform not in TRANSFORMS:
            raise InputError(
                f"transform {self.transform!r} is not known; use one of {', '.join(TRANSFORMS)}."
            )
        if isinstance(self.density, str) and self.density not in DENSITIES:
            raise InputError(
                f"density {self.density!r} is not known; use 'uniform', 'rna_count_based', "
                "'none' or a vector."
            )
        self._check_bounds()
        return self

    def _check_bounds(self) -> None:
        """The generic checks of every field's metadata (a new field is checked without code)."""
        for spec in setting_specs():
            value = getattr(self, spec.name)
            if value is None:
                if spec.optional or spec.default is None:
                    continue
                raise InputError(f"{spec.name} must be set; the default is {spec.default!r}.")
            if spec.type is bool or spec.type is str:
                if (
                    spec.choices
                    and not spec.names_ok
                    and isinstance(value, str)
                    and value not in spec.choices
                ):
                    raise InputError(
                        f"{spec.name} {value!r} is not known; use one of {', '.join(spec.choices)}."
                    )
                continue
            if not _number(value) or not math.isfinite(value):
                raise InputError(f"{spec.name} must be a finite number, got {value!r}.")
            low, high = spec.low, spec.high
            if low is not None and (value <= low if spec.above else value < low):
                word = f"more than {low}" if spec.above else f"{low} or more"
                raise InputError(f"{spec.name} must be {word}, got {value}.")
            if high is not None and value > high:
                raise InputError(f"{spec.name} must be {high} or less, got {value}.")

    # ------------------------------------------------------------------ stored params
    def to_params(self) -> dict[str, Any]:
        """These settings as stored in ``uns["spatial_impute"]["params"]`` (h5ad-friendly).

        Unset numbers are stored as ``-1``, an unset name as ``""``, a list of genes as
        ``"list"`` and a density vector as ``"custom"``; numbers as plain ``int``/``float``.
        """
        out: dict[str, Any] = {}
        for spec in setting_specs():
            value = getattr(self, spec.name)
            if value is None:
                out[spec.name] = "" if spec.type is str else spec.type(-1)
            elif spec.type is str and not isinstance(value, str):
                # a list of genes, a density vector, a torch device
                kind = {"genes": "list", "density": "custom"}
                out[spec.name] = kind.get(spec.name, str(value))
            elif spec.type is bool:
                out[spec.name] = bool(value)
            elif spec.type in (int, float):
                out[spec.name] = spec.type(value)
            else:
                out[spec.name] = value
        return out

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> MappingSettings:
        """The settings of a stored ``params`` dict (:meth:`to_params`; also older results).

        Settings missing from ``params`` (results written before they existed) take their
        defaults; keys that are no setting (:data:`RUN_RECORD_KEYS`) are left out. Nothing is
        validated: see the class docstring.
        """
        values: dict[str, Any] = {}
        if "method" not in params and "neighbours" in params:
            # results before the map method existed trained Tangram and, with ``neighbours``,
            # also the ensemble, which then imputed (the map that ran "auto" now makes)
            values["method"] = "auto" if bool(params["neighbours"]) else "tangram"
        for spec in setting_specs():
            if spec.name not in params:
                continue
            value = params[spec.name]
            if hasattr(value, "item"):  # numpy scalars read from an h5ad file
                value = value.item()
            if spec.optional and (
                value is None
                or (spec.type is str and value == "")
                or (spec.type in (int, float) and _number(value) and not value >= 0)
            ):
                value = None
            elif spec.type is bool:
                value = bool(value)
            elif spec.type in (int, float) and _number(value):
                value = spec.type(value)
            values[spec.name] = value
        return cls(**values)


def describe_stop(params: Mapping[str, Any]) -> str:
    """How a map's training ended, from a result's ``params``: the epochs done and why.

    For example ``"stopped at a plateau after 188 of 1000 epochs (score gain under 0.001 over
    50 epochs)"``, ``"all 300 epochs"`` or ``"nothing trained"``. Results written before
    ``stop_reason`` was recorded give the epochs done only.
    """

    def plain(key: str, default: Any) -> Any:
        value = params.get(key, default)
        return value.item() if hasattr(value, "item") else value

    reason = str(plain("stop_reason", ""))
    done = int(plain("epochs_done", 0))
    if reason == "not trained" or (not reason and plain("method", "") == "ensemble"):
        return "nothing trained"
    planned = int(plain("epochs", done))
    if reason == "plateau":
        return (
            f"stopped at a plateau after {done:,} of {planned:,} epochs (score gain under "
            f"{float(plain('tol', 0)):g} over {int(plain('patience', 0))} epochs)"
        )
    if reason == "epochs":
        return f"all {done:,} epochs" if done != 1 else "its one epoch"
    return f"{done:,} epochs"


def resolve_map_method(method: str, mode: str) -> str:
    """The map a run makes: ``"auto"`` stays ``"auto"`` in cells mode (the user's own held-out
    genes choose, :mod:`napari_spatial_impute.core.maps.choose`) and is the Tangram map in
    clusters and constrained modes."""
    if method == "auto":
        return "auto" if mode == "cells" else "tangram"
    return method


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def setting_specs() -> tuple[Setting, ...]:
    """Every field of :class:`MappingSettings` with its metadata, in order."""
    return _SPECS


def setting_names() -> tuple[str, ...]:
    """The names of :class:`MappingSettings`' fields, in order."""
    return tuple(s.name for s in _SPECS)


def _spec(f: dataclasses.Field[Any]) -> Setting:
    m = f.metadata
    return Setting(
        name=f.name,
        type=m["type"],
        default=f.default,
        help=m["help"],
        label=m["label"] or f.name.replace("_", " ").capitalize(),
        choices=m["choices"],
        low=m["low"],
        high=m["high"],
        above=m["above"],
        optional=m["optional"],
        unset=m["unset"],
        names_ok=m["names_ok"],
        advanced=m["advanced"],
        step=m["step"],
    )


_SPECS: tuple[Setting, ...] = tuple(_spec(f) for f in dataclasses.fields(MappingSettings))

__all__ = [
    "DENSITIES",
    "ENGINES",
    "ENSEMBLE_ONLY",
    "GENE_SETS",
    "MAX_SEED",
    "MAP_METHODS",
    "MODES",
    "RUN_RECORD_KEYS",
    "SEARCHES",
    "TANGRAM_ONLY",
    "STOP_REASONS",
    "TRANSFORMS",
    "Engine",
    "MappingSettings",
    "Method",
    "Mode",
    "Search",
    "Setting",
    "Transform",
    "describe_stop",
    "setting_names",
    "resolve_map_method",
    "setting_specs",
]
