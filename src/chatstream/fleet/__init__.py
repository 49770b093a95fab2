"""Many instances as one service: runs shared through Redis.

Each run's event log mirrored to a Redis stream (`redis_mirror`, `redis_log`),
followed from any instance (`redis_remote`, `redis_registry`), ended by
another when its instance dies or hangs (`redis_takeover`, leases and
fencing); sessions' live state (`redis_sessions`), the global run cap
(`redis_slots`), the key layout (`redis_keys`), and the one link that opens
and closes all of it with the instance (`shared`).
"""
