"""Frames between a client and a server on one host, through the client's shared memory.

A client makes a region of slots, one per frame in flight; each slot holds a frame and then its
result. It attaches the region to the server (control ``shm_attach``) with the region's name and
the random token written at its start: a client elsewhere cannot name a region of this host and
have the server read or write it. A frame's header then names its slot instead of carrying the
pixels, and the server writes a final image result into the slot's result area. ZeroMQ carries
the headers only; the bytes are copied once each way.

The client owns the region (and unlinks it; Python's resource tracker unlinks it if the client
dies); the server only maps it. Layout: the token in bytes 0-15, the slots from the first page
boundary, frame and result areas each rounded up to whole pages.
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
import uuid
import weakref
from collections import deque
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from livescope.protocol import SharedSlot

PAGE_BYTES = 4096
TOKEN_BYTES = 16
REGION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SharedMemoryError(Exception):
    """A region cannot be made, mapped or used; a one-line reason."""


def _pages(nbytes: int) -> int:
    return -(-nbytes // PAGE_BYTES) * PAGE_BYTES


@dataclass(frozen=True)
class SlotLayout:
    slots: int
    frame_bytes: int
    result_bytes: int

    @property
    def slot_bytes(self) -> int:
        return _pages(self.frame_bytes) + _pages(self.result_bytes)

    @property
    def size_bytes(self) -> int:
        return PAGE_BYTES + self.slots * self.slot_bytes

    def slot(self, region: str, index: int) -> SharedSlot:
        offset = PAGE_BYTES + index * self.slot_bytes
        return SharedSlot(region=region, offset_bytes=offset, result_offset_bytes=offset + _pages(self.frame_bytes),
                          result_capacity_bytes=self.result_bytes)


class ClientRegion:
    """The client's region: made here, written and read by the client, unlinked on close."""

    def __init__(self, layout: SlotLayout) -> None:
        self.layout = layout
        self.name = f"livescope-{uuid.uuid4().hex[:20]}"
        try:
            self._shm = shared_memory.SharedMemory(name=self.name, create=True, size=layout.size_bytes)
        except OSError as e:
            raise SharedMemoryError(f"cannot make a shared-memory region of {layout.size_bytes} bytes: "
                                    f"{e.strerror or e}") from None
        # Made by SharedMemory so that Python's resource tracker unlinks it should this process die;
        # used through a mapping of our own, which (unlike SharedMemory) may outlive close() quietly
        # while results lent from it are still held.
        try:
            self._map = _map(self.name, reserve=True)
        except SharedMemoryError:
            self._shm.close()
            self._shm.unlink()
            raise
        self._shm.close()
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._map[:TOKEN_BYTES] = self.token
        self._free = deque(range(layout.slots))  # appended to from any thread (a result's view dying)

    def slot(self, index: int) -> SharedSlot:
        return self.layout.slot(self.name, index)

    def take(self) -> int | None:
        """A free slot, now the caller's; None when all are taken."""
        try:
            return self._free.pop()
        except IndexError:
            return None

    @property
    def idle(self) -> bool:
        """No slot holds a frame in flight or a result still read."""
        return len(self._free) == self.layout.slots

    def give_back(self, index: int) -> None:
        self._free.append(index)

    def lend(self, offset_bytes: int, shape: tuple[int, ...], dtype: np.dtype | str, index: int) -> np.ndarray:
        """A read-only view of what lies at ``offset_bytes`` in slot ``index``, without a copy: the slot
        is given back only once nothing views it any more, so it never holds another frame's result
        while the caller still reads this one."""
        view = self._view(offset_bytes, shape, dtype)
        view.flags.writeable = False
        weakref.finalize(view, self._free.append, index)
        return view

    def write_frame(self, index: int, image: np.ndarray) -> SharedSlot:
        slot = self.slot(index)
        np.copyto(self._view(slot.offset_bytes, image.shape, image.dtype), image)
        return slot

    def read(self, offset_bytes: int, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        """A copy of what lies at ``offset_bytes`` (the slot is used again after)."""
        return self._view(offset_bytes, shape, dtype).copy()

    def _view(self, offset_bytes: int, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        count = int(np.prod(shape))
        return np.frombuffer(self._map, np.dtype(dtype), count, offset_bytes).reshape(shape)

    def close(self) -> None:
        """Unlink the region; it stays mapped while results lent from it are still held."""
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass
        try:
            self._map.close()
        except BufferError:
            pass  # unmapped when the last view goes


class MappedRegion:
    """A client's region as the server maps it (never unlinked here: it is the client's)."""

    def __init__(self, name: str, token: bytes) -> None:
        if not REGION_NAME.fullmatch(name):
            raise SharedMemoryError(f"{name!r} is not a shared-memory region name (1-64 of A-Z a-z 0-9 _ . -)")
        self.name = name
        self._map = _map(name)
        if len(token) != TOKEN_BYTES or self._map[:TOKEN_BYTES] != token:
            self._map.close()
            raise SharedMemoryError(f"shared-memory region {name!r} does not hold the token given: "
                                    "a client may attach only a region it made")
        self.size_bytes = len(self._map)

    def view(self, offset_bytes: int, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        """The array at ``offset_bytes`` without a copy; SharedMemoryError if it lies outside the region."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if offset_bytes < PAGE_BYTES or offset_bytes + nbytes > self.size_bytes:
            raise SharedMemoryError(f"bytes {offset_bytes}-{offset_bytes + nbytes} lie outside the slots of "
                                    f"shared-memory region {self.name!r} ({self.size_bytes} bytes)")
        return np.frombuffer(self._map, dtype, int(np.prod(shape)), offset_bytes).reshape(shape)

    def close(self) -> bool:
        """Unmap; False while arrays still view it (a frame being processed): try again later."""
        try:
            self._map.close()
        except BufferError:
            return False
        return True


def _map(name: str, reserve: bool = False) -> mmap.mmap:
    """Map an existing region without Python's resource tracker, which would unlink the client's
    region when the server exits (and it is not the server's to unlink). ``reserve``: allocate its
    memory now, so that a full /dev/shm refuses it here rather than killing a process that writes
    to it later (SIGBUS)."""
    if os.name != "posix":
        raise SharedMemoryError("shared memory between client and server is used on POSIX hosts only: "
                                "frames go through the socket")
    import _posixshmem  # what multiprocessing.shared_memory itself opens regions with

    try:
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
    except FileNotFoundError:
        raise SharedMemoryError(f"no shared-memory region {name!r} on the server's host (the client runs on "
                                "another host or in another container): frames go through the socket") from None
    except OSError as e:
        raise SharedMemoryError(f"cannot open shared-memory region {name!r}: {e.strerror or e}") from None
    try:
        if reserve and hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        return mmap.mmap(fd, os.fstat(fd).st_size)
    except (OSError, ValueError) as e:
        raise SharedMemoryError(f"cannot map shared-memory region {name!r}: {e}") from None
    finally:
        os.close(fd)
