"""Storage failures for tests: a file whose reads past a point fail as a failing disk's do."""

from __future__ import annotations

import errno
import os


class ReadsFailPast:
    """A file opened for reading whose bytes past `good` the storage fails to read (EIO); its other
    reads, and everything else, are the file's own."""

    def __init__(self, handle, good: int):
        self.handle, self.good = handle, good

    def _check(self, size: int) -> None:
        if self.handle.tell() + max(size, 1) > self.good:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def read(self, size=-1):
        self._check(size if size is not None and size > 0 else 1 << 30)
        return self.handle.read(size)

    def readinto(self, buffer):
        self._check(len(buffer))
        return self.handle.readinto(buffer)

    def readline(self, size=-1):
        line = self.handle.readline(size)
        if self.handle.tell() > self.good:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return line

    def __iter__(self):
        return iter(self.readline, b"")

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()
