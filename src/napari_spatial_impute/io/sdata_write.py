"""Writing a table into a SpatialData store without risking the user's store.

:func:`check_table_target` refuses, before any work, what cannot or must not be written: a
read-only store, a name taken by another element, an empty or too long name, a table that exists
(unless ``overwrite``), a table that exists and was not written by this plugin (never replaced),
an ``out`` copy that exists (also as a broken link). :func:`write_table` then writes the table as a
journal (:mod:`~napari_spatial_impute.io.store_journal`): under the store's lock, staged with
spatialdata's own writer beside the target, renamed into ``tables/`` (one rename), the consolidated
metadata updated with that table's entries only. Every other file of the store is left as it was,
and a write that dies at any moment is rolled back or finished by the next open. With ``out`` the
store is first copied to a temporary folder that is renamed to ``out`` at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad

from napari_spatial_impute._errors import CommittedInterrupt, InputError
from napari_spatial_impute.io import store_journal
from napari_spatial_impute.io.files import _SignalGuard, check_output_folder
from napari_spatial_impute.io.schema import UNS_KEY
from napari_spatial_impute.io.sdata import ELEMENT_GROUPS, is_store
from napari_spatial_impute.io.store_journal import (
    Journal,
    copy_store,
    is_consolidated,
    merged_root,
    recover,
    store_lock,
    without_table,
    write_atomic,
)

#: spatialdata's rule for element names.
_NAME = re.compile(r"^(?!__)[A-Za-z0-9_.-]+$")
#: Called with the staged table's zarr group before the rename (to fill arrays chunk by chunk) and
#: a function to call between chunks (it raises the Ctrl-C or SIGTERM received meanwhile).
Filler = Callable[[Any, Callable[[], None]], None]


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
    if not name:
        raise InputError(
            "table name is empty; give a name (--result-table NAME) or leave the option out for "
            "the default."
        )
    limit = _name_max(src)
    if len(os.fsencode(name)) > limit:
        raise InputError(
            f"table name {name[:20] + '...'!r} is {len(name)} characters long; the file system "
            f"allows at most {limit}: choose a shorter table name (--result-table)."
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
        if out is None and not os.access(existing, os.W_OK):
            raise InputError(
                f"results table {name!r} of {str(src)!r} is read-only, so it cannot be replaced; "
                "write to a copy (--out new.zarr) or under another name (--result-table)."
            )
    if out is not None:
        dst = Path(out)
        if dst.suffix.lower() != ".zarr":
            raise InputError(f"output store {str(dst)!r} must end in .zarr (or write .h5ad).")
        if os.path.lexists(dst):
            what = "" if dst.exists() else " (a link to a missing path or a link loop)"
            raise InputError(
                f"output {str(dst)!r} exists{what}; choose a new .zarr path for the copy."
            )
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
    devices = {os.stat(p).st_dev for p in (parent, store.resolve(), tables.resolve())}
    if len(devices) > 1:
        raise InputError(
            f"the store's tables are on another file system than {str(parent)!r} (a link or a "
            "mount), where the results table would be staged; write to a copy (--out new.zarr)."
        )


def column_char_ok(c: str) -> bool:
    """spatialdata's rule for a character of a table's column name (``str.isalnum``: letters and
    digits of any script, and ``_ - .``)."""
    return c.isalnum() or c in "_-."


def check_cluster_column(cluster_key: str | None) -> None:
    """Refuse, before the mapping, a cluster key whose result columns (``<key>_predicted``) a
    store's table cannot hold (spatialdata's rule for column names)."""
    column = f"{cluster_key}_predicted"
    if cluster_key is None or all(column_char_ok(c) for c in column):
        return
    raise InputError(
        f"cluster key {cluster_key!r} would name the result's column {column!r}, "
        "which a SpatialData table cannot hold (letters, digits, '_', '-', '.'); rename that "
        "reference column (e.g. to cell_type) or write the result as .h5ad (--out result.h5ad)."
    )


def _name_max(store: Path) -> int:
    """The longest file name the store's file system takes (255 where it does not say)."""
    try:
        return int(os.pathconf(store, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _stage_table(
    table: ad.AnnData, name: str, stage: Path, fill: Filler | None, check: Callable[[], None]
) -> Path:
    """Write ``table`` as the only element of a new store at ``stage``; return its folder."""
    import spatialdata as sd
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd.SpatialData(tables={name: table}).write(stage)
        folder = stage / "tables" / name
        if fill is not None:
            fill(zarr.open_group(str(folder), mode="r+", use_consolidated=False), check)
            zarr.consolidate_metadata(str(stage))  # the staging store is ours: its entries
    return folder


def _place(work: Path, name: str, staged: Path, journal: Journal) -> None:
    """Rename the staged table into ``work/tables/name`` (see the module docs of
    :mod:`~napari_spatial_impute.io.store_journal`); the store reads at every step."""
    root = work / "zarr.json"
    before = root.read_bytes()
    consolidated = is_consolidated(before)
    dest = work / "tables" / name
    made = not (work / "tables" / "zarr.json").is_file()
    st = os.lstat(staged)
    journal.save(
        state="placing",
        stage_ino=[st.st_dev, st.st_ino],
        root_before=before.decode() if consolidated else None,
        made_tables=made,
    )
    meta_tmp = journal.at(journal.meta_tmp)
    store_journal.fault_point("placing")
    if consolidated and os.path.lexists(dest):
        write_atomic(root, without_table(before, name), meta_tmp)
        store_journal.fault_point("unlisted")
    if made:
        (work / "tables").mkdir(exist_ok=True)
        shutil.copyfile(staged.parent / "zarr.json", work / "tables" / "zarr.json")
    if os.path.lexists(dest):
        os.rename(dest, journal.at(journal.old))
        store_journal.fault_point("moved aside")
    os.rename(staged, dest)
    store_journal.fault_point("renamed in")
    if consolidated:
        stage_root = (staged.parent.parent / "zarr.json").read_bytes()
        write_atomic(root, merged_root(before, stage_root, name), meta_tmp)
        store_journal.fault_point("listed")


def _make_writable(store: Path) -> None:
    """A copy of a read-only store: its folders writable by the user (the copy is the user's
    new store; a table in it can be replaced and a cancelled copy removed)."""
    for folder, _dirs, _files in os.walk(store):
        path = Path(folder)
        if not path.is_symlink():
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR | stat.S_IXUSR)


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

    Raises
    ------
    InputError
        What :func:`check_table_target` refuses, checked again under the store's lock (a second
        writer of the same name is refused once the first has written).
    CommittedInterrupt
        Ctrl-C or SIGTERM arrived after the table was placed: it is complete.
    """
    src = Path(store)
    if not src.is_dir():
        check_table_target(src, name, out=out, overwrite=overwrite)  # not a store: says so
    with store_lock(src):
        if os.access(src.resolve().parent, os.W_OK):
            recover(src)
        if out is not None:  # another store's write may be making this copy: its lock is not ours
            recover(Path(out), only_dead=True)
        target = check_table_target(src, name, out=out, overwrite=overwrite)
        with _SignalGuard() as guard:
            journal = Journal.begin(target, name, copy=out is not None)
            try:
                work = target
                if journal.copy is not None:  # a plain file copy: Ctrl-C stops it at once
                    work = journal.at(journal.copy)
                    copy_store(src, work)
                    _make_writable(work)
                guard.deferring = True  # raised at guard.check(), never inside zarr's event loop
                guard.check()
                store_journal.fault_point("copied")
                staged = _stage_table(table, name, journal.at(journal.stage), fill, guard.check)
                guard.check()
                store_journal.fault_point("staged")
                _place(work, name, staged, journal)
                if out is not None:
                    _rename_copy(work, target)
                journal.save(state="committed")
                store_journal.fault_point("committed")
            except BaseException:
                journal.roll_back()
                raise
            journal.finish()
    if guard.received is not None:
        raise CommittedInterrupt(
            f"interrupted after table {name!r} was written to {str(target)!r}",
            signum=guard.received,
        )
    return target


def _rename_copy(copy: Path, target: Path) -> None:
    try:
        os.rename(copy, target)
    except OSError:
        raise InputError(
            f"output {str(target)!r} appeared while the copy was written; choose a new .zarr path."
        ) from None
