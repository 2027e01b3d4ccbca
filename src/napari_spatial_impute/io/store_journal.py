"""A write into a SpatialData store as a journal: whatever moment the process dies, the store stays
readable and the next open puts it back as it was, or finishes the write.

How a results table reaches ``tables/<name>`` (see ``docs/store-safety.md``):

1. **lock**: an exclusive ``flock`` on the store's folder (no file is made) for the whole write, so
   two writers into one store run one after the other and the second sees the first's table;
2. **journal**: ``.<store>.<pid>.<hex>.journal`` beside the store names, exactly, every path the
   write will make (the staging store, the place the earlier table is moved to, the copy);
3. **stage**: the table is written with spatialdata's own writer as the only element of a new store
   beside the target (nothing in the user's store has changed yet);
4. **place** (journal state ``placing``, holding the root ``zarr.json`` as it was): an earlier
   table of that name is first taken out of the consolidated metadata (the store reads without it),
   moved aside, the staged table folder renamed in (one rename), and the consolidated metadata
   updated with the new table's entries only, copied from the staging store's own (never by walking
   the store: groups that spatialdata does not list stay unlisted);
5. **commit** (journal state ``committed``), then the moved-aside table and the staging store are
   removed and the journal last.

:func:`recover` (run under the lock by every write and by every open that may write) reads the
journals of writes that died: before the commit it rolls back (the new table removed only when it
is the very folder that was staged, same inode; the earlier table renamed back; that table's
entries of the root ``zarr.json`` put back as they were, the others left as they are now); after
it, it finishes the clean-up. It touches only the paths a journal names.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from napari_spatial_impute._errors import InputError

#: Longest store name used as it is in the names of the files beside it (longer ones are hashed).
_KEY_CHARS = 100


def _key(store: Path) -> str:
    """The prefix of the files a write keeps beside ``store``."""
    name = store.name
    if len(os.fsencode(name)) <= _KEY_CHARS:
        return name
    import hashlib

    return "h" + hashlib.sha1(os.fsencode(name)).hexdigest()[:16]


def _journal_re(store: Path) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(_key(store))}\.(\d+)\.([0-9a-f]{{8}})\.journal(\.tmp)?$")


def remove_path(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a folder; nothing when absent."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def store_lock(store: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the store's write lock (``flock`` on its folder); yields whether it is held.

    ``wait=False`` does not wait for another writer: it yields ``False`` at once.
    Where ``fcntl`` is missing (Windows) or the file system refuses ``flock`` there is no lock
    and this yields ``True``.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on the platforms tested
        yield True
        return
    fd = os.open(store, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        locked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            fcntl.flock(fd, fcntl.LOCK_EX)  # another write into this store: wait for it
        except OSError:  # a file system without flock (some network mounts): no lock
            locked = False
        try:
            yield True
        finally:
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def fault_point(step: str) -> None:
    """A named step of a write: nothing happens here; the fault-injection tests kill the process
    at each one (``docs/store-safety.md`` lists them)."""


def write_atomic(path: Path, data: bytes, tmp: Path) -> None:
    """``data`` into ``path`` through ``tmp`` and one rename (synced first)."""
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    fault_point(f"{tmp.suffix[1:]} written")
    os.replace(tmp, path)


@dataclass
class Journal:
    """The record of one write into ``folder / store`` (all paths are names in ``folder``)."""

    folder: str
    store: str
    table: str
    stage: str
    old: str
    meta_tmp: str
    copy: str | None = None
    state: str = "staging"
    stage_ino: list[int] | None = None
    root_before: str | None = None
    made_tables: bool = False
    name: str = field(default="", repr=False)

    @classmethod
    def begin(cls, target: Path, table: str, copy: bool = False) -> Journal:
        """A new journal for writing ``table`` into ``target`` (written before anything else).

        The store is named by its real path: a write through a link and a repair through the
        store's own path (or another link) find the same journal."""
        real = target.resolve()
        tag = f".{_key(real)}.{os.getpid()}.{secrets.token_hex(4)}"
        journal = cls(
            folder=str(real.parent),
            store=real.name,
            table=table,
            stage=tag + ".stage",
            old=tag + ".old",
            meta_tmp=tag + ".meta",
            copy=tag + ".copy" if copy else None,
            name=tag + ".journal",
        )
        journal.save()
        return journal

    @property
    def path(self) -> Path:
        return Path(self.folder) / self.name

    def at(self, name: str) -> Path:
        """The path of ``name`` (one of this journal's names) beside the store."""
        return Path(self.folder) / name

    def save(self, **changes: Any) -> None:
        """Record ``changes`` (one atomic, synced rename)."""
        for key, value in changes.items():
            setattr(self, key, value)
        record = {k: v for k, v in asdict(self).items() if k not in ("folder", "name")}
        tmp = self.path.with_name(self.name + ".tmp")
        write_atomic(self.path, json.dumps(record).encode(), tmp)

    @classmethod
    def load(cls, path: Path) -> Journal | None:
        try:
            record = json.loads(path.read_text())
            return cls(folder=str(path.parent), name=path.name, **record)
        except (OSError, ValueError, TypeError):
            return None

    def finish(self, keep_old: bool = False) -> None:
        """After the commit: remove what the write left beside the store, the journal last
        (``keep_old``: not the earlier table moved aside)."""
        for name in (None if keep_old else self.old, self.stage, self.meta_tmp, self.copy):
            if name is not None:
                path = self.at(name)
                remove_path(path)
                fault_point(f"removed {path.suffix[1:]}")
        self.path.unlink(missing_ok=True)

    def roll_back(self) -> None:
        """Before the commit: the store as it was before the write, then :meth:`finish`.

        Each step leaves the store readable, so a repair that is itself stopped is finished by
        the next one: the table's entries are first taken out of the consolidated metadata, the
        new table removed (only the very folder staged: same device and inode), the earlier one
        renamed back, and its entries put back as they were; every other entry stays as it is now
        (an element written since is kept). The root is rewritten only when it changes.
        """
        if self.state == "committed":
            self.finish()
            return
        keep_old = False
        if self.state == "placing" and self.copy is None:
            store = self.at(self.store)
            root, tmp = store / "zarr.json", self.at(self.meta_tmp)
            dest = store / "tables" / self.table
            old = self.at(self.old)
            ours = False
            if self.stage_ino is not None and os.path.lexists(dest):
                st = os.lstat(dest)
                ours = [st.st_dev, st.st_ino] == self.stage_ino
            if self.root_before is not None and ours:
                _rewrite(root, lambda now: without_table(now, self.table), tmp)
            if ours:
                remove_path(dest)  # the very folder this write staged
            if os.path.lexists(old):
                if os.path.lexists(dest):
                    keep_old = True  # its place is taken by something this write did not make
                else:
                    os.rename(old, dest)  # the earlier table, back where it was
            if self.root_before is not None and os.path.lexists(dest):
                before = self.root_before.encode()
                _rewrite(root, lambda now: merged_root(now, before, self.table), tmp)
            tables = store / "tables"
            if self.made_tables and tables.is_dir() and not os.path.lexists(dest):
                if [p.name for p in tables.iterdir()] == ["zarr.json"]:
                    remove_path(tables)
            if keep_old:
                import warnings

                from napari_spatial_impute._errors import InputWarning

                warnings.warn(
                    f"the earlier table {self.table!r} of {str(store)!r} could not be put back "
                    f"(its place is taken); it is kept at {str(old)!r}: move it back by hand.",
                    InputWarning,
                    stacklevel=2,
                )
        self.finish(keep_old)


