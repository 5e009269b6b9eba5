"""Reusable output buffers, so large results do not page-fault fresh memory every frame.

A result is sent zero-copy: ZeroMQ holds a reference to its numpy buffer until the bytes are
on the wire (and the server's de-duplication cache may hold it longer). A buffer is free again
when nobody but the pool references it, which CPython's reference count tells exactly.
"""

from __future__ import annotations

import sys
import threading

import numpy as np


class BufferPool:
    def __init__(self, max_buffers_per_shape: int = 32) -> None:
        self._free_check = max_buffers_per_shape
        self._pools: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def get(self, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            pool = self._pools.setdefault(key, [])
            for buf in pool:
                # 3 = the list, the loop variable, getrefcount's argument: nobody else holds it.
                if sys.getrefcount(buf) <= 3:
                    return buf
            buf = np.empty(shape, dtype)
            if len(pool) < self._free_check:
                pool.append(buf)
            return buf
