"""Files on disk: safe checkpoint reading, atomic writes, RNG state, generated directories.

* :func:`read_checkpoint` is the one place a ``.pth`` file is unpickled: always with
  ``torch.load(..., weights_only=True)``, errors naming the file.
* :func:`atomic_save` / :func:`atomic_write_text` write to a temporary file in the target's
  directory and ``os.replace`` it, so a reader never sees half a file.
* :func:`rng_state` / :func:`set_rng_state`: Python, numpy and torch RNG states as tensors and
  plain types (so they fit a ``weights_only`` checkpoint).
* :func:`build_directory_once`: a generated data directory written to a temporary sibling and
  renamed into place, under an exclusive lock, so that concurrent processes (torchrun ranks)
  generate it once and nobody sees a partial one.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detres.utils.errors import InputError

# (module, name) pairs a pickle of dicts, lists, str/bytes and numpy arrays may reference.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),  # the published files (numpy 1.x, protocol 2)
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5 pickles of numpy arrays
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("copyreg", "_reconstructor"),
    ("_codecs", "encode"),  # bytes in protocol <= 2 pickles written by Python 3
    ("builtins", "object"),
    ("collections", "OrderedDict"),
}
_ALLOWED_DTYPE_MODULES = ("numpy", "numpy.dtypes")  # numpy >= 1.25 pickles dtype classes


class UnsafePickleError(pickle.UnpicklingError, InputError):
    """A pickle referenced a global outside the allow-list (refused before it runs)."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only resolves the numpy / builtin names needed for numpy arrays:
    CIFAR batches, MSRA / Detectron model-zoo ``.pkl`` files. Anything else a pickle names
    (a function, a class with a ``__reduce__``) is refused before any of it runs."""

    def __init__(self, file: io.BufferedIOBase, *, source: str = "<pickle>",
                 encoding: str = "bytes") -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = (module, name) in _ALLOWED_GLOBALS or (
            module in _ALLOWED_DTYPE_MODULES and name.endswith("DType")
        )
        if not allowed:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global {module}.{name} (only numpy arrays "
                "and plain containers are allowed: data set and model-zoo pickles hold nothing "
                "else)"
            )
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]  # numpy 2 renamed the package
        return getattr(importlib.import_module(module), name)


def load_restricted_pickle(path: str | os.PathLike[str], *, encoding: str = "latin1") -> Any:
    """A pickle file read with :class:`RestrictedUnpickler`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file {path} does not exist")
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, source=str(path), encoding=encoding).load()  # type: ignore[arg-type]
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated, not a pickle
        raise CheckpointReadError(f"{path} cannot be read as a pickle: {type(e).__name__}: "
                                  f"{e}") from None


class CheckpointReadError(InputError):
    """A file that cannot be read as a checkpoint (truncated, not a torch file, or a pickle
    that names code); the message names the file."""


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``.pth`` file's top-level dict, read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or a pickle with code in it
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointReadError(
            f"{path} cannot be read as a checkpoint: {type(e).__name__}: {msg}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointReadError(f"checkpoint {path}: expected a dict, got {type(obj).__name__}")
    return obj


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp.{os.getpid()}")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full or failing disk, a size limit, no
    permission); the message names the path and the cause. The file that was there before
    is untouched."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover (a platform without directory descriptors)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover (some file systems refuse fsync on a directory)
        pass
    finally:
        os.close(fd)


def _root_cause(e: BaseException) -> BaseException:
    """The first OSError with an errno in ``e``'s chain (a write's ENOSPC / EIO / EFBIG under
    torch's own RuntimeError), else the innermost error."""
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return next((c for c in chain if isinstance(c, OSError) and c.errno), chain[-1])


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temp file in the same directory, flushed to the disk, then
    ``os.replace``: a reader (a resume after a crash) sees the old file or the new one, never
    half of one. A failed write (disk full, I/O error) removes the temp file, leaves the old
    file as it was, and raises :class:`CheckpointWriteError` naming the path and the cause."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as e:
        cause = _root_cause(e)
        what = (os.strerror(cause.errno) if isinstance(cause, OSError) and cause.errno
                else " ".join(str(cause).split())[:200] or type(cause).__name__)
        raise CheckpointWriteError(f"could not write checkpoint {path}: {what} "
                                   f"({type(cause).__name__}); {path.name} as it was before "
                                   "is untouched") from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def remove_stale_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Remove ``.NAME.tmp.PID`` files next to ``path`` left by writers that were killed
    mid-write (their process is gone); returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp.*"):
        pid = tmp.name.rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover (someone else's process)
        return True
    return True


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temp file in the same directory, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (and CUDA) RNG states as tensors and plain types."""
    py = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
         n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the directory itself (no lock file is left behind). Where
    ``fcntl`` does not exist (Windows) the atomic rename alone keeps a directory whole."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def build_directory_once(target: str | os.PathLike[str], *, is_current: Callable[[Path], bool],
                         write: Callable[[Path], None]) -> Path:
    """Make sure ``target`` holds a current generated directory; returns it.

    ``is_current(dir)`` says whether a directory is complete and up to date; ``write(tmp)``
    fills an empty temporary directory. The temporary directory is a sibling of ``target``
    (same file system), renamed into place when complete; a stale or partial ``target`` is
    moved aside and deleted. An exclusive lock on the parent directory makes concurrent
    callers wait for one writer and then reuse its result. Temporary directories left by a
    killed writer are removed by the next one."""
    target = Path(target)
    if is_current(target):
        return target
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    with directory_lock(root):
        if is_current(target):  # another process wrote it while we waited
            return target
        for old in root.glob(f".{target.name}.tmp-*"):  # left by a killed writer
            shutil.rmtree(old, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it private
            write(tmp)
            if target.exists():  # stale or partial: move aside, then delete
                aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
                os.replace(target, aside / "old")
                shutil.rmtree(aside, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