def _rewrite(root: Path, change: Any, tmp: Path) -> None:
    """Replace the root ``zarr.json`` by ``change(its bytes)`` when that differs."""
    now = root.read_bytes()
    new = change(now)
    if new != now and json.loads(new) != json.loads(now):
        write_atomic(root, new, tmp)


def recover(target: Path, only_dead: bool = False) -> int:
    """Finish or roll back the writes into ``target`` that died; returns how many.

    Call it holding :func:`store_lock` of ``target`` (then no journal belongs to a live write);
    ``only_dead``: without that lock (a new ``--out`` copy), only journals whose process is gone.
    Only files named by a journal are touched. A journal that cannot be carried out here (a file
    it needs is not writable) is kept, and said in one :class:`InputWarning` line.
    """
    from napari_spatial_impute.io.files import _pid_alive

    real = target.resolve()
    folder = real.parent
    if not folder.is_dir():
        return 0
    pattern = _journal_re(real)
    done = 0
    for path in sorted(folder.iterdir()):
        match = pattern.match(path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if only_dead and pid != os.getpid() and _pid_alive(pid):
            continue
        if match.group(3):  # a save cut short: the journal before it (if any) still holds
            path.unlink(missing_ok=True)
            continue
        journal = Journal.load(path)
        if journal is None or journal.store != real.name:
            continue
        try:
            journal.roll_back()
        except OSError as exc:
            import warnings

            from napari_spatial_impute._errors import InputWarning, first_line

            warnings.warn(
                f"store {str(target)!r} has an unfinished write ({path.name}) that cannot be "
                f"repaired here ({first_line(exc)}); open it where its files are writable.",
                InputWarning,
                stacklevel=2,
            )
            continue
        done += 1
    return done


def pending(target: Path) -> list[Path]:
    """Journals of writes into ``target`` that have not ended (died, or running now)."""
    real = target.resolve()
    pattern = _journal_re(real)
    try:
        names = sorted(real.parent.iterdir())
    except OSError:  # a folder that cannot be listed holds no journal of ours
        return []
    return [p for p in names if (m := pattern.match(p.name)) and not m.group(3)]


def copy_store(src: Path, dst: Path) -> None:
    """Copy the store folder ``src`` to ``dst``; a link that is broken or points back into its own
    folder's ancestors (a loop) is copied as a link, as it is, instead of being followed."""
    kept: list[tuple[Path, str]] = []

    def keep_links(folder: str, names: list[str]) -> list[str]:
        skipped = []
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                continue
            real = os.path.realpath(path)
            looped = os.path.isdir(path) and (os.path.realpath(folder) + os.sep).startswith(
                real.rstrip(os.sep) + os.sep
            )
            if not os.path.exists(path) or looped:
                skipped.append(name)
                kept.append((Path(path), os.readlink(path)))
        return skipped

    try:
        shutil.copytree(src, dst, ignore=keep_links)
    except (shutil.Error, OSError) as exc:
        remove_path(dst)
        raise InputError(
            f"the store {str(src)!r} cannot be copied ({_first(exc)}); write the results table into "
            "the store itself (leave out --out) or as .h5ad."
        ) from None
    for link, to in kept:
        os.symlink(to, dst / link.relative_to(src))


def _first(exc: BaseException) -> str:
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        errors = exc.args[0]
        return str(errors[0][-1]) if errors else "copy failed"
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _drop(entries: dict[str, Any], table: str) -> dict[str, Any]:
    prefix = f"tables/{table}"
    return {k: v for k, v in entries.items() if k != prefix and not k.startswith(prefix + "/")}


def merged_root(before: bytes, stage_root: bytes, table: str) -> bytes:
    """The store's root ``zarr.json`` with the consolidated entries of ``tables/<table>`` replaced
    by those of the staging store (``tables`` added when missing); every other entry as it was."""
    root = json.loads(before)
    ours = json.loads(stage_root)["consolidated_metadata"]["metadata"]
    kept = _drop(root["consolidated_metadata"]["metadata"], table)
    if "tables" in ours:
        kept.setdefault("tables", ours["tables"])
    kept.update({k: v for k, v in ours.items() if k not in _drop(ours, table)})
    root["consolidated_metadata"]["metadata"] = kept
    return json.dumps(root, indent=2).encode()


def without_table(before: bytes, table: str) -> bytes:
    """The root ``zarr.json`` with ``tables/<table>`` left out of the consolidated metadata."""
    root = json.loads(before)
    root["consolidated_metadata"]["metadata"] = _drop(
        root["consolidated_metadata"]["metadata"], table
    )
    return json.dumps(root, indent=2).encode()


def is_consolidated(root: bytes) -> bool:
    """Whether a root ``zarr.json`` holds consolidated metadata."""
    try:
        meta = json.loads(root).get("consolidated_metadata")
    except ValueError:
        return False
    return isinstance(meta, dict) and isinstance(meta.get("metadata"), dict)


def repair(store: Path) -> int:
    """Before a store is read: roll back or finish the writes into it that died (when no write is
    running and the folder beside it is writable); returns how many.

    A store with a dead write that cannot be repaired here (a read-only folder) still reads; an
    :class:`~napari_spatial_impute._errors.InputWarning` says so in one line.
    """
    journals = pending(store)
    if not journals:
        return 0
    if not os.access(store.resolve().parent, os.W_OK):
        import warnings

        from napari_spatial_impute._errors import InputWarning

        warnings.warn(
            f"store {str(store)!r} has an unfinished write from a process that stopped "
            f"({journals[0].name}); open it once where its folder is writable to repair it.",
            InputWarning,
            stacklevel=2,
        )
        return 0
    with store_lock(store, wait=False) as held:
        return recover(store) if held else 0  # not held: a write is running (it reads meanwhile)
