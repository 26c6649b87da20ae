"""Queue the monitoring model's events between Triton's threads and its one worker."""

from __future__ import annotations

import threading
from collections import deque


class EventQueue:
    """Hold what waits for the worker, bounded by count and by bytes.

    Events may carry images, so a count alone would let a burst hold gigabytes.
    Thread-safe; once closed, ``get`` hands out what is left, then None at once.
    """

    def __init__(self, max_items: int, max_bytes: int):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: deque[tuple[object, int]] = deque()
        self._bytes = 0
        self.closed = False
        self._changed = threading.Condition()

    def put(self, item, nbytes: int, timeout: float = 0.0) -> bool:
        """Append ``item`` if both bounds allow, waiting up to ``timeout`` s for room.

        Returns:
            True if queued; False if there was no room in time or the queue is closed.
        """
        def room():
            return self.closed or (len(self._items) < self.max_items
                                   and self._bytes + nbytes <= self.max_bytes)

        with self._changed:
            if not self._changed.wait_for(room, timeout) or self.closed:
                return False
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._changed.notify_all()
            return True

    def get(self, timeout: float):
        """Take the oldest item; None if none came within ``timeout`` s, or closed and empty."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._items or self.closed, timeout) \
                    or not self._items:
                return None
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._changed.notify_all()
            return item

    def close(self) -> None:
        """Refuse new items; ``get`` hands out what is left, then None."""
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def usage(self) -> tuple[int, int]:
        """Report (items, bytes) waiting."""
        with self._changed:
            return len(self._items), self._bytes
