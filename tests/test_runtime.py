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
