"""A grey 8-bit PNG from an array, with the standard library only: the plain install has no image
writer (imageio and Pillow come with the extras), and a report's thumbnails need nothing more."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def grey_png(image: np.ndarray) -> bytes:
    """``image`` (H, W) uint8 as PNG bytes."""
    image = np.ascontiguousarray(image, np.uint8)
    if image.ndim != 2:
        raise ValueError(f"a grey PNG is (H, W), not {image.shape}")
    h, w = image.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), image], axis=1)  # filter type 0 before each row
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _chunk(b"IEND", b""))


def stretched(image: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.8) -> np.ndarray:
    """``image`` as uint8, its ``low_pct``-``high_pct`` percentiles spread over 0-255."""
    a = np.asarray(image, np.float32)
    low, high = np.percentile(a, (low_pct, high_pct))
    return (np.clip((a - low) / max(float(high - low), 1e-6), 0, 1) * 255).astype(np.uint8)
