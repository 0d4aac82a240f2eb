"""The gRPC transport's bounded inbox: the messages one peer has sent and this party has not
yet received, bounded in count and payload bytes, with the two control items the link
threads queue (BYE from the peer, a wake-up after a fatal error).  Used by
:mod:`mpcache.net.grpc_transport`, whose docstring states the bounds' semantics."""
from __future__ import annotations

import collections
import queue
import threading


class Closed:
    """Inbox sentinel: the sender said BYE (it finished)."""


WAKE = object()   # inbox sentinel: a fatal error was recorded, re-check it


class Inbox:
    """The messages received from one peer and not yet taken by ``recv``, bounded in
    count and payload bytes (see mpcache/net/grpc_transport.py's docstring).  ``put``
    blocks while full; control items (BYE, wake-ups) are never held back."""

    def __init__(self, max_messages: int, max_bytes: int):
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._items: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self.nbytes = 0

    def put(self, item, nbytes: int = 0, alive=None) -> bool:
        """Queue ``item``, waiting for room; False (item dropped) once ``alive()`` says
        the transport is no longer running."""
        with self._cv:
            while self._items and (len(self._items) >= self.max_messages or
                                   self.nbytes + nbytes > self.max_bytes):
                if alive is not None and not alive():
                    return False
                self._cv.wait(0.05)
            self._items.append((item, nbytes))
            self.nbytes += nbytes
            self._cv.notify_all()
        return True

    def put_control(self, item) -> None:
        with self._cv:
            self._items.append((item, 0))
            self._cv.notify_all()

    def get(self, timeout: float | None = None):
        with self._cv:
            if not self._cv.wait_for(lambda: self._items, timeout):
                raise queue.Empty
            item, nbytes = self._items.popleft()
            self.nbytes -= nbytes
            self._cv.notify_all()
            return item

    def __len__(self) -> int:
        return len(self._items)
