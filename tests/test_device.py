"""CPU settings the job makes before Paddle is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from job.runtime.cpu import available_cpus, cpu_vendor, set_cpu_thread_defaults

HAS_CPUINFO = Path("/proc/cpuinfo").is_file()
HAS_GLIBC_AND_PROC = Path("/proc/self/status").is_file() and os.confstr("CS_GNU_LIBC_VERSION") is not None

CPUINFO = "processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: 25\nmodel name\t: Some CPU\n\nprocessor\t: 1\n"


def test_vendor_is_read_from_cpuinfo() -> None:
    assert cpu_vendor(CPUINFO.format(vendor="AuthenticAMD")) == "AuthenticAMD"
    assert cpu_vendor("processor\t: 0\n") == ""


@pytest.mark.skipif(not HAS_CPUINFO, reason="no /proc/cpuinfo on this system")
def test_this_machines_vendor_is_found() -> None:
    assert cpu_vendor() != ""


@pytest.mark.parametrize(
    ("vendor", "expected"), [("AuthenticAMD", "5"), ("HygonGenuine", "5"), ("GenuineIntel", None), ("", None)]
)
def test_mkl_fast_path_is_forced_on_amd_only(
    vendor: str, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    set_cpu_thread_defaults(vendor)
    assert os.environ.get("MKL_DEBUG_CPU_TYPE") == expected
    assert os.environ["OMP_NUM_THREADS"] == str(available_cpus())


def test_the_users_values_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    set_cpu_thread_defaults("AuthenticAMD")
    assert os.environ["MKL_DEBUG_CPU_TYPE"] == "4" and os.environ["OMP_NUM_THREADS"] == "3"


RESIDENT_MB_AFTER_FREEING_100_MB = """
import sys
import numpy as np
if sys.argv[1] == "keep":
    from job.runtime.cpu import keep_freed_memory
    keep_freed_memory()
block = np.ones(25_000_000, dtype=np.float32)
del block
status = open("/proc/self/status").read().split("VmRSS:")[1]
print(int(status.split()[0]) // 1024)
"""


@pytest.mark.skipif(not HAS_GLIBC_AND_PROC, reason="needs glibc's mallopt and /proc/self/status")
def test_freed_memory_stays_with_the_process_for_reuse() -> None:
    def resident_mb(mode: str) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
        command = [sys.executable, "-c", RESIDENT_MB_AFTER_FREEING_100_MB, mode]
        return int(subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout)

    assert resident_mb("keep") - resident_mb("default") > 80  # glibc alone hands the 100 MB back to the OS


def test_paddles_thread_warning_is_silenced_only_when_the_job_chose_the_threads(write_config) -> None:
    root = Path(__file__).resolve().parents[1]

    def stderr(**env: str) -> str:
        base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        result = subprocess.run(
            [sys.executable, "-m", "job", "run", "--config", str(write_config()), "--device", "gpu"],
            capture_output=True, text=True, cwd=root, check=False, env={**base, "PYTHONPATH": str(root), **env},
        )  # fmt: skip
        assert result.returncode == 2, result.stderr  # Paddle was imported: the device check needs it
        assert "device 'gpu' was requested" in result.stderr
        return result.stderr

    assert "OMP_NUM_THREADS" not in stderr()
    assert "WARNING: OMP_NUM_THREADS set to 2" in stderr(OMP_NUM_THREADS="2")  # the user's own choice
