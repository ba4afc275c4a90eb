"""Producers: publish grant commands to the workers (Python API and CLI)."""

from producers.feed import FeedError, read_feed
from producers.publisher import Publisher, PublishFailed

__all__ = ["FeedError", "PublishFailed", "Publisher", "read_feed"]
