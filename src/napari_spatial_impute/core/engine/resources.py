"""Device choice and memory estimates made before any mapping starts."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from napari_spatial_impute._errors import InputError, MemoryEstimateError

GIB = 1024**3


def resolve_device(device: str | None) -> torch.device:
    """Turn ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` into a usable torch device.

    ``"auto"`` picks CUDA when present, else the CPU. Asking for CUDA where there is none is an
    :class:`InputError`.
    """
    name = (device or "cpu").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                f"device {device!r} was asked for but no CUDA GPU is available to torch; "
                "use --device cpu (the default)."
            )
        return torch.device(name)
    raise InputError(f"device {device!r} is not known; use 'cpu', 'cuda' or 'auto'.")


def available_bytes(device: torch.device) -> int:
    """Memory that a new allocation can use on ``device`` now."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * GIB


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a dense mapping needs, split by what holds them."""

    n_sources: int
    n_spatial: int
    n_genes: int
    n_output_genes: int
    mapping_bytes: int
    working_bytes: int
    output_bytes: int

    @property
    def total_bytes(self) -> int:
        """All bytes together."""
        return self.mapping_bytes + self.working_bytes + self.output_bytes

    def describe(self) -> str:
        """Short human-readable size."""
        return f"{self.total_bytes / GIB:.1f} GiB"


def estimate_dense_mapping(
    n_sources: int, n_spatial: int, n_genes: int, n_output_genes: int = 0
) -> MemoryEstimate:
    """Estimate the memory of an exact dense mapping.

    The engine keeps the logits and Adam's two moment matrices (3 x n_sources x n_spatial
    float32), block temporaries, the final probabilities and the imputed output
    (n_spatial x n_output_genes float32).
    """
    cells = n_sources * n_spatial
    mapping = 3 * 4 * cells + 4 * cells  # logits, two Adam moments, final probabilities
    working = 4 * (n_sources + n_spatial) * n_genes * 3 + 64 * 1024**2
    output = 4 * n_spatial * n_output_genes
    return MemoryEstimate(n_sources, n_spatial, n_genes, n_output_genes, mapping, working, output)


def estimate_lean_mapping(
    n_sources: int, n_spatial: int, n_genes: int, k: int, r: int, n_output_genes: int = 0
) -> MemoryEstimate:
    """Estimate the memory of the lean (candidate pairs) engine.

    Per pair: logits, two Adam moments, probabilities, gradient and temporaries (float32) plus
    two int64 indices; per spatial cell and gene: ``G``, ``Ĝ`` and the gradient; the chunked
    candidate search; and the imputed output.
    """
    pairs = n_spatial * min(k, n_sources) + n_sources * min(r, n_spatial)
    mapping = pairs * (4 * 8 + 8 * 4)
    working = 4 * (n_sources + 4 * n_spatial) * n_genes + 4 * (1 << 25) * 3 + 64 * 1024**2
    output = 4 * n_spatial * n_output_genes
    return MemoryEstimate(n_sources, n_spatial, n_genes, n_output_genes, mapping, working, output)


def estimate_ensemble_map(
    n_sources: int, n_spatial: int, n_genes: int, weights_per_cell: int = 160
) -> MemoryEstimate:
    """Estimate the memory of the ensemble map (:mod:`napari_spatial_impute.core.neighbours`).

    Per spatial cell, its weights (``weights_per_cell`` at most: the members' neighbours
    together, 10 + 100 + 50 with the default members, the z-scored ones sharing one search) in the CSR map and its transpose (float32 values, int32 columns); per cell and gene
    the compared values in the raw, z-scored and PCA spaces; one block of similarities, the
    block the weights are summed in, and their top neighbours.
    """
    k = min(weights_per_cell, n_sources)
    mapping = n_spatial * k * 16
    # blocks of about 32 M similarities, at least 256 spatial cells (neighbours.neighbour_weights)
    block = max(1 << 25, 256 * n_sources)
    working = 4 * (n_sources + n_spatial) * n_genes * 6 + 4 * block * 3 + 64 * 1024**2
    return MemoryEstimate(n_sources, n_spatial, n_genes, 0, mapping, working, 0)


def check_fits(
    estimate: MemoryEstimate,
    device: torch.device,
    mode: str,
    headroom: float = 0.9,
    options: str | None = None,
) -> None:
    """Refuse, with a one-line message, a mapping that would not fit in memory.

    ``options`` says what the user can do instead (default: by ``mode``, for a Tangram map).
    """
    avail = available_bytes(device)
    if estimate.total_bytes > headroom * avail:
        where = "GPU memory" if device.type == "cuda" else "RAM"
        options = options or (
            "use the lean engine (--engine lean), --mode clusters, fewer reference cells, or one FOV at a time"
            if mode == "cells"
            else "subsample the spatial cells or map one FOV at a time"
        )
        raise MemoryEstimateError(
            f"mapping {estimate.n_sources:,} reference {'cells' if mode == 'cells' else 'clusters'} "
            f"x {estimate.n_spatial:,} spatial cells needs about {estimate.describe()} but "
            f"{avail / GIB:.1f} GiB of {where} is free; {options}."
        )
