"""service.inference.allocator: with the service's setting, freed multi-megabyte buffers are reused, not faulted in
again from the kernel on every request. Each case runs in a fresh interpreter (mallopt is process-wide)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from service.inference.allocator import retain_freed_memory

_CHURN = """
import resource, sys
from service.inference.allocator import retain_freed_memory
took = retain_freed_memory(int(sys.argv[1]))
def churn():
    for _ in range(40):  # a 2.5 MB body and its 4 MB join, allocated, written and freed per "request"
        body = bytearray(2_500_000)
        body[::4096] = b"x" * len(body[::4096])
        joined = bytes(body) + bytes(1_500_000)
        del body, joined
churn()  # the first round may grow the heap either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(retain_mib: int) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, str(retain_mib)], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)
def test_retained_memory_stops_the_page_faults_of_each_request() -> None:
    took_default, default = _faults(0)
    took_retained, retained = _faults(256)
    assert (took_default, took_retained) == (False, True)
    # 40 rounds of ~6.5 MB in fresh pages: ~60,000 faults with glibc's defaults, next to none retained.
    assert default > 20_000, default
    assert retained < default / 20, (retained, default)


def test_zero_leaves_the_defaults() -> None:
    assert retain_freed_memory(0) is False
