"""The embedded Celery broker: kombu's filesystem transport, made safe for several processes.

kombu's own ``_put`` creates the message file under its final name and then
writes it, so a consumer that lists the folder in between claims an empty or
half-written file and the worker dies on ``JSONDecodeError``. Here a message
is written under a name no consumer looks at, flushed to disk, then renamed
into place (``os.replace`` within one folder is atomic), so a consumer sees a
whole message or none. A consumer claims a message by renaming it into the
``processed`` folder beside the queue (same file system, so one rename wins
and no half-copy can be read, which ``shutil.move`` to ``/tmp`` allowed); a
file that still cannot be decoded is set aside in ``rejected/`` and logged,
never fatal to the worker.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property

log = logging.getLogger(__name__)

MESSAGE_SUFFIX = ".msg"
# Written first under this suffix, which no consumer matches, then renamed.
PARTIAL_SUFFIX = ".partial"


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu names it two ways
        name = f"{monotonic() * 1000:017.0f}_{uuid.uuid4()}.{queue}{MESSAGE_SUFFIX}"
        folder = self.data_folder_out
        partial = os.path.join(folder, f".{uuid.uuid4()}{PARTIAL_SUFFIX}")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, os.path.join(folder, name))
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add a message to {folder!r}") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        wanted = f"{queue}{MESSAGE_SUFFIX}"
        folder = self.data_folder_in
        for name in sorted(os.listdir(folder)):
            if name.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(self.claim_folder, name)
            try:
                os.rename(os.path.join(folder, name), claimed)
            except OSError:
                continue  # another consumer took it first
            try:
                with open(claimed, "rb") as f:
                    payload = f.read()
                message = loads(bytes_to_str(payload))
            except (OSError, ValueError) as exc:
                self._reject(claimed, name, exc)
                continue
            if not self.store_processed:
                os.unlink(claimed)
            return message
        raise Empty()

    def _reject(self, claimed: str, name: str, exc: Exception) -> None:
        rejected = Path(self.claim_folder).parent / "rejected"
        rejected.mkdir(exist_ok=True)
        try:
            os.replace(claimed, rejected / name)
        except OSError:
            pass
        log.error("Broker message %s could not be read and was set aside in %s: %s", name, rejected, exc)

    @cached_property
    def claim_folder(self) -> str:
        # The settings put it beside the queue folder, so the claiming rename
        # never crosses file systems.
        os.makedirs(self.processed_folder, exist_ok=True)
        return str(self.processed_folder)


class Transport(filesystem.Transport):
    Channel = Channel
