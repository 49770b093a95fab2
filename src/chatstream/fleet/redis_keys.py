"""Where a shared run lives in Redis, and the scripts that change it atomically.

    {prefix}:run:{id}            hash: owner, session, instance, fence, status, last_seq, cancel
    {prefix}:run:{id}:events     stream: one entry per event, entry id `0-<seq>`, so that
                                 `Last-Event-ID: N` is the stream position `0-N`
    {prefix}:session:{id}:runs   set: the session's live runs (for "its live runs")
    {prefix}:leases              sorted set: live run id → lease expiry (ms, Redis' clock)
    {prefix}:cancel              pub/sub channel: "<run id> <status>" for the owning instance

`status` is `live` while the owning instance holds the run, `ending` once
another instance has taken over a run whose lease lapsed, then the message
status (`complete`, `cancelled`, `error`, `interrupted`). `fence` is the
holder's fencing token: 1 for the instance that started the run, one more
with each takeover; every write names the token it holds and is refused
once another holds the run, so a holder that was paused (SIGSTOP, a stuck
loop, a partition) and wakes after its lease lapsed changes nothing. Lease times are
read from Redis' own clock (`TIME`), so hosts whose clocks disagree agree on
when a lease lapsed. Every key has an expiry: while a run lives, longer than
it may live (refreshed with each write); after it ends,
`CHATSTREAM_RUN_RETENTION_S`. Scripts answer `{code, value}`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RunKeys:
    meta: str
    events: str
    session_runs: str


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.leases = f"{prefix}:leases"
        self.cancel_channel = f"{prefix}:cancel"

    def run(self, run_id: uuid.UUID | str, session_id: uuid.UUID | str) -> RunKeys:
        return RunKeys(
            meta=self.meta(run_id),
            events=self.events(run_id),
            session_runs=self.session_runs(session_id),
        )

    def meta(self, run_id: uuid.UUID | str) -> str:
        return f"{self.prefix}:run:{run_id}"

    def events(self, run_id: uuid.UUID | str) -> str:
        return f"{self.prefix}:run:{run_id}:events"

    def session_runs(self, session_id: uuid.UUID | str) -> str:
        return f"{self.prefix}:session:{session_id}:runs"


# Redis' clock, in milliseconds (scripts may call TIME since Redis 5).
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

APPENDED = 1
TAKEN_OVER = -1  # another instance ended the run: stop it here
RESEND_ALL = -2  # Redis lost the run (a restart): send it again from its first event
RESEND_FROM = -3  # Redis lost its tail (a failover): send again after `value`
OWNER_FENCE = 1  # the fencing token of the instance that starts a run

# Append a run's new events, as its owning instance, and renew its lease.
# Creates the run on its first call. Events at or below the stored last_seq
# are skipped, so a retry after a lost answer never duplicates one; a gap
# (events Redis lost) is never written over.
#
# KEYS: meta, events, session_runs, leases
# ARGV: instance, owner, session, live_ttl_s, retention_s, lease_ms,
#       final_status ('' while live), run_id, fence, then (seq, type, json) per event
APPEND = (
    _NOW
    + """
local meta, events, session_runs, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local instance, final, run_id = ARGV[1], ARGV[7], ARGV[8]
local first = tonumber(ARGV[10])
if first == nil then return {1, 0} end
if redis.call('EXISTS', meta) == 1 then
  if redis.call('HGET', meta, 'instance') ~= instance
     or (redis.call('HGET', meta, 'fence') or '1') ~= ARGV[9]  -- (none: before fences)
     or redis.call('HGET', meta, 'status') ~= 'live' then
    return {-1, 0}
  end
else
  if first > 1 then return {-2, 0} end
  redis.call('DEL', events)  -- a stream left from before Redis lost the hash
  redis.call('HSET', meta, 'owner', ARGV[2], 'session', ARGV[3], 'instance', instance,
             'fence', ARGV[9], 'status', 'live', 'last_seq', 0)
