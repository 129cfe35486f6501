"""Process tuning of nas_service.runtime, each case in a fresh interpreter (it is process-wide)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = "from nas_service.runtime import retain_freed_memory as r; print(r(), r())"


def _probe(**env: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env},
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_retained_on_glibc():
    assert _probe() == "True True"


def test_the_environment_turns_it_off():
    assert _probe(NAS_RETAIN_FREED_MEMORY="0") == "False False"


RELEASE_PROBE = """
from nas_service.runtime import release_freed_memory, retain_freed_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
retain_freed_memory()
blocks = [bytearray(1 << 20) for _ in range(200)]  # 200 MiB written, kept after freeing
keep = blocks.pop()  # the top of the heap stays in use: what is freed lies inside it
del blocks
held = rss()
released = release_freed_memory()
print(released, (held - rss()) >> 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_memory_is_handed_back_when_released():
    out = subprocess.run([sys.executable, "-c", RELEASE_PROBE], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) >= 150  # MiB of the 199 freed
