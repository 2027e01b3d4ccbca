"""Reading, validating and atomically writing AnnData files."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_spatial_impute._errors import CommittedInterrupt, InputError, first_line
from napari_spatial_impute.io._sparse import is_sparse

#: Column names tried, in order, when looking for the field of view of each spatial cell.
FOV_CANDIDATES: tuple[str, ...] = (
    "fov",
    "FOV",
    "field_of_view",
    "fov_id",
    "FOV_ID",
    "fov_name",
    "slice",
    "slice_id",
    "section",
    "library_id",
    "sample",
)

#: Largest expression value accepted: squares summed over thousands of genes must stay finite in
#: float32 (max 3.4e38), and no real count or normalised value comes near it.
MAX_VALUE = 1e15

ValueKind = Literal[
    "raw counts", "non-integer (normalised)", "log-transformed", "scaled (negative values)"
]


def read_h5ad(path: str | os.PathLike[str], role: str = "data", backed: bool = False) -> ad.AnnData:
    """Read an ``.h5ad`` file and fail with a one-line message when it cannot be read.

    Parameters
    ----------
    path
        File to read.
    role
        What the file is for (``"reference"``, ``"spatial"``), used in error messages.
    backed
        Open it read-only with ``X`` left on disk (rows are read when sliced).

    Returns
    -------
    The AnnData object, fully loaded in memory unless ``backed``.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{role} file {str(p)!r} does not exist; check the path.")
    if p.is_dir():
        raise InputError(f"{role} path {str(p)!r} is a folder; give the .h5ad file inside it.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = ad.read_h5ad(p, backed="r") if backed else ad.read_h5ad(p)
    except Exception as exc:  # h5py/anndata raise many types for a broken file
        first = first_line(exc)
        raise InputError(
            f"cannot read {role} file {str(p)!r} as .h5ad ({first}); "
            "give an AnnData file written by anndata or scanpy (adata.write_h5ad)."
        ) from None
    return adata


def find_fov_key(adata: ad.AnnData, fov_key: str | None = None) -> str | None:
    """Find the column of ``adata.obs`` that holds the field of view of each cell.

    Parameters
    ----------
    adata
        Spatial data.
    fov_key
        A column named by the user; it must exist. ``None`` searches :data:`FOV_CANDIDATES`.

    Returns
    -------
    The column name, or ``None`` when there is none (all cells are then one FOV).
    """
    if fov_key is not None:
        check_fov_key(adata, fov_key)
        return fov_key
    lower: dict[str, str] = {str(c).lower(): c for c in adata.obs.columns}
    for name in (*FOV_CANDIDATES, *(n.lower() for n in FOV_CANDIDATES)):
        column = name if name in adata.obs.columns else lower.get(name)
        if column is not None and _fov_problem(adata, column) is None:
            return column  # a usual name whose values look like fields of view
    return None


#: More distinct values than this (and than half the cells) make a column per-cell, not FOVs.
MAX_FOV_SHARE = 0.5
MIN_PER_CELL_VALUES = 50


def _column_values(col: pd.Series) -> tuple[int, bool, bool]:
    """``(distinct values, numeric (not bool), holds fractional numbers)`` of an obs column.

    What tells labels (clusters, fields of view) from per-cell measurements.
    """
    n_unique = int(col.nunique(dropna=True))
    numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
    fractional = numeric and bool(np.any(np.asarray(col.dropna(), dtype=np.float64) % 1 != 0))
    return n_unique, numeric, fractional


def _fov_problem(adata: ad.AnnData, fov_key: str) -> str | None:
    """Why ``fov_key`` cannot be a field-of-view column, or ``None`` when it can."""
    if fov_key not in adata.obs.columns:
        return (
            f"FOV column {fov_key!r} is not in the spatial obs; columns there are: "
            f"{_list_columns(adata.obs)}."
        )
    n_unique, _, fractional = _column_values(adata.obs[fov_key])
    if fractional or (n_unique > MIN_PER_CELL_VALUES and n_unique > MAX_FOV_SHARE * adata.n_obs):
        return (
            f"column {fov_key!r} has {n_unique:,} distinct values for {adata.n_obs:,} cells"
            + (" (fractional numbers)" if fractional else "")
            + "; it looks like a per-cell measurement, not fields of view: choose a column with "
            "one value per field of view, or none."
        )
    return None


def check_fov_key(adata: ad.AnnData, fov_key: str) -> None:
    """Refuse a field-of-view column that is missing or holds per-cell values (one line).

    A per-cell column as FOV key would split the cells into thousands of "fields of view"
    (a numeric column chosen by mistake froze napari for minutes); it is refused at once.
    """
    problem = _fov_problem(adata, fov_key)
    if problem is not None:
        raise InputError(problem)


def fov_labels(adata: ad.AnnData, fov_key: str | None) -> pd.Categorical:
    """FOV of each cell as a pandas Categorical (one category ``"0"`` when there is no column)."""
    if fov_key is None:
        return categorical_from_codes(np.zeros(adata.n_obs, dtype=np.int8), ["0"])
    check_fov_key(adata, fov_key)
    return _text_labels(adata.obs[fov_key])


def categorical_from_codes(codes: Any, categories: Any) -> pd.Categorical:
    """``pd.Categorical.from_codes`` of integer ``codes`` (any array) and category values."""
    codes_list: Any = np.asarray(codes)  # the stubs ask for a sequence; any int array works
    return pd.Categorical.from_codes(codes_list, categories=pd.Index(list(categories)))


def _text_labels(values: pd.Series) -> pd.Categorical:
    """An obs column as a Categorical of text, categories in natural order.

    A categorical column keeps its codes (no per-cell text is made: 10^6 cells in milliseconds);
    other columns, and categories that print alike or missing values, go through text.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        cats = [str(c) for c in values.cat.categories]
        codes = np.asarray(values.cat.codes)
        if len(set(cats)) == len(cats) and (codes.size == 0 or codes.min() >= 0):
            used = np.flatnonzero(np.bincount(codes, minlength=len(cats)))
            kept = [cats[i] for i in used]
            remap = np.full(len(cats), -1, dtype=np.int64)
            order = _natural_sort(kept)
            remap[used] = [order.index(c) for c in kept]
            return categorical_from_codes(remap[codes], order)
        cat = values.astype(str).astype("category").cat
        return pd.Categorical(values.astype(str), categories=_natural_sort(list(cat.categories)))
    strings = values.astype(str)
    return pd.Categorical(strings, categories=_natural_sort(list(pd.unique(strings))))


#: Column names tried, in order, when looking for the sample (section, slice) of each cell.
SAMPLE_CANDIDATES: tuple[str, ...] = (
    "sample",
    "sample_id",
    "section",
    "section_id",
    "slice",
    "slice_id",
    "library_id",
    "batch",
    "donor",
    "specimen",
    "replicate",
)
#: Candidates that name sections only when every FOV lies within one of their values.
WEAK_SAMPLE_NAMES: frozenset[str] = frozenset({"batch", "donor", "specimen", "replicate"})
#: Most samples laid out side by side (in one layer per role).
MAX_SAMPLES = 64


def _sample_problem(adata: ad.AnnData, sample_key: str, fov_key: str | None) -> str | None:
    """Why ``sample_key`` cannot name samples (sections), or ``None`` when it can."""
    if sample_key not in adata.obs.columns:
        return (
            f"sample column {sample_key!r} is not in the spatial obs; columns there are: "
            f"{_list_columns(adata.obs)}."
        )
    n_unique, _, fractional = _column_values(adata.obs[sample_key])
    if fractional or n_unique > MAX_SAMPLES:
        return (
            f"column {sample_key!r} has {n_unique:,} distinct values"
            + (" (fractional numbers)" if fractional else "")
            + f"; samples (sections) are at most {MAX_SAMPLES}, each shown as its own layers: "
            "choose a column with one value per section, or none."
        )
    return None


def find_sample_key(
    adata: ad.AnnData, fov_key: str | None = None, sample_key: str | None = None
) -> str | None:
    """Find the column of ``adata.obs`` that holds the sample (section, slice) of each cell.

    Parameters
    ----------
    adata
        Spatial data (or a result).
    fov_key
        The FOV column; a sample column holds whole FOVs (it may be the FOV column itself:
        each section is then one FOV, as when a data set has only a ``slice`` column).
    sample_key
        A column named by the user; it must exist and hold at most :data:`MAX_SAMPLES` values
        (:class:`InputError` otherwise). ``None`` searches :data:`SAMPLE_CANDIDATES` for a column
        with 2 to :data:`MAX_SAMPLES` values, each FOV within one of them.

    Returns
    -------
    The column name, or ``None`` (all cells are then one sample).
    """
    if sample_key is not None:
        problem = _sample_problem(adata, sample_key, fov_key)
        if problem is not None:
            raise InputError(problem)
        return sample_key
    lower: dict[str, str] = {str(c).lower(): c for c in adata.obs.columns}
    for name in SAMPLE_CANDIDATES:
        column = name if name in adata.obs.columns else lower.get(name)
        if column is None or _sample_problem(adata, column, fov_key) is not None:
            continue
        if adata.obs[column].nunique(dropna=True) < 2:
            continue
        if name in WEAK_SAMPLE_NAMES and fov_key is not None and fov_key in adata.obs.columns:
            per_fov = adata.obs.groupby(fov_key, observed=True)[column].nunique()
            if len(per_fov) and int(per_fov.max()) > 1:
                continue  # a batch or donor that splits FOVs is not a section
        return str(column)
    return None


def sample_labels(adata: ad.AnnData, sample_key: str | None) -> pd.Categorical:
    """Sample of each cell as a Categorical (one category ``""`` without a column)."""
    if sample_key is None:
        return categorical_from_codes(np.zeros(adata.n_obs, dtype=np.int8), [""])
    return _text_labels(adata.obs[sample_key])


def _natural_sort(values: Sequence[str]) -> list[str]:
    """Numbers by value first, then the rest with their digit runs compared as numbers
    (``s0_2`` before ``s0_10``; ``FOV 9`` before ``FOV 10``)."""

    def key(v: str) -> tuple[int, float, tuple[tuple[int, int, str], ...], str]:
        try:
            return (0, float(v), (), v)
        except ValueError:
            parts = tuple(
                (0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", v) if p
            )
            return (1, 0.0, parts, v)

    return sorted((str(v) for v in values), key=key)


def _list_columns(df: pd.DataFrame, limit: int = 20) -> str:
    cols = [str(c) for c in df.columns]
    if not cols:
        return "(none)"
    shown = ", ".join(cols[:limit])
    return shown + (f", ... ({len(cols)} in all)" if len(cols) > limit else "")


def _x_values(X: object) -> np.ndarray:
    """The stored values of ``X`` (the non-zeros of a sparse matrix, every entry of a dense one)."""
    if isinstance(X, sp.csr_matrix | sp.csc_matrix | sp.csr_array | sp.csc_array):
        return np.asarray(X.data)
    if is_sparse(X):
        # dok and lil hold no flat array of values (lil's data is lists, dok has none)
        return np.asarray(sp.coo_matrix(X).data)
    return np.asarray(X)


def describe_values(X: object) -> ValueKind:
    """Say whether a matrix holds raw counts, log-transformed or other non-integer values."""
    values = _x_values(X)
    if values.size == 0:
        return "raw counts"
    sample = values.ravel()
    if sample.size > 200_000:
        sample = sample[np.linspace(0, sample.size - 1, 200_000).astype(np.int64)]
    if float(np.min(sample)) < 0:
        return "scaled (negative values)"
    if np.all(np.abs(sample - np.round(sample)) < 1e-6):
        return "raw counts"
    if float(np.max(sample)) < 30.0:
        return "log-transformed"
    return "non-integer (normalised)"


def validate_adata(
    adata: ad.AnnData,
    role: str,
    *,
    require_spatial: bool = False,
) -> None:
    """Check an AnnData for the problems that would corrupt a mapping.

    Raises :class:`InputError` with a one-line message naming the problem and the fix for: empty
    data, duplicated cell or gene names, a non-numeric ``X``, NaN or infinite values, negative
    values (except in the reference: a scaled reference is mapped as given) and, when ``require_spatial``, missing or malformed ``obsm["spatial"]``.

    Parameters
    ----------
    adata
        Data to check; it is not modified.
    role
        ``"reference"`` or ``"spatial"``, used in the messages.
    require_spatial
        Whether ``obsm["spatial"]`` must hold 2D or 3D coordinates.
    """
    if not isinstance(adata, ad.AnnData):
        raise InputError(f"the {role} data must be an AnnData object, got {type(adata).__name__}.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(
            f"the {role} data is empty ({adata.n_obs} cells x {adata.n_vars} genes); "
            "give a file with at least one cell and one gene."
        )
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()[:3].tolist()
        raise InputError(
            f"the {role} data has duplicated cell names (e.g. {dup}); "
            "make them unique with adata.obs_names_make_unique()."
        )
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:3].tolist()
        raise InputError(
            f"the {role} data has duplicated gene names (e.g. {dup}); "
            "make them unique with adata.var_names_make_unique() or sum the duplicates."
        )
    lower = pd.Index(adata.var_names.str.lower())
    if not lower.is_unique:
        dup = adata.var_names[lower.duplicated(keep=False)][:4].tolist()
        raise InputError(
            f"the {role} data has gene names that differ only in case (e.g. {dup}); genes are "
            "matched case-insensitively, so rename or merge them."
        )
    if adata.isbacked:
        raise InputError(
            f"the {role} data is opened in backed mode (read_h5ad(..., backed='r')), which is not "
            "supported; read it into memory (adata = adata.to_memory())."
        )
    X = adata.X
    if X is None:
        raise InputError(f"the {role} data has no expression matrix X; put the values in adata.X.")
    if not (is_sparse(X) or isinstance(X, np.ndarray)):
        try:
            X = np.asarray(X)
        except Exception:
            raise InputError(
                f"the {role} X has unsupported type {type(adata.X).__name__}; "
                "use a numpy array or a scipy CSR matrix."
            ) from None
    values = _x_values(X)
    if values.dtype.kind not in "biuf":
        raise InputError(
            f"the {role} X has dtype {values.dtype}, not numbers; "
            "store expression values as float32 (adata.X = adata.X.astype('float32'))."
        )
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        n_bad = int(np.count_nonzero(~np.isfinite(values)))
        raise InputError(
            f"the {role} X has {n_bad} NaN or infinite values; "
            "replace them (e.g. with 0 for undetected) before mapping."
        )
    if values.size and float(np.max(values)) > MAX_VALUE:
        raise InputError(
            f"the {role} X has values up to {float(np.max(values)):.3g}, too large for float32 "
            f"arithmetic (limit {MAX_VALUE:.0e}); give raw counts or normalised values."
        )
    # a reference may be distributed scaled (z-scored per gene): the maps compare and impute its
    # values as given; a spatial assay's values are measurements and never negative
    if values.size and values.min() < 0 and role != "reference":
        n_neg = int(np.count_nonzero(values < 0))
        raise InputError(
            f"the {role} X has {n_neg} negative values; the mapping needs non-negative "
            "expression: give raw counts or normalised (not scaled/centred) values."
        )
    if require_spatial:
        validate_spatial_coordinates(adata, role)


def input_warnings(
    reference: ad.AnnData, spatial: ad.AnnData, cluster_key: str | None = None
) -> list[str]:
    """Problems that do not stop a mapping but make its result meaningless, one line each.

    * the spatial data is the reference itself (same cells and the same values of the shared
      genes): the training score is then near 1 and says nothing;
    * the cluster key is a per-cell measurement (numeric with fractional values, or nearly one
      value per cell) rather than cluster labels.

    The CLI prints these as warnings and the Map widget shows them before the run.
    """
    found: list[str] = []
    if _same_cells(reference, spatial):
        found.append(
            "the spatial data holds the reference's own cells and values; the mapping will score "
            "near 1 and mean nothing: give the spatial assay's file as the spatial data."
        )
    if cluster_key is not None and cluster_key in reference.obs.columns:
        n_unique, numeric, fractional = _column_values(reference.obs[cluster_key])
        # text labels, one per row, are a cluster-level reference (one profile per class)
        per_cell = numeric and n_unique > 20 and n_unique > 0.5 * reference.n_obs
        if fractional or per_cell or (numeric and n_unique > 200):
            found.append(
                f"cluster key {cluster_key!r} has {n_unique:,} distinct values for "
                f"{reference.n_obs:,} reference cells"
                + (" (numeric)" if numeric else "")
                + "; it looks like a per-cell measurement, not clusters: give a column of "
                "cell-type labels."
            )
    return found


def _same_cells(reference: ad.AnnData, spatial: ad.AnnData) -> bool:
    """Whether ``spatial`` holds the reference's own cells with the same values (a mix-up)."""
    if reference is spatial:
        return True
    shared_cells = spatial.obs_names.intersection(reference.obs_names)
    if len(shared_cells) < max(1, 0.5 * spatial.n_obs):
        return False
    ref_genes = {str(g).lower(): g for g in reference.var_names}
    pairs = [
        (ref_genes[str(g).lower()], g) for g in spatial.var_names if str(g).lower() in ref_genes
    ]
    if not pairs:
        return False
    cells = shared_cells[:500]
    ref_rows = reference[cells, [a for a, _ in pairs]].X
    sp_rows = spatial[cells, [b for _, b in pairs]].X
    a = ref_rows.toarray() if is_sparse(ref_rows) else np.asarray(ref_rows)
    b = sp_rows.toarray() if is_sparse(sp_rows) else np.asarray(sp_rows)
    return bool(np.allclose(a.astype(np.float64), b.astype(np.float64)))


def validate_spatial_coordinates(adata: ad.AnnData, role: str = "spatial") -> np.ndarray:
    """Check ``obsm["spatial"]`` and return it as a float64 ``(n_cells, 2 or 3)`` array."""
    if "spatial" not in adata.obsm:
        hint = ""
        xy = [c for c in adata.obs.columns if str(c).lower() in ("x", "y", "z")]
        if xy:
            hint = f" (obs has {xy}: adata.obsm['spatial'] = adata.obs[{xy}].to_numpy())"
        raise InputError(
            f"the {role} data has no coordinates in obsm['spatial']; add an (n_cells, 2) or "
            f"(n_cells, 3) array of cell positions{hint}."
        )
    coords = adata.obsm["spatial"]
    if isinstance(coords, pd.DataFrame):
        coords = coords.to_numpy()
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[0] != adata.n_obs or coords.shape[1] not in (2, 3):
        raise InputError(
            f"the {role} obsm['spatial'] has shape {coords.shape}; it must be (n_cells, 2) or "
            f"(n_cells, 3) with n_cells = {adata.n_obs}."
        )
    if coords.dtype.kind not in "biuf":
        raise InputError(
            f"the {role} obsm['spatial'] has dtype {coords.dtype}; store numeric coordinates."
        )
    if not np.all(np.isfinite(coords)):
        raise InputError(
            f"the {role} obsm['spatial'] has NaN or infinite coordinates; drop or fix those cells."
        )
    return coords.astype(np.float64, copy=False)


def check_output_folder(path: str | os.PathLike[str], hint: str = "choose another") -> Path:
    """The folder an output ``path`` goes to; refused when it is missing or not writable."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output folder {str(parent)!r} does not exist; create it first.")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder {str(parent)!r} is not writable; {hint}.")
    return parent


def _current_umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(folder: Path, name: str) -> list[Path]:
    """Remove temporary files of earlier runs for ``name`` whose process is gone (killed runs)."""
    removed = []
    for tmp in folder.glob(f".{glob.escape(name)}.*.tmp"):
        parts = tmp.name[len(name) + 2 : -len(".tmp")].split(".")
        pid = int(parts[0]) if parts and parts[0].isdigit() else None
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


class _SignalGuard:
    """While an output is written, SIGINT and SIGTERM cancel the write even if a library swallows them.

    The handler records the signal and raises (``KeyboardInterrupt`` or ``SystemExit(128 + n)``);
    a library that catches that exception (h5py reports "Exception ignored" and goes on) cannot hide
    it, since :meth:`check` raises it again before the rename; the "Exception ignored" report such a
    library makes of it is not printed (it is raised again, once). With ``deferring`` set signals
    are only recorded and raised at :meth:`check` (never inside a library's event loop), or after
    the rename (:class:`CommittedInterrupt`): the output is then complete.
    Inside a handler that only records (a run's signal flag,
    :class:`~napari_spatial_impute.core.stopping.SignalStop`) the guard defers from the start and
    passes each signal on to it: the run stops through its cancel flag (between chunk writes), never
    by an exception raised inside the writing library.
    Only the main thread can own signal handlers; elsewhere the guard does nothing.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferring = False
        self._old: dict[int, object] = {}
        self._forward: dict[int, Any] = {}
        self._hook = sys.unraisablehook

    def _handler(self, signum: int, frame: object) -> None:
        self.received = signum
        outer = self._forward.get(signum)
        if outer is not None:
            outer(signum, frame)  # records only: the run reads it as its cancel flag
        if not self.deferring:
            self._raise(signum)

    @staticmethod
    def _raise(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def __enter__(self) -> _SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                num = getattr(signal, name, None)
                if num is not None:
                    self._old[num] = signal.signal(num, self._handler)
                    if getattr(self._old[num], "records_signals", False):
                        self._forward[num] = self._old[num]
                        self.deferring = True
            self._hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def _unraisable(self, info: Any) -> None:
        """Drop a library's report of the interrupt this guard raised (it is raised again)."""
        if self.received is not None and isinstance(info.exc_value, KeyboardInterrupt | SystemExit):
            return
        self._hook(info)

    def check(self) -> None:
        """Raise the interrupt a library swallowed during the write."""
        if self.received is not None:
            self._raise(self.received)

    def __exit__(self, *exc: object) -> None:
        for num, old in self._old.items():
            signal.signal(num, old)  # type: ignore[arg-type]
        if self._old:
            sys.unraisablehook = self._hook


@contextmanager
def atomic_output(path: str | os.PathLike[str], folder: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    A failure, Ctrl-C or SIGTERM removes the temporary file and leaves an earlier ``path`` as it
    was, even when the writing library swallows the interrupt. The temporary file's name holds the
    process id (``.<name>.<pid>.<random>.tmp``); those of earlier runs that were killed (SIGKILL,
    power loss) are removed the next time the same output is written. The output gets the
    permissions of a newly created file under the user's umask.

    ``folder=True`` yields a temporary folder instead (a ``.zarr`` output); an existing ``path``
    is then refused, never replaced.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"output folder {str(parent)!r} does not exist; create it first.")
    if target.is_dir() and not folder:
        raise InputError(f"output {str(target)!r} is a folder; give a file name.")
    if folder and target.exists():
        raise InputError(f"output {str(target)!r} exists; choose another name or remove it.")
    _remove_stale_temps(parent, target.name)
    with _SignalGuard() as guard:
        prefix, suffix = f".{target.name}.{os.getpid()}.", ".tmp"
        if folder:
            tmp = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent)
        else:
            fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
            os.close(fd)
        try:
            yield tmp
            guard.check()
            os.chmod(tmp, (0o777 if folder else 0o666) & ~_current_umask())
            guard.deferring = True
            os.replace(tmp, target)
        except BaseException:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.exists(tmp):
                os.unlink(tmp)
            raise
    if guard.deferring and guard.received is not None:
        raise CommittedInterrupt(
            f"interrupted after {str(target)!r} was written", signum=guard.received
        )


def write_h5ad_atomic(adata: ad.AnnData, path: str | os.PathLike[str]) -> Path:
    """Write ``adata`` to ``path`` through a temporary file and a rename.

    A failure never leaves a half-written file at ``path``.

    Returns
    -------
    The path written.
    """
    with atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(tmp)
    return Path(path)
