"""The table and coordinate system last chosen per SpatialData store, remembered across sessions.

A small JSON file in the user's configuration folder (``$XDG_CONFIG_HOME`` or ``~/.config``):
``{"<resolved store path>": {"table": ..., "coordinate_system": ...}}``. A missing or broken file
is an empty memory; failing to save is silent (the choice only saves the user a click).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: Stores remembered at most (the oldest are forgotten first).
MAX_STORES = 200


def _file() -> Path:
    root = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(root) / "napari-spatial-impute" / "store-choices.json"


def _key(store: str | os.PathLike[str]) -> str:
    return str(Path(store).expanduser().resolve())


def _all() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recall(store: str | os.PathLike[str]) -> dict[str, str]:
    """``{"table": ..., "coordinate_system": ...}`` chosen last for ``store`` (may be empty)."""
    found = _all().get(_key(store), {})
    return {k: str(v) for k, v in found.items() if isinstance(v, str)}


def remember(store: str | os.PathLike[str], table: str, coordinate_system: str) -> None:
    """Save the choice for ``store`` (written through a temporary file and a rename)."""
    data = _all()
    data.pop(_key(store), None)
    data[_key(store)] = {"table": table, "coordinate_system": coordinate_system}
    data = dict(list(data.items())[-MAX_STORES:])
    path = _file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
