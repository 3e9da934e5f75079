"""Precision from the hardware: ``train.amp=auto`` and the CPU report."""

from __future__ import annotations

import warnings

import pytest
import torch

from detres.utils import device as D

CPU = torch.device("cpu")


def test_auto_follows_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETRES_CPU_BF16", "0")
    assert D.auto_amp(CPU)[0] == "none"
    assert D.resolve_amp("auto", CPU) == "none"
    monkeypatch.setenv("DETRES_CPU_BF16", "1")
    assert D.resolve_amp("auto", CPU) == "bf16"
    monkeypatch.delenv("DETRES_CPU_BF16")
    native = D.cpu_info()["bf16_native"]
    assert D.resolve_amp("auto", CPU) == ("bf16" if native else "none")
    assert native == any(f in D.cpu_info()["flags"] for f in D.BF16_FLAGS)


def test_explicit_bf16_without_native_support_warns_once(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setenv("DETRES_CPU_BF16", "0")
    monkeypatch.setattr(D, "_told", set())
    with pytest.warns(UserWarning, match="2x slower than fp32"):
        assert D.resolve_amp("bf16", CPU) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.resolve_amp("bf16", CPU)  # once per process
        assert D.resolve_amp("none", CPU) == "none"
    with pytest.raises(ValueError, match="train.amp"):
        D.resolve_amp("fp8", CPU)


def test_autocast_auto_and_cpu_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETRES_CPU_BF16", "1")
    with D.autocast_context(CPU, "auto"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    monkeypatch.setenv("DETRES_CPU_BF16", "0")
    with D.autocast_context(CPU, "auto"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    line = D.cpu_line()
    assert "threads" in line and "torch CPU capability" in line
    assert D.cpu_info()["cpu"]


_RSS_AFTER_FREE = """
import os, sys, torch
from detres.utils import device as D
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
D.resolve_device("cpu")
print(D.allocator_state())
t = torch.ones((512 << 20) // 4)
before = rss()
del t
print(before - rss())
"""


@pytest.mark.skipif(D._glibc() is None, reason="glibc's malloc only (Linux)")
@pytest.mark.parametrize("setting", ["", "default"])
def test_cpu_allocator_keeps_large_blocks(setting: str) -> None:
    """In a fresh process (a clean heap): after ``resolve_device("cpu")`` a freed 512 MiB
    tensor stays in the heap, its pages reused rather than faulted in again; with
    ``DETRES_MALLOC=default`` (glibc's thresholds) it goes back to the kernel at once."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DETRES_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", _RSS_AFTER_FREE], env=env, check=True,
                         capture_output=True, text=True).stdout.split("\n")
    state, released_mib = out[0], float(out[1])
    if setting == "default":
        assert state == "default" and released_mib > 400
    else:
        assert state == "large blocks kept" and released_mib < 100


def test_tune_cpu_allocator_switches_and_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        assert D.tune_cpu_allocator(False) is False and D.allocator_state() == "default"
        assert "malloc default" in D.cpu_line()
        if D._glibc() is not None:
            assert D.tune_cpu_allocator(True) is True
            assert "malloc large blocks kept" in D.cpu_line()
        monkeypatch.setenv("DETRES_MALLOC", "default")
        assert D.tune_cpu_allocator() is False
    finally:
        monkeypatch.delenv("DETRES_MALLOC", raising=False)
        D.tune_cpu_allocator()
