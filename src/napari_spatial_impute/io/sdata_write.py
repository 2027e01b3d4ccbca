"""Writing a table into a SpatialData store without risking the user's store.

:func:`check_table_target` refuses, before any work, what cannot or must not be written: a
read-only store, a name taken by another element, a table that exists (unless ``overwrite``), a
table that exists and was not written by this plugin (never replaced), an ``out`` copy that
exists. :func:`write_table` then writes the table with spatialdata's own writer into a staging
store beside the target, renames the finished table folder into ``tables/`` (one atomic rename),
and refreshes the store's consolidated metadata. Every other file of the store is left as it was.
With ``out`` the store is first copied to a temporary folder that is renamed to ``out`` at the end.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad

from napari_spatial_impute._errors import CommittedInterrupt, InputError
from napari_spatial_impute.io.files import _SignalGuard, check_output_folder
from napari_spatial_impute.io.schema import UNS_KEY
from napari_spatial_impute.io.sdata import ELEMENT_GROUPS, is_store

#: spatialdata's rule for element names.
_NAME = re.compile(r"^(?!__)[A-Za-z0-9_.-]+$")
#: Called with the staged table's zarr group before the rename (to fill arrays chunk by chunk).
Filler = Callable[[Any], None]


def _table_written_by_us(table_dir: Path) -> bool:
    return (table_dir / "uns" / UNS_KEY).is_dir()


def check_table_target(
    store: str | os.PathLike[str],
    name: str,
    *,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Refuse a write that would fail or harm the store; return the store that will be written."""
    src = Path(store)
    if not is_store(src):
        raise InputError(f"{str(src)!r} is not a SpatialData store; results cannot be added to it.")
    if not (src / "zarr.json").is_file():
        raise InputError(
            f"store {str(src)!r} is in zarr format 2 (an older spatialdata); re-save it with "
            "spatialdata 0.4+ (sd.read_zarr(old).write(new)) or write the result as .h5ad."
        )
    if name in (".", "..") or not _NAME.match(name):
        raise InputError(
            f"table name {name!r} is not a valid element name; use letters, digits, '_', '-', '.'."
        )
    for group in ELEMENT_GROUPS:
        if group != "tables" and (src / group / name).exists():
            raise InputError(
                f"store already has {'an' if group[0] in 'aeiou' else 'a'} {group[:-1]} element "
                f"named {name!r}; choose another "
                "table name (--result-table)."
            )
    existing = src / "tables" / name
    if existing.exists():
        if not _table_written_by_us(existing):
            raise InputError(
                f"store already has a table {name!r} that napari-spatial-impute did not write; it "
                "is never replaced: choose another table name (--result-table)."
            )
        if not overwrite:
            raise InputError(
                f"store already has a results table {name!r}; replace it (Replace, --overwrite) "
                "or choose another table name (--result-table)."
            )
    if out is not None:
        dst = Path(out)
        if dst.suffix.lower() != ".zarr":
            raise InputError(f"output store {str(dst)!r} must end in .zarr (or write .h5ad).")
        if dst.exists():
            raise InputError(f"output {str(dst)!r} exists; choose a new .zarr path for the copy.")
        check_output_folder(dst)
        if dst.resolve().is_relative_to(src.resolve()):
            raise InputError(f"output {str(dst)!r} lies inside the input store; choose another.")
        return dst
    for folder in (src, src / "tables"):
        if folder.exists() and not os.access(folder, os.W_OK):
            raise InputError(
                f"store {str(src)!r} is not writable (read-only path); write the results to a copy "
                "(--out new.zarr) or as .h5ad."
            )
    _check_staging_folder(src)
    return src


def _check_staging_folder(store: Path) -> None:
    """The table is staged beside the store and renamed in: that folder must be writable and on
    the store's file system (a rename cannot cross file systems)."""
    parent = store.resolve().parent
    tables = store / "tables" if (store / "tables").is_dir() else store
    if not os.access(parent, os.W_OK):
        raise InputError(
            f"the folder holding the store, {str(parent)!r}, is not writable (the results table is "
            "staged beside the store); write to a copy (--out new.zarr) or as .h5ad."
        )
    if os.stat(parent).st_dev != os.stat(tables.resolve()).st_dev:
        raise InputError(
            f"the store's tables are on another file system than {str(parent)!r} (a link or a "
            "mount), where the results table would be staged; write to a copy (--out new.zarr)."
        )


