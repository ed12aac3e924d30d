"""Events to a file: one JSON object per line, rotated by size."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from labgate.events import Event
from labgate.workers.sinks.base import DeliveryError, DeliveryPolicy, Sink


class JsonLinesFileSink(Sink):
    """Event.to_json() lines appended to `path`; when the next line would pass max_bytes the file is renamed to
    path.1 (path.1 to path.2, ...) and a new one started.

    Lines are never lost or torn: rotation is renames only, a failed write is cut back to the last whole line,
    and a file moved away by someone else (logrotate) is noticed and `path` created again. Only `backups` old
    files are kept: the oldest beyond that is deleted, by design."""

    type = "file"

    def __init__(self, name: str, path: str | os.PathLike[str], *, max_bytes: int = 100 * 1024 * 1024,
                 backups: int = 5, policy: DeliveryPolicy | None = None) -> None:
        super().__init__(name, policy)
        if backups < 1:
            raise ValueError("backups must be at least 1 (rotation would delete lines)")
        self.path = Path(path)
        self.max_bytes, self.backups = max_bytes, backups
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._size = 0

    @property
    def connected(self) -> bool:
        return self._fd is not None

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
        self._fd, self._identity, self._size = fd, (st.st_dev, st.st_ino), st.st_size

    def _ensure_current(self) -> None:
        if self._fd is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._identity:
                    self._size = os.fstat(self._fd).st_size  # someone may have truncated it (copytruncate)
                    return
            except FileNotFoundError:
                pass
            self.close()
        self._open()

    def _rotate(self) -> None:
        self.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        start = self._size
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            try:
                os.ftruncate(self._fd, start)  # no torn line: the batch is written again whole
            except OSError:
                pass
            raise
        self._size = start + len(data)

    def send(self, events: Sequence[Event]) -> None:
        lines = [(event.to_json() + "\n").encode("utf-8") for event in events]
        done = 0
        try:
            self._ensure_current()
            while done < len(lines):
                room = self.max_bytes - self._size
                end, size = done, 0
                while end < len(lines) and size + len(lines[end]) <= room:
                    size += len(lines[end])
                    end += 1
                if end == done:
                    if self._size > 0:
                        self._rotate()
                        continue
                    end = done + 1  # one line longer than max_bytes gets a file of its own
                self._write(b"".join(lines[done:end]))
                done = end
        except OSError as exc:
            self.close()
            raise DeliveryError(f"writing {self.path}: {exc.strerror or exc}", delivered=done) from None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
