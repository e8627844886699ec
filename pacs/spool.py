"""The listener's spool: received images on disk, each under a name the peer does not choose, within a size
limit.

A file's name is the SHA-256 of the image's (already validated) SOP Instance UID, so the same image sent
twice lands on the same file and no peer string ever becomes a path; the temporary file it is written to
first has a random name. Every path is checked to resolve inside the spool before it is opened. Writing is
temporary name, fsync, rename, then fsync of the folder: once `put` returns, the image survives a crash.

`put` refuses (SpoolFull) an image that would take the spool beyond `max_bytes`; the listener answers that
with Out of Resources (PS3.4 B.2.3, 0xA700) and the sender tries again later. The size counted is that of
the images held plus those being written, so concurrent associations cannot overshoot it together.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from pathlib import Path

SUFFIX = ".dcm"
_PARTIAL = ".part"


class SpoolFull(OSError):
    """No room for this image within the spool's limit."""


def spool_name(sop_instance_uid: str) -> str:
    """The spool file name of an image: a digest of its UID, never the UID itself."""
    return hashlib.sha256(sop_instance_uid.encode("ascii")).hexdigest() + SUFFIX


class Spool:
    """A folder of images waiting to be processed; thread-safe."""

    def __init__(self, folder: Path, *, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        # The spool holds patient images: readable by this user alone (a folder made earlier keeps its mode).
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = folder.resolve()
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        self._reserved = 0
        for partial in self.folder.glob(f".*{_PARTIAL}"):
            partial.unlink(missing_ok=True)  # never acknowledged: the sender will send it again
        for held in self.folder.glob(f"*{SUFFIX}"):
            self._sizes[held.name] = held.stat().st_size

    def _inside(self, name: str) -> Path:
        path = (self.folder / name).resolve()
        if path.parent != self.folder:
            raise ValueError("a spool path outside the spool")
        return path

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values()) + self._reserved

    def held(self) -> list[Path]:
        """The images in the spool, oldest first (left by an earlier run, or received since)."""
        paths = [self._inside(name) for name in list(self._sizes)]
        return sorted((path for path in paths if path.exists()), key=lambda path: path.stat().st_mtime)

    def put(self, sop_instance_uid: str, data: bytes) -> Path:
        """Write `data` durably as the image `sop_instance_uid` (a validated UID); SpoolFull when it does not
        fit. Other OSErrors (disk full, permissions) propagate; nothing partial is left behind."""
        target = self._inside(spool_name(sop_instance_uid))
        with self._lock:
            replaced = self._sizes.get(target.name, 0)
            if sum(self._sizes.values()) - replaced + self._reserved + len(data) > self.max_bytes:
                raise SpoolFull("the spool is full")
            self._reserved += len(data)
        partial = self._inside(f".{secrets.token_hex(16)}{_PARTIAL}")
        try:
            with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, target)
            directory = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            with self._lock:
                self._sizes[target.name] = len(data)
        except OSError:
            partial.unlink(missing_ok=True)
            raise
        finally:
            with self._lock:
                self._reserved -= len(data)
        return target

    def remove(self, path: Path) -> None:
        """Drop an image once the ledger has a final answer for it."""
        inside = self._inside(path.name)
        inside.unlink(missing_ok=True)
        with self._lock:
            self._sizes.pop(inside.name, None)
