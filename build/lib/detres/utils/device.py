"""Device and precision: which device a run uses, which autocast precision fits the hardware,
and what machine the figures were measured on.

``train.amp: auto`` (the default) resolves, once per process, to:

* CPU: ``bf16`` where the CPU runs bf16 natively (the ``avx512_bf16`` or ``amx_bf16`` flags:
  oneDNN's bf16 convolutions and matmuls), else ``none`` (fp32). Without those flags bf16
  autocast is emulated through fp32 conversions and runs about 2x *slower* than fp32 (measured
  on a Xeon with AVX-512 but no AVX512-BF16), so an explicit ``train.amp=bf16`` there runs
  with one warning. ``DETRES_CPU_BF16=0`` / ``=1`` overrides the flag check (to measure fp32
  on a bf16 machine, or to force bf16 on a CPU whose flags are hidden by a hypervisor).
* CUDA: ``bf16`` on compute capability >= 8.0 (Ampere and later), else ``fp16`` with a
  GradScaler.

The CPU allocator: glibc's malloc hands every block above its mmap threshold (at most 32 MiB
under its own dynamic rule) back to the kernel when it is freed, so each of a detector's large
activations (a 256-channel fp32 map at 200 x 272, the FPN's p2 at 800 x 1088, is 56 MB) is
faulted in and zeroed page by page on every forward pass. :func:`tune_cpu_allocator` raises
the mmap and trim thresholds to 1 GiB, so that those blocks are reused from the heap, as
jemalloc or tcmalloc would; R50-FPN's backbone + FPN at 800 px ran 676 -> 560 ms (fp32, 2
threads, AMD EPYC; ``tools/benchmark.py --ablation`` measures it on your machine). Freed memory
below the peak then stays with the process instead of going back to the system.
:func:`resolve_device` applies it for a CPU run; ``DETRES_MALLOC=default`` keeps glibc's
behaviour; elsewhere (macOS, musl, a preloaded allocator) it changes nothing that matters.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from detres.utils.dist import get_local_rank

AMP_CHOICES = ("auto", "none", "bf16", "fp16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: CPU flags worth printing beside a figure
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni",
                  "avx_vnni", "fma")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available (this process's local rank under torchrun), else CPU;
    ``cuda`` without a GPU is an error. A CPU run gets :func:`tune_cpu_allocator`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", get_local_rank() % max(torch.cuda.device_count(), 1))
    device = torch.device(name)
    if device.type == "cpu":
        tune_cpu_allocator()
    return device


#: glibc's ``mallopt`` parameters and what :func:`tune_cpu_allocator` sets them to
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
LARGE_BLOCKS_KEPT = 1 << 30
#: glibc's own steady state for a process that frees large blocks (its dynamic threshold's
#: ceiling, and the trim threshold it sets beside it): what ``enable=False`` restores
GLIBC_DEFAULT = (32 << 20, 64 << 20)
_malloc_state = {"tuned": False}


@functools.cache
def _glibc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - glibc without the usual soname
        return None


def tune_cpu_allocator(enable: bool | None = None) -> bool:
    """Keep large freed blocks in glibc's heap (``enable=True``; ``None``: unless
    ``DETRES_MALLOC=default``), or restore glibc's default thresholds (``False``); see the
    module's docstring. Returns whether large blocks are now kept (False where there is no
    glibc). Process-wide, cheap, and safe to call again."""
    if enable is None:
        enable = os.environ.get("DETRES_MALLOC", "").strip().lower() != "default"
    libc = _glibc()
    if libc is None:
        return False
    mmap, trim = (LARGE_BLOCKS_KEPT, LARGE_BLOCKS_KEPT) if enable else GLIBC_DEFAULT
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                              trim))
    _malloc_state["tuned"] = enable and ok
    return _malloc_state["tuned"]


@functools.cache
def cpu_info() -> dict[str, Any]:
    """The CPU model, its relevant flags, torch's CPU capability and the thread count."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                key, _, value = ln.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(),
                                                      platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # pragma: no cover - older torch
        capability = "unknown"
    return {"cpu": model, "flags": [f for f in REPORTED_FLAGS if f in flags],
            "bf16_native": any(f in flags for f in BF16_FLAGS),
            "torch_cpu_capability": capability, "threads": torch.get_num_threads()}


def cpu_line() -> str:
    """One line for a report: ``AMD EPYC | flags avx2 avx512f ... | AVX512 | 2 threads |
    malloc large blocks kept``."""
    i = cpu_info()
    return (f"{i['cpu']} | flags {' '.join(i['flags']) or '-'} | torch CPU capability "
            f"{i['torch_cpu_capability']} | {torch.get_num_threads()} threads | malloc "
            f"{allocator_state()}")


def allocator_state() -> str:
    """``large blocks kept`` after :func:`tune_cpu_allocator`, else ``default``."""
    return "large blocks kept" if _malloc_state["tuned"] else "default"


def cpu_has_native_bf16() -> bool:
    """The CPU's flags say bf16 runs natively (``DETRES_CPU_BF16=0|1`` overrides)."""
    env = os.environ.get("DETRES_CPU_BF16", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return bool(cpu_info()["bf16_native"])


def auto_amp(device: torch.device) -> tuple[str, str]:
    """The precision ``auto`` picks on ``device`` and why."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return "bf16", f"CUDA compute capability {major}.{minor} >= 8.0 runs bf16"
        return "fp16", f"CUDA compute capability {major}.{minor} < 8.0: fp16 with a GradScaler"
    env = os.environ.get("DETRES_CPU_BF16", "").strip()
    if env in ("0", "1"):
        return ("bf16" if env == "1" else "none"), f"DETRES_CPU_BF16={env}"
    if cpu_has_native_bf16():
        return "bf16", "the CPU runs bf16 natively (avx512_bf16/amx_bf16)"
    return "none", "the CPU has no native bf16 (no avx512_bf16/amx_bf16): fp32 is faster"


_told: set[tuple[str, str]] = set()


def resolve_amp(amp: str, device: torch.device, *, log: Any = None) -> str:
    """``train.amp`` as run on ``device``: ``auto`` resolved by :func:`auto_amp`; the choice
    and its reason are logged once per process (``log``: a logger), as is the warning for an
    explicit ``bf16`` on a CPU without native bf16."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"train.amp: {amp!r} is not one of {list(AMP_CHOICES)}")
    key = (amp, device.type)
    if amp == "auto":
        chosen, why = auto_amp(device)
        if log is not None and key not in _told:
            log.info("precision: train.amp=auto -> %s (%s)", chosen, why)
        _told.add(key)
        return chosen
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16() and key not in _told:
        _told.add(key)
        warnings.warn("train.amp=bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16): "
                      "autocast emulates it and runs about 2x slower than fp32; "
                      "train.amp=auto picks fp32 here", stacklevel=2)
    return amp


def autocast_context(device: torch.device, amp: str) -> AbstractContextManager[Any]:
    """bf16 autocast on CPU or GPU, fp16 on GPU; nothing for ``none`` (``auto`` resolved)."""
    amp = resolve_amp(amp, device)
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("train.amp=fp16 needs a GPU; use bf16 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)
