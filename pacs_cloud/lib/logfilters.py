"""Logging filters named in the settings' LOGGING."""

from __future__ import annotations

import logging


class RefusalWithoutTraceback(logging.Filter):
    """Keep a refused request (403) as a one-line warning, without the traceback Django attaches.

    A refusal is the access policy doing its job, not a fault: a traceback for
    each one buries real errors in the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "status_code", None) == 403:
            record.exc_info = None
            record.exc_text = None
        return True
