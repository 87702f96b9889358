"""A limiter shared by every worker and host through Redis (the ``[redis]`` extra).

``RedisRateLimiter`` implements the same contract as the in-memory ``RateLimiter``; see
``docs/redis.md`` for running many workers, failure modes and naming the shared key.
"""

from .limiter import BackendErrorMode, RedisRateLimiter

__all__ = ["BackendErrorMode", "RedisRateLimiter"]
