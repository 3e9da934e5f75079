"""Every image of a set checked once, before iteration 0, and the result cached.

A data set as published holds what a generator never makes: truncated JPEGs, empty files,
PNGs named ``.jpg``, images whose size disagrees with their annotation. :func:`check_images`
looks at each file once, in parallel over the CPUs (threads: the decoders release the GIL),
with a progress bar on large sets, and caches each verdict by path, size and mtime in
``$XDG_CACHE_HOME/detres/image_check/`` so that a second run starts at once:

* the header (PIL, which reads it without decoding): format and size, the EXIF orientation
  (OpenCV applies it when decoding, so the size compared is the rotated one);
* a full decode where the header cannot vouch for the data: a JPEG that does not end with
  its end-of-image marker, a PNG without its ``IEND`` chunk, any other format;
* the size against the annotation's.

Verdicts: ``ok``; ``damaged`` (a truncated JPEG that OpenCV's ``imread`` and PIL still
decode: it loads as they load it, with one warning listing all such files); ``bad`` (missing,
empty, undecodable, or another size than the annotation says). :func:`apply_image_check`
turns the ``bad`` list into one error naming every file (exit code 2) or, with
``data.bad_images: skip``, leaves them out and says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from detres.config import DatasetCfg
from detres.data.det_source import DetSource
from detres.data.image_io import decode_image, header_info
from detres.utils.errors import InputError, error_line

LOG = logging.getLogger("detres")
_VERSION = 1
_SHOW = 10  # files named in a message before "... and N more"
_TAIL = 1024  # bytes read from a file's end to find its end marker


@dataclass
class ImageCheck:
    """What :func:`check_images` found: files that load with a warning and files that do
    not load (each with the reason)."""

    checked: int = 0
    cached: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "detres" / "image_check"


def _ends_whole(path: str, fmt: str | None) -> bool | None:
    """Whether the file ends as a whole JPEG / PNG does (None: the format has no marker)."""
    marker = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(fmt or "")
    if marker is None:
        return None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - _TAIL, 0))
        tail = f.read().rstrip(b"\x00")  # some writers pad with zeros
    return marker in tail[-12:] if fmt == "PNG" else tail.endswith(marker)


def check_one(path: str) -> tuple[str, str, int, int]:
    """``(verdict, reason, height, width)`` of one file, the size as decoded (EXIF orientation
    applied); the annotation's size is compared by the caller."""
    try:
        if os.path.getsize(path) == 0:
            return "bad", "empty file (0 bytes)", 0, 0
    except OSError:
        return "bad", "missing", 0, 0
    fmt, hw = None, None
    try:
        fmt, hw = header_info(path)
    except (OSError, ValueError):
        pass  # not a format PIL knows from its header: decode it
    verdict, reason = "ok", ""
    if hw is None or not _ends_whole(path, fmt):
        try:
            img, how = decode_image(path)
        except (OSError, ValueError) as e:
            return "bad", f"cannot be decoded ({error_line(e)})", 0, 0
        hw = tuple(img.shape[:2])
        if how != "imdecode":
            verdict, reason = "damaged", f"decoded by {how} only (truncated or corrupt data)"
    return verdict, reason, int(hw[0]), int(hw[1])