end
local last = tonumber(redis.call('HGET', meta, 'last_seq'))
if first > last + 1 then return {-3, last} end
local top = last
for i = 10, #ARGV, 3 do
  local seq = tonumber(ARGV[i])
  if seq > top then
    redis.call('XADD', events, '0-' .. seq, 't', ARGV[i + 1], 'd', ARGV[i + 2])
    top = seq
  end
end
redis.call('HSET', meta, 'last_seq', top)
if final ~= '' then
  redis.call('HSET', meta, 'status', final)
  redis.call('ZREM', leases, run_id)
  redis.call('SREM', session_runs, run_id)
  redis.call('EXPIRE', meta, ARGV[5])
  redis.call('EXPIRE', events, ARGV[5])
else
  redis.call('ZADD', leases, now + tonumber(ARGV[6]), run_id)
  redis.call('SADD', session_runs, run_id)
  redis.call('EXPIRE', meta, ARGV[4])
  redis.call('EXPIRE', events, ARGV[4])
  redis.call('EXPIRE', session_runs, ARGV[4])
end
redis.call('EXPIRE', leases, ARGV[4])
return {1, top}
"""
)

# Renew the leases of runs this instance holds (those it no longer holds are left).
# KEYS: leases, then each run's meta; ARGV: lease_ms, live_ttl_s, then (run id, fence)
RENEW = (
    _NOW
    + """
for i = 3, #ARGV, 2 do
  local meta = KEYS[(i - 1) / 2 + 1]
  if redis.call('ZSCORE', KEYS[1], ARGV[i])
     and (redis.call('HGET', meta, 'fence') or '1') == ARGV[i + 1]
     and redis.call('HGET', meta, 'status') == 'live' then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {1, 0}
"""
)

# Ask the owning instance to stop a run. 1: it was live (the caller then
# publishes); 0: it has ended; -1: no such run.
# KEYS: meta; ARGV: status
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {-1, 0} end
if status ~= 'live' and status ~= 'ending' then return {0, 0} end
redis.call('HSET', KEYS[1], 'cancel', ARGV[1])
return {1, 0}
"""

# The runs whose lease has lapsed, by Redis' clock. KEYS: leases
LAPSED = (
    _NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
"""
)

# Take over a run whose lease lapsed (or whose earlier taker lapsed too): one
# instance wins, and holds the run under a lease of its own, and the next
# fencing token, until it has ended it. {1, fence}: this instance did.
# KEYS: leases, meta; ARGV: run_id, instance, lease_ms
CLAIM = (
    _NOW
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > now then return {0, 0} end
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= 'live' and status ~= 'ending' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return {0, 0}
end
redis.call('HSET', KEYS[2], 'status', 'ending', 'instance', ARGV[2])
redis.call('HSETNX', KEYS[2], 'fence', 1)  -- a run from before fences: its owner's
local fence = redis.call('HINCRBY', KEYS[2], 'fence', 1)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return {1, fence}
"""
)

# End a run taken over: its last events, as the instance that claimed it.
# KEYS: meta, events, leases, session_runs
# ARGV: instance, retention_s, final_status, run_id, fence, then (seq, type, json)
FINISH_TAKEN_OVER = """
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[1]
   or redis.call('HGET', KEYS[1], 'fence') ~= ARGV[5]
   or redis.call('HGET', KEYS[1], 'status') ~= 'ending' then
  return {0, 0}
end
local top = tonumber(redis.call('HGET', KEYS[1], 'last_seq'))
for i = 6, #ARGV, 3 do
  redis.call('XADD', KEYS[2], '0-' .. ARGV[i], 't', ARGV[i + 1], 'd', ARGV[i + 2])
  top = tonumber(ARGV[i])
end
redis.call('HSET', KEYS[1], 'last_seq', top, 'status', ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('SREM', KEYS[4], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {1, top}
"""
