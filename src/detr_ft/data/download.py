"""Download and unpack the CPPE-5 dataset, safely and all-or-nothing.

The tarball is streamed into a hidden staging folder next to ``out_dir``,
checked against its MD5 before anything is unpacked, extracted with tarfile's
``data`` filter (no absolute paths, no ``..``, no links leaving the tree, no
device files), and the folder holding ``annotations/`` and ``images/`` is then
renamed into place. Any failure raises ``UserError`` and removes the staging
folder, so ``out_dir`` is either a complete dataset or untouched.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from detr_ft.errors import UserError

CPPE5_URL = "https://github.com/Rishit-dagli/CPPE-Dataset/releases/download/v0.1.0/dataset.tar.gz"
CPPE5_MD5 = "f4e043f983cff94ef82ef7d57a879212"

_CHUNK = 1 << 20
# tarfile extraction filters exist from Python 3.10.12 / 3.11.4 / 3.12.
_HAS_TAR_FILTERS = hasattr(tarfile, "data_filter")
_BY_HAND = "download it by hand, unpack it and pass --data-dir"

_log = logging.getLogger(__name__)


def download_dataset(
    out_dir: str | os.PathLike,
    url: str = CPPE5_URL,
    md5: str | None = CPPE5_MD5,
    progress: bool = True,
    timeout: float = 30,
    force: bool = False,
) -> Path:
    """Download the tarball at ``url`` and unpack it as ``out_dir``.

    Returns ``out_dir`` (absolute), which then holds ``images/`` and
    ``annotations/train.json`` (and ``test.json`` for CPPE-5). If it already
    holds ``annotations/train.json`` nothing is downloaded unless ``force``.
    ``md5=None`` skips the checksum (for a custom ``url``). ``timeout`` is in
    seconds, per network operation.
    """
    out_dir = Path(os.path.abspath(os.path.expanduser(out_dir)))
    if _is_dataset(out_dir) and not force:
        _log.info("%s already holds a dataset; not downloading (use --force to replace it)", out_dir)
        return out_dir
    if out_dir.exists() and not (out_dir.is_dir() and (_is_dataset(out_dir) or _is_empty(out_dir))):
        raise UserError(
            f"{out_dir} exists and is not a dataset folder; refusing to overwrite it, pick another --data-dir"
        )

    created = _make_parents(out_dir.parent)
    staging = None
    try:
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.download-", dir=out_dir.parent))
        except OSError as e:
            raise UserError(f"cannot write in {out_dir.parent} ({e}); pick another --data-dir") from None
        archive = staging / "dataset.tar.gz"
        _fetch(url, archive, md5, progress, timeout)
        root = _extract(archive, staging / "tree", url)
        _install(root, out_dir, staging / "previous")
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for d in reversed(created):  # innermost first
            try:
                d.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(staging, ignore_errors=True)
    _log.info("dataset from %s is ready in %s", url, out_dir)
    return out_dir


def _is_dataset(folder: Path) -> bool:
    return (folder / "annotations" / "train.json").is_file()


def _is_empty(folder: Path) -> bool:
    return next(folder.iterdir(), None) is None


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and missing ancestors; return those created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    missing.reverse()
    try:
        for d in missing:
            d.mkdir()
    except OSError as e:
        raise UserError(f"cannot create {missing[0]} ({e}); pick another --data-dir") from None
    return missing


def _fetch(url: str, dest: Path, md5: str | None, progress: bool, timeout: float) -> None:
    """Stream ``url`` into ``dest`` and check its MD5."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (the user picks the URL)
    except urllib.error.HTTPError as e:
        e.close()
        raise UserError(f"{url}: HTTP {e.code} {e.reason}; check the address or pass --url") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"cannot reach {url} ({reason}); check the address and network, or pass --url") from None

    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        try:
            with open(dest, "wb") as f, tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=os.path.basename(url) or "download", disable=not progress,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            reason = str(e) or type(e).__name__
            raise UserError(f"download of {url} failed midway ({reason}); retry, or {_BY_HAND}") from None
    if total is not None and received != total:
        raise UserError(
            f"download of {url} was cut short ({received} of {total} bytes); retry, or {_BY_HAND}"
        )
    if md5 is not None and digest.hexdigest() != md5.lower():
        raise UserError(
            f"{url}: MD5 {digest.hexdigest()} does not match the expected {md5.lower()} "
            f"(corrupt or changed file); retry, or {_BY_HAND}"
        )


def _extract(archive: Path, dest: Path, url: str) -> Path:
    """Unpack ``archive`` into ``dest``; return the folder holding annotations/ and images/."""
    dest.mkdir()
    try:
        with tarfile.open(archive, "r:*") as tar:
            _check_members(tar, links_ok=_HAS_TAR_FILTERS)
            if _HAS_TAR_FILTERS:
                tar.extractall(dest, filter="data")
            else:
                tar.extractall(dest)
    except tarfile.TarError as e:
        raise UserError(f"{url}: unsafe or unreadable tarball ({e}); nothing was kept, {_BY_HAND}") from None
    except OSError as e:
        raise UserError(
            f"cannot unpack {url} next to the target folder ({e}); free some space or pick another --data-dir"
        ) from None

    for folder, subdirs, _ in os.walk(dest):
        subdirs.sort()
        if "images" in subdirs and _is_dataset(Path(folder)):
            return Path(folder)
    raise UserError(f"{url}: the tarball holds no images/ folder next to annotations/train.json; {_BY_HAND}")


def _check_members(tar: tarfile.TarFile, links_ok: bool) -> None:
    """Refuse absolute and ``..`` member names before anything is written.

    (The ``data`` filter would quietly strip a leading ``/``; we refuse it.)
    Without extraction filters (old Pythons), ``links_ok=False`` also refuses
    every link and special file, which the ``data`` filter otherwise polices.
    """
    for m in tar.getmembers():
        name = m.name.replace("\\", "/")
        if name.startswith("/") or os.path.isabs(m.name) or ".." in name.split("/"):
            raise tarfile.TarError(f"member {m.name!r} would land outside the target folder")
        if not links_ok and (m.issym() or m.islnk()):
            raise tarfile.TarError(f"member {m.name!r} is a link")
        if not links_ok and not (m.isfile() or m.isdir()):
            raise tarfile.TarError(f"member {m.name!r} is a special file")


def _install(root: Path, out_dir: Path, backup: Path) -> None:
    """Rename ``root`` to ``out_dir``; a replaced folder goes to ``backup`` (in the staging folder)."""
    try:
        if out_dir.exists():
            os.rename(out_dir, backup)
            try:
                os.rename(root, out_dir)
            except BaseException:
                os.rename(backup, out_dir)
                raise
        else:
            os.rename(root, out_dir)
    except OSError as e:
        raise UserError(f"cannot move the unpacked dataset to {out_dir} ({e}); pick another --data-dir") from None
