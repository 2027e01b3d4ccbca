"""Checks of a SpatialData store read as spatial input (used by :mod:`napari_spatial_impute.io.sdata`).

Each problem is one line naming it and the fix, raised (:class:`InputError`) or warned
(:class:`InputWarning`) by :func:`~napari_spatial_impute.io.sdata.read_spatial` before any mapping
work:

* a damaged store (a chunk or metadata file of the table or of a labels element that cannot be
  decoded): :func:`damaged` names the element and the file;
* a table that would not write back (:func:`check_table_names`, :func:`check_cells`,
  :func:`check_writable`): names spatialdata refuses, instance ids repeated within a region,
  empty instance ids, repeated cell names; what passes is what
  :func:`~napari_spatial_impute.core.export.store_table` (spatialdata's ``TableModel.parse``)
  accepts;
* a region name that is an element of two kinds (:func:`check_region_names`);
* cells left out because their region is not placed in the chosen coordinate system or is not
  one the table annotates (:func:`left_out`): a warning naming how many and why, an error when
  none is left.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._errors import InputError, InputWarning, first_line

#: Metadata files of a zarr node (format 3, format 2).
_META = ("zarr.json", ".zarray", ".zgroup")
#: anndata's note on a read error: the key that failed and its parent group.
_NOTE = re.compile(r"reading key '([^']+)' of .* from (\S*)")
#: Element groups a region (cells) may name; spatialdata wants names unique across them.
_KINDS = ("labels", "shapes", "points", "images")
#: The fix of a damaged store.
FIX_DAMAGED = "restore the store from a backup or write it again from the source data"


def _some(values: Sequence[Any], k: int = 3) -> str:
    """``a, b, c, ...``: the first ``k`` values, and dots when there are more."""
    shown = ", ".join(str(v) for v in values[:k])
    return shown + (", ..." if len(values) > k else "")


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


# --------------------------------------------------------------------------- damaged stores
def find_damage(root: Path, node: str) -> tuple[str, str] | None:
    """The first file of zarr node ``node`` (a path inside the store ``root``) that cannot be read:
    ``(its path relative to root, the error's first line)``, or ``None`` when all can be.

    Groups are walked folder by folder (a group whose child's metadata is garbage cannot list its
    children), arrays read one chunk (or shard) at a time.
    """
    import zarr

    path = root / node
    meta = next((path / m for m in _META if (path / m).is_file()), None)
    if meta is None:
        return None
    try:
        obj = zarr.open(str(path), mode="r")
    except Exception as exc:  # garbage metadata: JSONDecodeError, ValueError, ...
        return meta.relative_to(root).as_posix(), first_line(exc)
    if isinstance(obj, zarr.Array):
        return _bad_chunk(obj, f"{node}/")
    for child in sorted(p.name for p in path.iterdir() if p.is_dir()):
        found = find_damage(root, f"{node}/{child}")
        if found is not None:
            return found
    return None


def _bad_chunk(arr: Any, prefix: str) -> tuple[str, str] | None:
    step = arr.shards or arr.chunks
    grid = [-(-s // c) for s, c in zip(arr.shape, step, strict=True)]
    for coords in np.ndindex(*grid):
        window = tuple(
            slice(i * c, min((i + 1) * c, s))
            for i, c, s in zip(coords, step, arr.shape, strict=True)
        )
        try:
            arr[window]
        except Exception as exc:  # numcodecs/zarr raise RuntimeError, ValueError, ...
            return prefix + arr.metadata.encode_chunk_key(coords), first_line(exc)
    return None


def _hinted_node(exc: BaseException) -> str | None:
    """The node anndata's note on ``exc`` names (``X``, ``obs/cell_ID``), if any."""
    for note in getattr(exc, "__notes__", ()):
        m = _NOTE.search(str(note))
        if m:
            return "/".join(p for p in (*m.group(2).split("/"), m.group(1)) if p)
    return None


def damaged(store: Path | None, what: str, node: str, exc: BaseException) -> InputError | None:
    """The error for ``what`` (``"table 'table'"``) that raised ``exc`` while it was read, when a
    file of its node (``tables/table``) cannot be decoded; ``None`` when none is found there."""
    if store is None or not (store / node).is_dir():
        return None
    hint = _hinted_node(exc)
    found = None
    if hint is not None and (store / node / hint).is_dir():
        found = find_damage(store, f"{node}/{hint}")
    found = found or find_damage(store, node)
    if found is None:
        return None
    file, error = found
    return InputError(
        f"store {str(store)!r} is damaged: {what} cannot be read ({file}: {error}); {FIX_DAMAGED}."
    )


def unreadable(store: Path | None, what: str, node: str, exc: BaseException) -> InputError:
    """One line for ``what`` that could not be read: the damaged file when one is found, else
    the error and both likely fixes."""
    found = damaged(store, what, node, exc)
    if found is not None:
        return found
    return InputError(
        f"{what} of store {str(store)!r} cannot be read ({first_line(exc)}); the store may be "
        f"damaged or written by a newer version: {FIX_DAMAGED} with spatialdata."
    )


# --------------------------------------------------------------------------- the cell table
def check_table_names(table: ad.AnnData, name: str) -> None:
    """Refuse the names spatialdata refuses (it will not read or write such a table)."""
    from spatialdata._core.validation import ValidationError, validate_table_attr_keys

    try:
        validate_table_attr_keys(table)
    except ValidationError as exc:
        bad = [f"{'/'.join(map(str, e.location))} ({e.message.rstrip('.')})" for e in exc.errors]
        raise InputError(
            f"table {name!r} has names spatialdata does not accept: {_some(bad, 2)}; rename them "
            "(spatialdata.utils.sanitize_table(table)) and write the table again."
        ) from None


def check_region_names(store: Path | None, regions: Sequence[str]) -> None:
    """Refuse a region whose name is an element of two kinds in the store (e.g. labels and
    shapes ``cells``): spatialdata reads one of them and leaves the other out without a word."""
    if store is None:
        return
    for region in regions:
        kinds = [k for k in _KINDS if (store / k / region).is_dir()]
        if len(kinds) > 1:
            raise InputError(
                f"store {str(store)!r} has {' and '.join(kinds)} elements both named {region!r}, "
                "which the table annotates; element names must be unique: rename one of them "
                "(spatialdata reads only one)."
            )


def check_cells(
    obs: pd.DataFrame, table: str, region_key: str, instance_key: str, rows: np.ndarray
) -> None:
    """Refuse ``rows`` of a cell table that would not write back: empty instance ids, an instance
    id repeated within its region, a cell name (``obs_names``) repeated."""
    part = obs.iloc[rows]
    ids = part[instance_key]
    empty = ids.isna().to_numpy()
    if empty.any():
        raise InputError(
            f"table {table!r} has {_rows(int(empty.sum()))} without an instance id ({instance_key} "
            f"empty, e.g. row {str(part.index[empty][0])!r}); give each cell its id in the element "
            "its region names and write the table again."
        )
    region_codes, region_names = pd.factorize(part[region_key].astype(str))
    id_codes, id_values = pd.factorize(ids)
    keys = pd.DataFrame({"r": region_codes, "i": id_codes})
    repeated = keys.duplicated().to_numpy()
    if repeated.any():
        first = np.flatnonzero(repeated)[0]
        rc, ic = region_codes[first], id_codes[first]
        r, i = region_names[rc], id_values[ic]
        times = int(((region_codes == rc) & (id_codes == ic)).sum())
        raise InputError(
            f"table {table!r} repeats instance ids within a region ({_rows(int(repeated.sum()))} "
            f"repeated; e.g. {instance_key} {i} of {r!r} is on {times} rows); each row must be its "
            "own cell: drop or renumber the repeated rows and write the table again."
        )
    names = part.index
    if not names.is_unique:
        dup = names[names.duplicated()]
        raise InputError(
            f"table {table!r} repeats cell names (obs_names; {_rows(len(dup))} repeated, e.g. "
            f"{str(dup[0])!r}); give each row its own name (table.obs_names_make_unique()) and "
            "write the table again."
        )


def whole_ids(obs: pd.DataFrame, instance_key: str) -> None:
    """Instance ids stored as floats that are whole numbers become integers (spatialdata takes
    integer or text ids only; labels ids are integers)."""
    ids = obs[instance_key]
    if pd.api.types.is_float_dtype(ids.dtype):
        values = ids.to_numpy()
        if np.isfinite(values).all() and np.array_equal(values, np.round(values)):
            obs[instance_key] = values.astype(np.int64)


def check_writable(
    obs: pd.DataFrame, table: str, regions: list[str], region_key: str, instance_key: str
) -> None:
    """Refuse cells whose region and instance columns spatialdata would not take when the
    results table is written back (the check ``store_table`` makes, on these columns)."""
    from spatialdata.models import TableModel

    keys = obs[[region_key, instance_key]].copy()
    keys[region_key] = pd.Categorical(keys[region_key].astype(str))
    skeleton = ad.AnnData(obs=keys)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            TableModel.parse(
                skeleton,
                region=regions[0] if len(regions) == 1 else regions,
                region_key=region_key,
                instance_key=instance_key,
            )
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"table {table!r} would not write back to the store ({first_line(exc)}); annotate it "
            "again with spatialdata's TableModel.parse and write it again."
        ) from None


