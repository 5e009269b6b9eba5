"""The shared-memory regions clients on this host attached (``livescope.shared_memory``).

Owned by the server's I/O thread: it attaches, detaches and reads frames from them. The worker
writes results through the region a job carries, so a region detached meanwhile stays mapped:
unmapping waits until no frame or result views it any more (retired, swept on the next attach).
"""

from __future__ import annotations

import numpy as np

from livescope.protocol import FrameHeader, SharedSlot
from livescope.server.recent import RecentlyUsed
from livescope.shared_memory import MappedRegion, SharedMemoryError

MAX_REGIONS = 64  # attachments kept at once, least recently used forgotten first


class SharedRegions:
    def __init__(self, limit: int = MAX_REGIONS) -> None:
        self._regions: RecentlyUsed[tuple[bytes, str], MappedRegion] = RecentlyUsed(limit, on_evict=self._retire)
        self._retired: list[MappedRegion] = []

    def attach(self, identity: bytes, region: str, token_hex: str) -> dict:
        try:
            token = bytes.fromhex(token_hex)
        except (ValueError, TypeError):
            raise SharedMemoryError("shm_attach: token must be the hex of the region's first 16 bytes") from None
        mapped = MappedRegion(region, token)
        old = self._regions.pop((identity, region), None)
        if old is not None:
            self._retire(old)
        self._regions.put((identity, region), mapped)
        self._retired = [r for r in self._retired if not r.close()]
        return {"region": region, "size_bytes": mapped.size_bytes}

    def detach(self, identity: bytes, region: str) -> dict:
        mapped = self._regions.pop((identity, region), None)
        if mapped is not None:
            self._retire(mapped)
        return {"region": region, "detached": mapped is not None}

    def frame(self, identity: bytes, header: FrameHeader) -> tuple[np.ndarray, MappedRegion]:
        """The frame's pixels, read-only and without a copy, and the region they lie in."""
        slot = header.shm
        assert slot is not None
        mapped = self._regions.get((identity, slot.region))
        if mapped is None:
            raise SharedMemoryError(f"shared-memory region {slot.region!r} is not attached by this client "
                                    "(attach it with shm_attach, or send the pixels in the message)")
        image = mapped.view(slot.offset_bytes, header.shape, header.dtype)
        image.flags.writeable = False
        return image, mapped

    def _retire(self, mapped: MappedRegion) -> None:
        if not mapped.close():
            self._retired.append(mapped)

    def close(self) -> None:
        for mapped in list(self._regions.values()):
            self._retire(mapped)
        self._regions.clear()


def result_area(mapped: MappedRegion, slot: SharedSlot, shape: tuple[int, ...],
                dtype: np.dtype | str) -> np.ndarray | None:
    """Where a final image result of ``shape`` and ``dtype`` goes in its frame's slot; None when it
    does not fit there."""
    if int(np.prod(shape)) * np.dtype(dtype).itemsize > slot.result_capacity_bytes:
        return None
    try:
        return mapped.view(slot.result_offset_bytes, shape, dtype)
    except SharedMemoryError:
        return None
