"""Triton system shared memory for a client on the same host as the server.

A POSIX shared-memory object (`/dev/shm/<name>`) is created and mapped by the client and
registered with the server under a region name; requests then say "the input is at offset o
of region r" instead of carrying the bytes, and outputs can be written by the server into the
region. Only the tensor bytes move this way: the request itself still goes over gRPC or HTTP.

One region is split into equal slots, one request in flight per slot, so that several
threads (or asyncio tasks) can use one client at once.
"""

from __future__ import annotations

import mmap
import os
import uuid
from pathlib import Path

import numpy as np

SHM_DIR = Path("/dev/shm")


class SharedMemoryRegion:
    """A named POSIX shared-memory object, mapped read-write; `key` is what the server opens."""

    def __init__(self, byte_size: int, name: str | None = None):
        if byte_size <= 0:
            raise ValueError(f"byte_size must be positive, got {byte_size}")
        if not SHM_DIR.is_dir():
            raise OSError(f"{SHM_DIR} is missing: system shared memory needs a Linux host")
        self.name = name or f"megaclass-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.key = "/" + self.name
        self.byte_size = byte_size
        self._path = SHM_DIR / self.name
        fd = os.open(self._path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, byte_size)
            self._map = mmap.mmap(fd, byte_size)
        finally:
            os.close(fd)

    def write(self, offset: int, array: np.ndarray) -> int:
        """Copy `array`'s bytes to `offset`; returns the byte count."""
        data = np.ascontiguousarray(array)
        n = data.nbytes
        if offset + n > self.byte_size:
            raise ValueError(f"{n} bytes at offset {offset} do not fit a {self.byte_size}-byte region")
        self._map[offset : offset + n] = data.tobytes()
        return n

    def read(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A copy of the array of `dtype` and `shape` stored at `offset`."""
        count = int(np.prod(shape))
        return np.frombuffer(self._map, dtype=dtype, count=count, offset=offset).reshape(shape).copy()

    def close(self) -> None:
        """Unmap and remove the object (the server must have unregistered it first)."""
        if not self._map.closed:
            self._map.close()
        self._path.unlink(missing_ok=True)

    def __del__(self) -> None:  # a forgotten region must not outlive the process in /dev/shm
        try:
            self.close()
        except Exception:
            pass


class SlotLayout:
    """Byte offsets of one request's tensors inside a slot: named parts of fixed sizes."""

    def __init__(self, parts: dict[str, int], align: int = 64):
        self.offsets: dict[str, int] = {}
        self.sizes = dict(parts)
        pos = 0
        for name, size in parts.items():
            self.offsets[name] = pos
            pos += -(-size // align) * align
        self.slot_bytes = max(pos, align)
