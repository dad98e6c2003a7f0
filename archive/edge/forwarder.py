"""The forwarder: the outbox to the cloud over STOW-RS, and nothing ever dropped silently.

Several workers (``EDGE_FORWARD_CONCURRENCY``) each take a batch of due
instances (``EDGE_FORWARD_BATCH``, oldest first) and send it in one STOW-RS
request. The cloud answers per instance (PS3.18 §10.5.3): the Referenced SOP
Sequence lists what it stored, the Failed SOP Sequence what it refused and
why. Then:

* stored: the edge asks which SHA-256 the cloud now holds for each; equal to
  its own, the instance is ``forwarded`` (and only then may it be evicted);
* refused for good (cannot understand, SOP class or transfer syntax not
  supported, conflict with other content, inconsistent with the archive):
  ``quarantined`` with the reason, shown on the edge's status page and
  reported to the cloud;
* refused because it is larger than the cloud takes (out of resources, with
  the cloud's reason saying so, or HTTP 413): quarantined at once, as no
  retry can succeed;
* refused for now (out of resources), not mentioned, or no usable answer at
  all (the cloud or the link is down): retried later, with exponential
  backoff and full jitter per instance, and one shared pause for all workers
  while the cloud does not answer. An instance the cloud keeps refusing is
  quarantined with the last reason after ``max_refusals`` such answers
  (``EDGE_REFUSED_MAX_ATTEMPTS``); an unreachable cloud never counts;
* a request the cloud fails with an internal error (HTTP 500) while it
  answers others: the batch is split and each instance sent on its own, so
  one object the cloud cannot take holds back none of the others; an
  instance that alone keeps failing so counts as refused, and is quarantined
  after ``max_refusals`` such answers.

Everything lives in the outbox, so a restart resumes where the last run
stopped; re-sending what the cloud already has is harmless (an identical
object is recognised as a duplicate, not stored twice).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..ingest import TOO_LARGE
from .client import Cloud, CloudRefused, CloudUnavailable
from .outbox import Outbox, Row

log = logging.getLogger(__name__)

# Failure Reason (0008,1197) values worth another try (PS3.4 B.2.3: out of resources).
TRANSIENT_FAILURES = {0xA700, 0xA701, 0xA702, 0x0110}
BASE_DELAY = 0.5
INTERNAL_ERROR = 500  # the cloud is up but failed the request; 502-504 mean it (or its proxy) is away
RECEIVING_GRACE = 0.5  # seconds after the last C-STORE during which forwarding waits ...
MAX_DEFERRAL = 15.0  # ... unless the oldest waiting instance is older than this


def _sequence_items(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = answer.get(tag) or {}
    return [item for item in element.get("Value", []) if isinstance(item, dict)]


def _value(item: dict[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def backoff(attempts: int, maximum: float) -> float:
    """Exponential backoff with full jitter: a random pause up to BASE·2^attempts, capped."""
    return random.uniform(0, min(maximum, BASE_DELAY * 2 ** min(attempts, 30))) + 0.05


class Forwarder:
    def __init__(
        self,
        outbox: Outbox,
        cloud: Cloud,
        *,
        batch: int,
        concurrency: int,
        max_delay: float,
        max_refusals: int = 20,
    ) -> None:
        self.max_refusals = max(1, max_refusals)
        self.outbox = outbox
        self.cloud = cloud
        self.batch = max(1, batch)
        self.concurrency = max(1, concurrency)
        self.max_delay = max_delay
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._held: dict[str, int] = {}
        self._receiving_until = 0.0
        self._down_until = 0.0
        self._failures = 0
        self._threads: list[threading.Thread] = []
        self.last_error = ""
        self.sent = 0

    # Lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        for number in range(self.concurrency):
            thread = threading.Thread(target=self._work, args=(number,), name=f"edge-forward-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self.wake()
        for thread in self._threads:
            thread.join(timeout)

    @contextmanager
    def holding(self, uid: str) -> Iterator[None]:
        """Keep ``uid`` out of every batch while the block runs (its file is being written)."""
        with self._lock:
            self._held[uid] = self._held.get(uid, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._held[uid] -= 1
                if not self._held[uid]:
                    del self._held[uid]

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def received(self) -> None:
        """A modality just stored an instance: while images keep arriving, forwarding leaves the
        disk and the processor to the modality, and resumes a moment after the last one; during
        a long ingest one worker forwards what has waited longer than MAX_DEFERRAL."""
        self._receiving_until = time.time() + RECEIVING_GRACE
        self.wake()

    @property
    def cloud_down(self) -> bool:
        return time.time() < self._down_until

    # The loop ---------------------------------------------------------------------------

    def _take(self) -> list[Row]:
        with self._lock:
            rows = self.outbox.due(self.batch, self._in_flight | set(self._held))
            self._in_flight.update(row.sop_instance_uid for row in rows)
        return rows

    def _overdue(self) -> bool:
        age = self.outbox.oldest_pending_age()
        return age is not None and age > MAX_DEFERRAL

    def _pause(self) -> float:
        now = time.time()
        if now < self._down_until:
            return self._down_until - now
        following = self.outbox.next_due_at()
        return 1.0 if following is None else min(1.0, max(0.01, following - now))

    def _work(self, number: int = 0) -> None:
        while not self._stop.is_set():
            if time.time() < self._receiving_until and (number or not self._overdue()):
                self._stop.wait(RECEIVING_GRACE / 2)
                continue
            rows = [] if self.cloud_down else self._take()
            if not rows:
                with self._wake:
                    self._wake.wait(self._pause())
                continue
            try:
                self.forward(rows)
            except Exception:
                # Never lose the loop: the rows stay pending and come back after a pause.
                log.exception("forwarding a batch failed")
                self.outbox.retry_later(
                    [r.sop_instance_uid for r in rows],
                    {r.sop_instance_uid: backoff(r.attempts, self.max_delay) for r in rows},
                    "edge error while forwarding",
                )
            finally:
                with self._lock:
                    self._in_flight.difference_update(row.sop_instance_uid for row in rows)

    def _unavailable(self, rows: list[Row], reason: str) -> None:
        with self._lock:
            self._failures += 1
            self._down_until = time.time() + backoff(self._failures, self.max_delay)
        self.last_error = reason
        self.outbox.retry_later(
            [r.sop_instance_uid for r in rows],
            {r.sop_instance_uid: backoff(r.attempts, self.max_delay) for r in rows},
            reason,
        )

    def _failed_inside(self, rows: list[Row], reason: str) -> None:
        """The cloud answered, but failed the request: find the instance it fails on."""
        if len(rows) > 1:
            for row in rows:
                self.forward([row])
            return
        row = rows[0]
        reason = f"the cloud failed on this instance ({reason})"
        if row.refusals + 1 < self.max_refusals:
            self.outbox.retry_later(
                [row.sop_instance_uid],
                {row.sop_instance_uid: backoff(row.attempts, self.max_delay)},
                reason,
                refused=True,
            )
            return
        reason = f"{reason} ({row.refusals + 1} times)"
        log.warning("quarantined %s: %s", row.sop_instance_uid, reason)
        self.outbox.quarantine(row.sop_instance_uid, row.sha256, reason, None)

    def forward(self, rows: list[Row]) -> None:
        """Send one batch and settle every instance of it: forwarded, quarantined or retried later."""
        present = [r for r in rows if Path(r.path).exists()]
        for row in rows:
            if row not in present:
                # Not silently: the local copy vanished before the cloud had it.
                self.outbox.quarantine(row.sop_instance_uid, row.sha256, "the local copy is missing", None)
        if not present:
            return
        try:
            _, answer = self.cloud.stow([Path(r.path) for r in present])
        except CloudUnavailable as exc:
            if exc.status == INTERNAL_ERROR:
                self._failed_inside(present, str(exc))
            else:
                self._unavailable(present, str(exc))
            return
        except CloudRefused as exc:
            if len(present) > 1:
                # Find the instance the request failed on: each goes again on its own.
                for row in present:
                    self.forward([row])
                return
            row = present[0]
            reason = f"refused by the cloud ({exc})"
            log.warning("quarantined %s: %s", row.sop_instance_uid, reason)
            self.outbox.quarantine(row.sop_instance_uid, row.sha256, reason, None)
            return
        stored = {_value(item, "00081155") for item in _sequence_items(answer, "00081199")}
        failed = {
            _value(item, "00081155"): (_value(item, "00081197"), _value(item, "00000902") or "")
            for item in _sequence_items(answer, "00081198")
        }
        by_uid = {r.sop_instance_uid: r for r in present}
        confirmed: dict[str, str] = {}
        if stored:
            try:
                confirmed = self.cloud.confirm(sorted(uid for uid in stored if uid in by_uid))
            except CloudUnavailable as exc:
                self._unavailable([by_uid[u] for u in stored if u in by_uid], str(exc))
                stored = set()
        with self._lock:
            self._failures = 0
            self._down_until = 0.0
        retry: list[Row] = []
        same = {uid: sha for uid, sha in confirmed.items() if uid in by_uid and by_uid[uid].sha256 == sha}
        self.sent += self.outbox.mark_forwarded(same)
        # A failure the cloud could not attribute to an instance: the unmentioned ones may be it.
        unattributed = failed.get(None)
        for uid, row in by_uid.items():
            if uid in same:
                continue
            if uid in failed or (unattributed is not None and uid not in stored and uid not in confirmed):
                code, comment = failed.get(uid) or unattributed or (None, "")
                reason = f"refused by the cloud (0x{code or 0:04X}): {comment or 'no reason given'}"
                if code in TRANSIENT_FAILURES and not str(comment).startswith(TOO_LARGE):
                    if row.refusals + 1 < self.max_refusals:
                        self.outbox.retry_later(
                            [uid], {uid: backoff(row.attempts, self.max_delay)}, reason, refused=True
                        )
                        continue
                    reason = f"{reason} ({row.refusals + 1} times)"
                log.warning("quarantined %s: %s", uid, reason)
                self.outbox.quarantine(uid, row.sha256, reason, code)
            elif uid in confirmed:
                self.outbox.quarantine(uid, row.sha256, "the cloud holds other content under this UID", None)
            else:  # not mentioned, or stored but not confirmed yet
                retry.append(row)
        if retry:
            self.outbox.retry_later(
                [r.sop_instance_uid for r in retry],
                {r.sop_instance_uid: backoff(r.attempts, self.max_delay) for r in retry},
                "not confirmed by the cloud yet",
            )
