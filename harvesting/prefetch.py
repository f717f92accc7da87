"""A batch iterator run in a background thread that never outlives its consumer."""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Iterator

import torch


_DONE = object()
# (stop, thread) of every running prefetcher: stopped and joined at interpreter exit, because a
# daemon thread still inside a torch op when the interpreter tears down aborts the process
# ("terminate called without an active exception", exit 134) after a script takes a few batches.
_LIVE: set[tuple[threading.Event, threading.Thread]] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for stop, _ in live:
        stop.set()
    for _, thread in live:
        thread.join(timeout=10)


class _Prefetched:
    """Run a batch iterator in a background thread, `depth` batches ahead (torch releases the GIL
    for I/O and copies).

    The thread never outlives its consumer: `close()` (also called by `with`, by the end of the
    epoch, by an error on either side, and when the consumer drops the iterator) stops it, closes
    the inner iterator and joins the thread. Every wait of the thread has a timeout, so it notices
    the stop even when the queue is full.
    """

    def __init__(self, it: Iterator[dict[str, torch.Tensor]], depth: int) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_prefetch_work, args=(it, self._q, self._stop), daemon=True,
                                        name="cache-prefetch")
        with _LIVE_LOCK:
            _LIVE.add((self._stop, self._thread))
        self._thread.start()

    def __iter__(self) -> "_Prefetched":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._stop.is_set():
            raise StopIteration
        while True:
            try:
                item = self._q.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._q.empty():
                    self.close()
                    raise StopIteration from None
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        while True:  # free the queued batches (and unblock a put)
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> "_Prefetched":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()


def _prefetch_work(it: Iterator[dict[str, torch.Tensor]], q: queue.Queue, stop: threading.Event) -> None:
    """The thread's loop; holds no reference to its `_Prefetched`, so dropping that stops it."""

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in it:
            if not put(item):
                return
        put(_DONE)
    except BaseException as e:  # surfaced in the consumer
        put(e)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
        with _LIVE_LOCK:
            _LIVE.discard((stop, threading.current_thread()))


def prefetched(it: Iterator[dict[str, torch.Tensor]], depth: int) -> _Prefetched:
    return _Prefetched(it, depth)
