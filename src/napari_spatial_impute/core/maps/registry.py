"""The maps a run can make, found by name (``method=``)."""

from __future__ import annotations

from napari_spatial_impute._errors import InputError
from napari_spatial_impute.core.maps.base import MapKind
from napari_spatial_impute.core.maps.ensemble import EnsembleMap
from napari_spatial_impute.core.maps.tangram import TangramMap

_MAPS: dict[str, MapKind] = {}


def register_map(kind: MapKind) -> None:
    """Add a map to the registry under ``kind.name`` (a later one replaces an earlier one)."""
    _MAPS[kind.name] = kind


def get_map(name: str) -> MapKind:
    """The map registered as ``name``."""
    try:
        return _MAPS[name]
    except KeyError:
        raise InputError(
            f"map {name!r} is not known; use one of {', '.join(map_names())}."
        ) from None


def map_names() -> tuple[str, ...]:
    """Names of the registered maps, in registration order."""
    return tuple(_MAPS)


register_map(EnsembleMap())
register_map(TangramMap())
