"""Downloading a file once into a cache, checked, never half-written.

:func:`download` streams a URL (``https://``, ``http://``, ``file://``) to ``<dst>.partial``
with a tqdm progress bar, then checks what it got before the file takes its name with
``os.replace``:

* the byte count against the server's ``Content-Length``. ``torch.hub.download_url_to_file``
  does not check it: Python's ``http.client`` ends a read quietly when the server closes the
  connection early, and torch then moves the truncated file into the cache (a test here shows
  it). That is why this module exists instead of a call to torch's;
* the SHA-256 against ``hash_prefix`` when the source publishes one (torchvision's file names
  carry the first 8 hex digits, ``resnet50-11ad3fa6.pth``, the same rule as torch.hub's
  ``check_hash``).

A failed download leaves nothing under ``dst``; an exclusive lock on the cache folder makes
concurrent processes (the ranks of one node) download once and share the file. A URL that
cannot be reached is a :class:`DownloadError` whose one line names the URL and where to put
the file by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from detres.utils.errors import InputError
from detres.utils.io import directory_lock

#: torch.hub's rule: ``name-<sha256 prefix>.ext`` (we require at least 8 hex digits)
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.[A-Za-z0-9]+$")
_CHUNK = 1 << 20


class DownloadError(InputError):
    """A download that failed, was cut short or does not match its published hash."""


def hash_from_name(url: str) -> str | None:
    """The SHA-256 prefix a file name carries (``resnet50-11ad3fa6.pth`` -> ``11ad3fa6``)."""
    m = HASH_IN_NAME.search(url.rsplit("/", 1)[-1])
    return m.group(1) if m else None


def download(url: str, dst: str | os.PathLike[str], *, hash_prefix: str | None = None,
             progress: bool = True, timeout: float = 60.0) -> Path:
    """``url`` at ``dst`` (downloaded unless already there); see the module docstring."""
    dst = Path(dst).expanduser()
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with directory_lock(dst.parent):
        if dst.is_file():  # another process finished it while we waited
            return dst
        tmp = dst.with_name(dst.name + ".partial")
        try:
            _fetch(url, tmp, hash_prefix=hash_prefix, progress=progress, timeout=timeout)
            os.replace(tmp, dst)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return dst


def _fetch(url: str, tmp: Path, *, hash_prefix: str | None, progress: bool,
           timeout: float) -> None:
    by_hand = f"with no network, download it elsewhere and put it at {tmp.with_suffix('')}"
    req = urllib.request.Request(url, headers={"User-Agent": "detres"})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"cannot download {url} ({reason}); {by_hand}") from None
    sha = hashlib.sha256()
    got = 0
    with resp, open(tmp, "wb") as f:
        size = resp.headers.get("Content-Length")
        total = int(size) if size and size.isdigit() else None
        name = url.rsplit("/", 1)[-1]
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                  disable=not progress, leave=False) as bar:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, ValueError) as e:  # reset, timeout, IncompleteRead
                    raise DownloadError(f"download of {url} broke off after {got} bytes "
                                        f"({e}); run again, or {by_hand}") from None
                if not chunk:
                    break
                f.write(chunk)
                sha.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if total is not None and got != total:
        raise DownloadError(f"download of {url} broke off: {got} of {total} bytes; run again, "
                            f"or {by_hand}")
    digest = sha.hexdigest()
    if hash_prefix and not digest.startswith(hash_prefix):
        raise DownloadError(f"{url}: SHA-256 {digest[:16]}... does not start with the "
                            f"published {hash_prefix!r}; the file is damaged or not the one "
                            "named (nothing was kept)")
