"""The agent pins glibc's mmap threshold, so that a large string freed once does not make
every later one come from the main heap, where freed memory stays resident."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from exporter import malloc

# After freeing a 4 MiB block, hold eight of 1 MiB: how much did the main heap grow?
PROBE = """
import sys
from exporter import malloc
if sys.argv[1] == "pinned":
    assert malloc.pin_mmap_threshold()
def heap():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            return hi - lo
    return 0
big = bytearray(4 << 20)
del big
before = heap()
held = [bytearray(1 << 20) for _ in range(8)]
print(heap() - before)
"""

glibc = pytest.mark.skipif(not malloc.glibc(), reason="glibc's malloc only")


def heap_growth(mode: str) -> int:
    env = {
        k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")
    }
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env=env)  # fmt: skip
    return int(out.stdout)


@glibc
def test_large_blocks_stay_off_the_heap_once_pinned() -> None:
    # glibc's dynamic threshold: the freed 4 MiB block moves the later 1 MiB ones onto the heap.
    assert heap_growth("default") >= 8 << 20
    assert heap_growth("pinned") < 1 << 20


def test_an_operators_choice_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert not malloc.pin_mmap_threshold()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert not malloc.pin_mmap_threshold()
