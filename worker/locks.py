"""A lease-style lock in Redis: one holder at a time, renewed while it works.

The sweeper and the ingestion loop each want one worker acting at a time.
The holder renews the lock on every round; if it dies, the lock expires and
another worker's loop takes it over. Correctness never rests on the lock
alone (the ledger's scripts are fenced or compare-and-set), it only keeps
the others from doing the same work twice.
"""

from __future__ import annotations

import uuid

import redis

# Renew if we hold it, take it if nobody does; 1 if held after the call.
_HOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lock:
    """``key`` held by this process while :meth:`hold` keeps returning True."""

    def __init__(self, client: redis.Redis, key: str, ttl_ms: int):
        self.key = key
        self.ttl_ms = ttl_ms
        self.me = uuid.uuid4().hex
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)

    def hold(self) -> bool:
        """Take or renew the lock for another ``ttl_ms``; False if another holds it."""
        return bool(self._hold(keys=[self.key], args=[self.me, self.ttl_ms]))

    def release(self) -> None:
        """Give the lock up now (on shutdown), if we hold it."""
        self._release(keys=[self.key], args=[self.me])
