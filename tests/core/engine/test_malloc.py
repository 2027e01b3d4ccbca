"""Keeping freed large blocks in the heap during a mapping (glibc only)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from napari_spatial_impute.core.engine import memory as _malloc

# Run in a fresh interpreter: the heap of a long test session is in an arbitrary state.
_PROBE = """
import json, resource, torch
from napari_spatial_impute.core.engine import memory as _malloc
def faults(n=6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        t = torch.empty(16 << 20)  # 64 MiB, above glibc's largest mmap threshold
        t.fill_(1.0)
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

torch.set_num_threads(1)
out = {"outside": faults()}
with _malloc.reuse_freed_memory() as active:
    out["active"] = active
    with _malloc.reuse_freed_memory():  # re-entrant
        pass
    out["depth_inside"] = _malloc._depth
    faults(12)  # the heap grows to its working size: 1-9 growths here, varying with the address layout
    out["inside"] = faults(12)
    base = rss()
    big = [torch.ones(16 << 20) for _ in range(6)]
    del big
    out["kept_inside"] = rss() - base
    _malloc.trim()
    out["kept_after_trim"] = rss() - base
    big = [torch.ones(16 << 20) for _ in range(6)]
    del big
out["depth_after"] = _malloc._depth
out["kept_after"] = rss() - base
print(json.dumps(out))
"""


def test_reuse_freed_memory_avoids_page_faults_and_restores():
    if not _malloc._glibc():
        pytest.skip("not glibc: the context manager does nothing here")
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
        ).stdout
    )
    assert out["active"] and out["depth_inside"] == 1 and out["depth_after"] == 0
    pages = (64 << 20) // 4096
    # six fresh 64 MiB mappings fault about 6 x 16k pages; inside, once the heap has grown, the
    # next twelve reuse it
    assert out["outside"] > 4 * pages
    assert out["inside"] < 4 * pages  # vs 12 x 16k pages without reuse
    # freed memory stays in the process inside the block and is handed back on exit
    assert out["kept_inside"] > 300 << 20
    assert out["kept_after_trim"] < 100 << 20  # trim() hands it back while the block is active
    assert out["kept_after"] < 100 << 20