# --------------------------------------------------------------------------- cells left out
def left_out(
    table: str,
    cs: str,
    regions: np.ndarray,
    systems: dict[str, tuple[str, ...]],
    store_systems: Sequence[str],
) -> np.ndarray:
    """The rows whose cells can be placed in ``cs``; a warning for each cause of the others
    being left out, or an error when none is left.

    ``regions`` is each row's region; ``systems`` the coordinate systems of each region the table
    annotates (``()`` for an element not in the store: its cells are placed by the table's own
    coordinates).
    """
    total = len(regions)
    counts = pd.Series(regions).value_counts(sort=False)  # rows per region, in one pass
    present = [r for r in systems if r in counts.index]
    away = [r for r in present if systems[r] and cs not in systems[r]]
    foreign = [r for r in counts.index if r not in systems]
    messages = []
    if away:
        n = int(counts[away].sum())
        placed = [r for r in present if systems[r]]
        every = [c for c in store_systems if all(c in systems[r] for r in placed)]
        have = sorted({c for r in away for c in systems[r]})
        if every:
            fix = f"to map every cell choose {every[0]!r} (--coordinate-system {every[0]})"
        elif len(have) == 1:
            fix = f"they are in {have[0]!r}: map them with --coordinate-system {have[0]}"
        else:
            fix = f"they are in {_some(have)}: choose one with --coordinate-system"
        plural = len(away) > 1
        messages.append(
            f"{n} of the {total} cells of table {table!r} {'are' if n > 1 else 'is'} left out: "
            f"{'their regions' if plural else 'its region' if n == 1 else 'their region'} "
            f"({_some(away)}) {'are' if plural else 'is'} not placed in coordinate system "
            f"{cs!r}; {fix} (the store has {', '.join(store_systems)})."
        )
    if foreign:
        n = int(counts[foreign].sum())
        messages.append(
            f"{n} of the {total} cells of table {table!r} {'are' if n > 1 else 'is'} left out: "
            f"{table!r} does not annotate {'their regions' if len(foreign) > 1 else 'the region'} "
            f"({_some(foreign)}; its uns['spatialdata_attrs']['region'] lists "
            f"{_some(list(systems))}); annotate the table again with TableModel.parse."
        )
    kept = ~np.isin(regions, away + foreign) if messages else np.ones(total, dtype=bool)
    if total and not kept.any():
        raise InputError("no cell to map: " + " ".join(messages))
    for message in messages:
        warnings.warn(message, InputWarning, stacklevel=3)
    return kept