def _pid_of(path: Path) -> int | None:
    parts = path.name.split(".")
    for part in reversed(parts):
        if part.isdigit():
            return int(part)
    return None


def _recover(target: Path, name: str) -> None:
    """Clean up after a write that was killed outright (SIGKILL, power loss): an earlier table
    moved aside and not yet replaced is put back; staging folders and copies are removed."""
    from napari_spatial_impute.io.files import _pid_alive

    parent = target.resolve().parent
    for path in sorted(parent.glob(f".{glob.escape(target.name)}.*")):
        pid = _pid_of(path)
        if pid is None or (pid != os.getpid() and _pid_alive(pid)):
            continue  # another run, still going
        if path.name.startswith(f".{target.name}.{name}.") and path.name.endswith(".old"):
            dest = target / "tables" / name
            if not dest.exists():
                os.rename(path, dest)  # the earlier results table, back where it was
                continue
        if path.suffix in (".old", ".stage", ".copy"):
            _remove(path)
    if (target / "zarr.json").is_file():
        _consolidate(target)  # a run killed between the rename and the metadata refresh


def _stage_table(table: ad.AnnData, name: str, stage: Path, fill: Filler | None) -> Path:
    """Write ``table`` as the only element of a new store at ``stage``; return its folder."""
    import spatialdata as sd
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd.SpatialData(tables={name: table}).write(stage)
    folder = stage / "tables" / name
    if fill is not None:
        fill(zarr.open_group(str(folder), mode="r+"))
    return folder


def _ensure_tables_group(target: Path) -> None:
    if not (target / "tables" / "zarr.json").is_file():
        import zarr

        zarr.open_group(str(target), mode="r+").require_group("tables")


def _consolidate(target: Path) -> None:
    """Refresh the consolidated metadata in the root ``zarr.json`` (when the store has it)."""
    root = target / "zarr.json"
    before = root.read_bytes()
    if "consolidated_metadata" not in json.loads(before):
        return
    import zarr

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(target))
    except BaseException:
        root.write_bytes(before)
        raise


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def write_table(
    table: ad.AnnData,
    store: str | os.PathLike[str],
    name: str,
    *,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    fill: Filler | None = None,
) -> Path:
    """Add ``table`` (annotated with spatialdata's ``TableModel``) to ``store`` as ``name``.

    Parameters
    ----------
    table
        The table; its ``uns['spatialdata_attrs']`` names the region it annotates.
    store
        The SpatialData store the table belongs to.
    name
        Table element name.
    out
        Write into a copy of the store at this new ``.zarr`` path instead (the input is read only).
    overwrite
        Replace a results table of that name written earlier by this plugin.
    fill
        Called with the staged table's zarr group before it is renamed into place.

    Returns
    -------
    The store written (``store`` or ``out``).
    """
    src = Path(store)
    _recover(src if out is None else Path(out), name)
    target = check_table_target(src, name, out=out, overwrite=overwrite)
    tag = f"{os.getpid()}"
    staging = target.parent / f".{target.name}.{name}.{tag}.stage"
    copy = target.parent / f".{target.name}.{tag}.copy" if out is not None else None
    old = staging.with_suffix(".old")
    work, dest, placed = target, target / "tables" / name, False
    with _SignalGuard() as guard:
        try:
            if copy is not None:
                shutil.copytree(src, copy)
                work = copy
            folder = _stage_table(table, name, staging, fill)
            guard.check()
            _ensure_tables_group(work)
            guard.deferring = True
            dest = work / "tables" / name
            if dest.exists():
                os.rename(dest, old)
            os.rename(folder, dest)
            placed = True
            _consolidate(work)
            if copy is not None:
                os.rename(copy, target)
        except BaseException:
            if placed:
                _remove(dest)  # nothing written
            if old.exists():
                os.rename(old, dest)  # the earlier table back in place
            if copy is not None:
                _remove(copy)
            raise
        finally:
            _remove(staging)
            _remove(old)
    if guard.deferring and guard.received is not None:
        raise CommittedInterrupt(f"interrupted after table {name!r} was written to {str(target)!r}")
    return target