def _cache_file(files: Sequence[str]) -> Path:
    common = os.path.commonpath([os.path.abspath(f) for f in files]) if files else ""
    key = hashlib.sha1(common.encode()).hexdigest()[:16]
    return cache_dir() / f"{key}.json"


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def check_images(items: Sequence[tuple[str, tuple[int, int] | None]], *, name: str = "",
                 workers: int | None = None, use_cache: bool = True) -> ImageCheck:
    """Check ``(file, expected (h, w) or None)`` pairs; see the module docstring."""
    files = [str(f) for f, _ in items]
    cache_path = _cache_file(files)
    cache: dict[str, list] = {}
    if use_cache:
        try:
            data = json.loads(cache_path.read_text())
            cache = data["files"] if data.get("version") == _VERSION else {}
        except (OSError, ValueError, KeyError, TypeError):
            cache = {}
    report = ImageCheck(checked=len(items))
    todo, verdicts = [], {}
    for f, hw in items:
        hit = cache.get(f)
        stamp = _stamp(f)
        if hit is not None and stamp is not None and hit[:2] == stamp:
            verdicts[f] = tuple(hit[2:6])
            report.cached += 1
        else:
            todo.append((f, hw))
    if todo:
        n = workers or max(os.cpu_count() or 1, 1)
        with ThreadPoolExecutor(max_workers=n) as pool, tqdm(
                total=len(todo), desc=f"checking images{' of ' + name if name else ''}",
                unit="img", disable=len(todo) < 1000, leave=False) as bar:
            for (f, _), v in zip(todo, pool.map(lambda a: check_one(a[0]), todo), strict=True):
                verdicts[f] = v
                bar.update()
    for f, hw in items:
        verdict, reason, h, w = verdicts[f]
        stamp = _stamp(f)
        if stamp is not None:
            cache[f] = [*stamp, verdict, reason, h, w]  # the file's own facts
        if verdict != "bad" and hw is not None and (h, w) != tuple(hw):
            verdict, reason = "bad", f"is {w}x{h} (w x h) but its annotation says {hw[1]}x{hw[0]}"
        if verdict == "damaged":
            report.damaged.append((f, reason))
        elif verdict == "bad":
            report.bad.append((f, reason))
    if use_cache and todo:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": _VERSION, "files": cache}))
            os.replace(tmp, cache_path)
        except OSError as e:  # a read-only home: checking again next time is all it costs
            LOG.debug("image check cache not written: %s", e)
    return report


def listing(entries: Sequence[tuple[str, str]]) -> str:
    shown = "; ".join(f"{f}: {why}" for f, why in entries[:_SHOW])
    more = len(entries) - _SHOW
    return shown + (f"; ... and {more} more" if more > 0 else "")


def apply_image_check(src: DetSource, ds: DatasetCfg, *, policy: str, key: str) -> DetSource:
    """Check ``src``'s images (:func:`check_images`) before anything trains or scores on them.
    Damaged files that decode: one warning listing them. Files that do not load: one
    :class:`~detres.utils.errors.InputError` naming every one (``policy="error"``), or, with
    ``"skip"``, their records left out, logged, and their paths added to ``ds.exclude`` (which
    the trainer writes to ``OUT/config.yaml``, so that a later run on that config leaves out
    the same files). Files already in ``ds.exclude`` are left out first."""
    excluded = set(ds.exclude)
    records = [r for r in src.records if r["file"] not in excluded]
    if len(records) != len(src.records):
        LOG.info("%s: %d image(s) left out as %s.exclude says", src.name,
                 len(src.records) - len(records), key)
    items = [(r["file"], (r["height"], r["width"])) for r in records]
    report = check_images(items, name=src.name)
    if report.damaged:
        LOG.warning("%s: %d damaged image file(s) that still decode, loaded as OpenCV's imread "
                    "reads them: %s", src.name, len(report.damaged), listing(report.damaged))
    if report.bad:
        if policy != "skip":
            raise InputError(
                f"{src.name}: {len(report.bad)} of {len(records)} image files cannot be used: "
                f"{listing(report.bad)}. Fix or remove them, or set data.bad_images=skip to "
                "leave them out")
        bad = {f for f, _ in report.bad}
        records = [r for r in records if r["file"] not in bad]
        ds.exclude = sorted(excluded | bad)
        LOG.warning("%s: left out %d image file(s) that cannot be used (data.bad_images=skip; "
                    "recorded in %s.exclude): %s", src.name, len(bad), key, listing(report.bad))
    src.records = records
    return src


def usable_files(files: Sequence[str | os.PathLike[str]], *, policy: str = "error",
                 what: str = "input") -> list[str]:
    """The image files of a prediction run, checked as a data set's are: damaged ones
    that decode with one warning; unusable ones one error naming all of them, or left out
    (``policy="skip"``) with a warning."""
    report = check_images([(str(f), None) for f in files], name=what)
    if report.damaged:
        LOG.warning("%d damaged image file(s) that still decode, read as OpenCV's imread "
                    "reads them: %s", len(report.damaged), listing(report.damaged))
    if report.bad and policy != "skip":
        raise InputError(f"{len(report.bad)} of {len(files)} {what} files cannot be used: "
                         f"{listing(report.bad)} (--bad-images skip leaves them out)")
    bad = {f for f, _ in report.bad}
    if bad:
        LOG.warning("left out %d image file(s) that cannot be used: %s", len(bad),
                    listing(report.bad))
    return [str(f) for f in files if str(f) not in bad]
