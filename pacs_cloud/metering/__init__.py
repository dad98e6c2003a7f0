"""Usage metering per institution: counters every app writes, the price list and monthly statements.

The bottom layer, so every app may count: :func:`record_usage` (one upsert in
the caller's transaction, for events that are rare next to images: a report
signed, a pool reading, a study opened) and :func:`count_later` (an in-memory
add, written in one batch about once a second, for the per-image hot paths:
instances received, images rendered). Counters are kept per institution and
per *local* day of the institution, so a month's statement is a sum of days
whose boundaries are the institution's midnight (Asia/Shanghai: 16:00 UTC).
"""

from .counters import count_later, flush, record_usage, set_usage

__all__ = ["count_later", "flush", "record_usage", "set_usage"]
