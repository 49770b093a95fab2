"""Where a shared run lives in Redis, and the scripts that change it atomically.

    {prefix}:run:{id}            hash: owner, session, instance, status, last_seq, cancel
    {prefix}:run:{id}:events     stream: one entry per event, entry id `0-<seq>`, so that
                                 `Last-Event-ID: N` is the stream position `0-N`
    {prefix}:session:{id}:runs   set: the session's runs (for "its live runs")
    {prefix}:leases              sorted set: live run id → lease expiry (ms since the epoch)
    {prefix}:cancel              pub/sub channel: "<run id> <status>" for the owning instance

`status` is `live` while the owning instance holds the run, `ending` once
another instance has taken over a run whose lease lapsed, then the message
status (`complete`, `cancelled`, `error`, `interrupted`). Every key has an
expiry: while a run lives, longer than it may live; after it ends,
`CHATSTREAM_RUN_RETENTION_S`.
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
            events=f"{self.prefix}:run:{run_id}:events",
            session_runs=self.session_runs(session_id),
        )

    def meta(self, run_id: uuid.UUID | str) -> str:
        return f"{self.prefix}:run:{run_id}"

    def events(self, run_id: uuid.UUID | str) -> str:
        return f"{self.prefix}:run:{run_id}:events"

    def session_runs(self, session_id: uuid.UUID | str) -> str:
        return f"{self.prefix}:session:{session_id}:runs"


# Append a run's new events, as its owning instance. Creates the run on its
# first call. Refuses (-1) once the run is no longer this instance's to
# write: another instance took it over; asks for every event again (-2) when
# Redis lost the run (a restart without persistence).
# Events at or below the stored last_seq are skipped, so a retry after a
# failed round trip never duplicates one.
#
# KEYS: meta, events, session_runs, leases
# ARGV: instance, owner, session, live_ttl_s, retention_s, lease_expiry_ms,
#       final_status ('' while live), run_id, then (seq, type, json) per event
APPEND = """
local meta, events, session_runs, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local instance, final, run_id = ARGV[1], ARGV[7], ARGV[8]
if redis.call('EXISTS', meta) == 1 then
  if redis.call('HGET', meta, 'instance') ~= instance
     or redis.call('HGET', meta, 'status') ~= 'live' then
    return -1
  end
else
  if tonumber(ARGV[9]) > 1 then
    return -2  -- Redis lost the run (a restart): send it again from its first event
  end
  redis.call('HSET', meta, 'owner', ARGV[2], 'session', ARGV[3], 'instance', instance,
             'status', 'live', 'last_seq', 0)
  redis.call('EXPIRE', meta, ARGV[4])
  redis.call('SADD', session_runs, run_id)
  redis.call('EXPIRE', session_runs, ARGV[4])
  redis.call('ZADD', leases, ARGV[6], run_id)
  redis.call('EXPIRE', leases, ARGV[4])
end
local last = tonumber(redis.call('HGET', meta, 'last_seq'))
local top = last
for i = 9, #ARGV, 3 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    redis.call('XADD', events, '0-' .. seq, 't', ARGV[i + 1], 'd', ARGV[i + 2])
    top = seq
  end
end
redis.call('HSET', meta, 'last_seq', top)
if final ~= '' then
  redis.call('HSET', meta, 'status', final)
  redis.call('ZREM', leases, run_id)
  redis.call('EXPIRE', meta, ARGV[5])
  redis.call('EXPIRE', events, ARGV[5])
else
  redis.call('EXPIRE', events, ARGV[4])
end
return top
"""

# Ask the owning instance to stop a run. 1: it was live (the caller then
# publishes); 0: it has ended; -1: no such run.
# KEYS: meta; ARGV: status
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status ~= 'live' then return 0 end
redis.call('HSET', KEYS[1], 'cancel', ARGV[1])
return 1
"""

# Take over a run whose lease lapsed: only one instance wins. 1: this one did.
# KEYS: leases, meta; ARGV: now_ms, run_id, instance
CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not score or tonumber(score) > tonumber(ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[2])
if redis.call('HGET', KEYS[2], 'status') ~= 'live' then return 0 end
redis.call('HSET', KEYS[2], 'status', 'ending', 'instance', ARGV[3])
return 1
"""

# End a run taken over: its last events, as the instance that claimed it.
# KEYS: meta, events; ARGV: instance, retention_s, final_status, then (seq, type, json)
FINISH_TAKEN_OVER = """
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[1]
   or redis.call('HGET', KEYS[1], 'status') ~= 'ending' then
  return 0
end
local top = tonumber(redis.call('HGET', KEYS[1], 'last_seq'))
for i = 4, #ARGV, 3 do
  redis.call('XADD', KEYS[2], '0-' .. ARGV[i], 't', ARGV[i + 1], 'd', ARGV[i + 2])
  top = tonumber(ARGV[i])
end
redis.call('HSET', KEYS[1], 'last_seq', top, 'status', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""
