"""Producers: publish commands to the workers (a Python library, sync and
asyncio, and ``grants publish``). Needs ``schemas``, the settings and
redis-py only: neither Celery nor the worker."""

from producers.aio import AsyncPublisher
from producers.feed import FeedError, read_feed
from producers.publisher import Publisher, PublishFailed

__all__ = ["AsyncPublisher", "FeedError", "PublishFailed", "Publisher", "read_feed"]
