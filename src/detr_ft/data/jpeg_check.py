"""Whether a JPEG file is complete, without decoding it: an end-of-image marker after its first scan.

A truncated JPEG (an interrupted download or copy) fails only when a data loader
worker first decodes it; this check finds it while the dataset is read. It reads the file's head and tail only, where that
settles it (``jpeg_file_is_complete``).
"""

from __future__ import annotations

import os
from pathlib import Path

JPEG_HEAD_BYTES = 1 << 16  # marker segments before the first scan (EXIF included) fit in this, as a rule
JPEG_TAIL_BYTES = 1 << 12


def _jpeg_scan_start(data: bytes) -> int | None:
    """Offset of the first scan's entropy-coded data in a JPEG stream's leading bytes.

    Walks the marker segments from the start (so an EXIF thumbnail's own end
    marker is skipped over) to the first start-of-scan. -1 when the stream is
    not well formed (or ends) before it; None when ``data`` runs out first.
    """
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return -1
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker == 0xD9:
            return -1
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:
            return pos + 2 + length
        pos += 2 + length
    return None


def jpeg_is_complete(data: bytes) -> bool:
    """True when a JPEG stream has an end-of-image marker after its first scan.

    Inside entropy-coded data ``FF`` is always followed by ``00`` or a restart
    marker, so ``FF D9`` after the first scan starts is found only if the file
    reaches its end marker.
    """
    scan = _jpeg_scan_start(data)
    return scan is not None and scan >= 0 and data.find(b"\xff\xd9", scan) != -1


def jpeg_file_is_complete(path: Path) -> bool:
    """``jpeg_is_complete`` of a file, reading its head and its tail only where that settles it.

    An end marker in the tail, after the first scan, is the end marker; only a
    file with more than a few KB after it (or none) is read through.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(JPEG_HEAD_BYTES)
        scan = _jpeg_scan_start(head)
        if scan is None and size > len(head):
            f.seek(0)
            scan = _jpeg_scan_start(f.read())
        if scan is None or scan < 0:
            return False
        tail_start = max(scan, size - JPEG_TAIL_BYTES)
        f.seek(tail_start)
        if f.read().find(b"\xff\xd9") != -1:
            return True
        if tail_start == scan:
            return False
        f.seek(scan)
        return f.read().find(b"\xff\xd9") != -1
