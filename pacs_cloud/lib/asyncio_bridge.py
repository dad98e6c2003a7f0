"""Calling channel-layer coroutines from synchronous code."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import async_to_sync

T = TypeVar("T")


def block_on(func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """``async_to_sync(func)(*args, **kwargs)``, also from a thread that runs an event loop.

    ``async_to_sync`` refuses to block a thread with a running loop (an async
    caller, or a test driving a browser); such a caller gets a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return async_to_sync(func)(*args, **kwargs)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(async_to_sync(func), *args, **kwargs).result()
