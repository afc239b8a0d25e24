"""One admission point per model: ``SEQSERVE_MAX_QUEUE_SIZE`` bounds the texts waiting for it.

A request is admitted whole (all its texts) or refused whole with 503 + Retry-After, decided on
the event loop the moment it arrives, whatever the model threads are doing: the decision reads
and changes one counter under a lock that is only ever held for that (never while a model runs).

A text stops waiting exactly once, whichever comes first: an engine takes it (into a batch, or
into the decoder's running set), or its caller stops waiting for it (deadline, client gone).
So texts nobody waits for any more never hold places that a new request could use.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from service import metrics
from service.access_log import CURRENT_REQUEST_ID
from service.errors import Overloaded


class Waiting:
    """What a queued text carries so that its place is given back once (see ``Admission.leave``),
    and the id of the request it belongs to, for the log line of a failure."""

    __slots__ = ("request_id", "waiting")

    def __init__(self) -> None:
        self.waiting = False
        self.request_id = CURRENT_REQUEST_ID.get()


class Admission:
    def __init__(self, model: str, limit: int, version: str = "", unit: str = "texts") -> None:
        self.model = model
        self.limit = limit
        self.unit = unit  # what a place holds, as the 503 says it: a translator queues sentences
        self.waiting = 0
        # requests for this model parsed by the server but not yet started by the app (each one
        # brings at least one text): service/early_refusal.py counts them, on the event loop only
        self.arriving = 0
        self._lock = threading.Lock()
        self._depth = metrics.QUEUE_DEPTH.labels(model, version)
        metrics.QUEUE_LIMIT.labels(model, version).set(limit)
        self._rejected = metrics.REJECTED.labels(model, version, "queue_full")

    def full(self) -> bool:
        """No further text fits: the places are taken by texts waiting or by requests that have
        arrived and not yet reached ``admit`` (a lock-free read, as in ``refuse_if_full``)."""
        return self.waiting + self.arriving >= self.limit

    def refuse_if_full(self, count: int) -> None:
        """503 at once when ``count`` more texts would not fit now, before the costlier checks
        (tokenising) run for a request that would be refused anyway. A lock-free read: ``admit``
        decides for real."""
        if self.waiting + count > self.limit:
            self._refuse(self.waiting, count)

    def admit(self, texts: Sequence[Waiting]) -> None:
        """Count ``texts`` as waiting, all or none: 503 when they would not all fit."""
        with self._lock:
            if self.waiting + len(texts) > self.limit:
                waiting = self.waiting
                fits = False
            else:
                self.waiting += len(texts)
                for text in texts:
                    text.waiting = True
                fits = True
            # under the lock: set outside it, a worker's later count could land first and leave
            # the gauge showing a stale depth on an idle server
            self._depth.set(self.waiting)
        if not fits:
            self._refuse(waiting, len(texts))

    def _refuse(self, waiting: int, count: int) -> None:
        raise self.refusal(waiting, count)

    def refusal(self, waiting: int, count: int | None, arriving: int = 0) -> Overloaded:
        """The 503 for a request of ``count`` texts (None: not yet read), counted as rejected;
        ``arriving``: the requests ahead of it that hold places but are not yet counted as texts."""
        self.count_refusal()
        ahead = f" and {arriving} requests arriving" if arriving else ""
        brings = "" if count is None else f"; this request brings {count}"
        return Overloaded(f"model {self.model} has {waiting} {self.unit} waiting{ahead} (limit {self.limit}){brings}; "
                          "retry later", retry_after_s=1)

    def count_refusal(self) -> None:
        """Count one request refused for want of places (``refusal`` does; service/early_refusal.py
        also, where it answers again a refusal it has already made)."""
        self._rejected.inc()

    def leave(self, text: Waiting) -> None:
        """``text`` no longer waits (taken by an engine, or abandoned); a second call does nothing."""
        self.leave_all((text,))

    def leave_all(self, texts: Sequence[Waiting]) -> None:
        """``leave`` for each of ``texts`` (a window an engine took), under one lock and with one
        change of the gauge."""
        with self._lock:
            left = 0
            for text in texts:
                if text.waiting:
                    text.waiting = False
                    left += 1
            if left:
                self.waiting -= left
                self._depth.set(self.waiting)
