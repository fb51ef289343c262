"""Lua scripts for RedisStore. Each runs atomically on the server, so every gateway process
sees one consistent order of admissions, settlements and key changes.

Key layout (``p`` is the store's prefix, default ``mg:``):

    p team:<id>                  hash   team fields (see redis_codec)
    p teams                      zset   team ids by created_at
    p key:<id>                   hash   key fields, including its hash, never the secret
    p keys, p team_keys:<team>   zset   key ids by created_at
    p keyhash:<hash>             string key id of a secret's hash (finds imported keys)
    p spent:<scope>:<id>:<per>   int    settled micro-dollars in a budget period
    p held:<scope>:<id>:<per>    int    micro-dollars held by unexpired reservations
    p holds:<scope>:<id>:<per>   zset   member "<request id>:<micros>", score = expiry
    p resv:<request id>          string the outstanding reservation, for idempotent replays
    p rate:<scope>:<id>:<kind>   string GCRA theoretical arrival time (ms) of rpm / tpm
    p rec:<request id>           string the usage record (JSON); also the settle-once marker;
                                        expires the record retention after it is written
    p ledger, p ledger:team:<id> zset   request ids by time, trimmed to the record retention
    p rollup:<hour>:<team>       hash   "<key>\\x1f<requested>\\x1f<routed>\\x1f<metric>" -> int;
                                        expires the rollup retention after its last write
    p rollup_teams:<hour>        set    teams with usage in that hour (expires with its rollups)
    p rollup_hours               zset   hours with any usage, trimmed to the rollup retention

<scope> is "team" or "key"; <per> is a budget period key (d2025-01-31, m2025-01, total).
Reserve and settle derive key names from the prefix inside the script, which standalone Redis
and Sentinel allow; Redis Cluster would need hash tags and is not supported.
"""

from __future__ import annotations

# Shared by RESERVE and SETTLE: the GCRA window and helpers.
_HELPERS = r"""
local WINDOW_MS = 60000

local function as_hash(flat)
  if #flat == 0 then return nil end
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function fmt(x) return string.format('%.17g', x) end

-- Time (s) from ARGV, or the Redis server's clock when it is '': every gateway sharing this
-- server then runs GCRA and hold expiry on one clock, whatever its own says.
local function clock(arg)
  local given = tonumber(arg)
  if given then return given end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- GCRA: take `amount` from the limit `limit` per minute stored at `rkey` (a theoretical arrival
-- time in ms). Returns true, new_tat | false, nil, retry_after ('' = can never fit).
local function gcra(rkey, limit, amount, now_ms)
  local increment = amount * WINDOW_MS / tonumber(limit)
  local raw = redis.call('GET', rkey)
  local start = now_ms
  if raw and tonumber(raw) > now_ms then start = tonumber(raw) end
  local new_tat = start + increment
  if new_tat - now_ms <= WINDOW_MS then return true, new_tat end
  if increment > WINDOW_MS then return false, nil, '' end
  return false, nil, string.format('%.3f', math.ceil(new_tat - now_ms - WINDOW_MS) / 1000)
end
"""

# ARGV: 1 prefix, 2 team id, 3 key id, 4 model, 5 worst-case micros, 6 worst-case tokens,
#       7 now (s; '' = the server's TIME), 8 reservation ttl (s), 9 request id,
#       10 daily period key, 11 daily end, 12 daily retention (s),
#       13 monthly period key, 14 monthly end, 15 monthly retention (s)
# Returns {'ok', team period, key period, created_at, expires_at, tpm limited (1/0)}
#       | {'deny', limit, retry_after or ''} | {'error', code}.
RESERVE = _HELPERS + r"""
local p, team_id, key_id, model = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cost_arg, tokens = ARGV[5], tonumber(ARGV[6])
local cost = tonumber(cost_arg)
local now, ttl, rid = clock(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local now_ms = now * 1000

-- Idempotent per request id: a retried call returns the reservation it already made.
local existing = redis.call('GET', p .. 'resv:' .. rid)
if existing then
  local tper, kper, created, expires, limited = string.match(existing, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([01])$')
  if tonumber(expires) > now then return {'ok', tper, kper, created, expires, tonumber(limited)} end
end

local team = as_hash(redis.call('HGETALL', p .. 'team:' .. team_id))
if not team then return {'error', 'team_not_found'} end
local key = as_hash(redis.call('HGETALL', p .. 'key:' .. key_id))
if not key or key.team_id ~= team_id then return {'error', 'key_not_found'} end
if key.revoked_at ~= '' or (key.expires_at ~= '' and now >= tonumber(key.expires_at)) then
  return {'deny', 'key_revoked', ''}
end

local function allows(list_json)
  local list = cjson.decode(list_json)
  if #list == 0 then return true end
  for _, m in ipairs(list) do if m == model then return true end end
  return false
end
if not allows(team.allowed_models) or not allows(key.allowed_models) then
  return {'deny', 'model_not_allowed', ''}
end

local function window(period)
  if period == 'daily' then return ARGV[10], tonumber(ARGV[11]), tonumber(ARGV[12]) end
  if period == 'monthly' then return ARGV[13], tonumber(ARGV[14]), tonumber(ARGV[15]) end
  return 'total', nil, nil
end

-- Drop expired holds (a crashed gateway's reservations) and return what is still held.
local function held(base)
  local zkey, ckey = p .. 'holds:' .. base, p .. 'held:' .. base
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', zkey, '-inf', now)) do
    redis.call('ZREM', zkey, member)
    redis.call('DECRBY', ckey, string.match(member, ':(%d+)$'))
  end
  return tonumber(redis.call('GET', ckey) or '0')
end

local tper, tend, tret = window(team.budget_period)
local kper, kend, kret = window(key.budget_period)
local scopes = {
  {'team:' .. team_id .. ':' .. tper, team.budget_micros, tend, tret, 'team_budget'},
  {'key:' .. key_id .. ':' .. kper, key.budget_micros, kend, kret, 'key_budget'},
}
for _, s in ipairs(scopes) do
  local holding = held(s[1])
  if s[2] ~= '' then
    local spent = tonumber(redis.call('GET', p .. 'spent:' .. s[1]) or '0')
    if spent + holding + cost > tonumber(s[2]) then
      local retry = ''
      if s[3] then retry = string.format('%.3f', s[3] - now) end
      return {'deny', s[5], retry}
    end
  end
end

local function rate(scope_id, kind, limit, amount)
  if limit == '' then return true end
  local rkey = p .. 'rate:' .. scope_id .. ':' .. kind
  local ok, new_tat, retry = gcra(rkey, limit, amount, now_ms)
  if ok then return true, rkey, new_tat end
  return false, nil, nil, retry
end

local checks = {
  {'team:' .. team_id, 'rpm', team.rpm_limit, 1, 'team_rpm'},
  {'key:' .. key_id, 'rpm', key.rpm_limit, 1, 'key_rpm'},
  {'team:' .. team_id, 'tpm', team.tpm_limit, tokens, 'team_tpm'},
  {'key:' .. key_id, 'tpm', key.tpm_limit, tokens, 'key_tpm'},
}
local writes = {}
for _, c in ipairs(checks) do
  local ok, rkey, new_tat, retry = rate(c[1], c[2], c[3], c[4])
  if not ok then return {'deny', c[5], retry} end
  if rkey then writes[#writes + 1] = {rkey, new_tat} end
end

-- Every check passed: take it all.
for _, w in ipairs(writes) do
  redis.call('SET', w[1], fmt(w[2]), 'PX', math.ceil(w[2] - now_ms) + 1000)
end
local expires = now + ttl
local member = rid .. ':' .. cost_arg
for _, s in ipairs(scopes) do
  local zkey, ckey = p .. 'holds:' .. s[1], p .. 'held:' .. s[1]
  redis.call('ZADD', zkey, fmt(expires), member)
  redis.call('INCRBY', ckey, cost_arg)
  if s[4] then
    redis.call('EXPIRE', zkey, s[4])
    redis.call('EXPIRE', ckey, s[4])
  end
end
local tpm_limited = 0
if team.tpm_limit ~= '' or key.tpm_limit ~= '' then tpm_limited = 1 end
local summary = tper .. '|' .. kper .. '|' .. fmt(now) .. '|' .. fmt(expires) .. '|' .. tpm_limited
redis.call('SET', p .. 'resv:' .. rid, summary, 'EX', math.ceil(ttl) + 1)
return {'ok', tper, kper, fmt(now), fmt(expires), tpm_limited}
"""

# More tokens for a reservation's TPM, once the prompt's real count is known (its estimate was
# lower): the same GCRA check on the team's and the key's limit, both or neither. Refused, the
# request will not run: what it holds (ARGV 6) goes back to both limits in the same step, so a
# concurrent request's check already sees the room.
# ARGV: 1 prefix, 2 team id, 3 key id, 4 tokens, 5 now (s; '' = the server's TIME), 6 tokens held
# Returns {'ok'} | {'deny', limit, retry_after or ''}.
TAKE_TOKENS = _HELPERS + r"""
local p, team_id, key_id, tokens, held = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[6])
local now_ms = clock(ARGV[5]) * 1000
local limits, writes, denial = {}, {}, nil
for _, c in ipairs({{'team', team_id, 'team_tpm'}, {'key', key_id, 'key_tpm'}}) do
  local limit = redis.call('HGET', p .. c[1] .. ':' .. c[2], 'tpm_limit')
  if limit and limit ~= '' then
    local rkey = p .. 'rate:' .. c[1] .. ':' .. c[2] .. ':tpm'
    limits[#limits + 1] = {rkey, tonumber(limit)}
    local ok, new_tat, retry = gcra(rkey, limit, tokens, now_ms)
    if ok then writes[#writes + 1] = {rkey, new_tat}
    elseif not denial then denial = {'deny', c[3], retry} end
  end
end
if denial then
  for _, l in ipairs(limits) do
    local raw = redis.call('GET', l[1])
    if raw then
      local tat = math.max(now_ms, tonumber(raw) - held * WINDOW_MS / l[2])
      redis.call('SET', l[1], fmt(tat), 'PX', math.ceil(tat - now_ms) + 1000)
    end
  end
  return denial
end
for _, w in ipairs(writes) do
  redis.call('SET', w[1], fmt(w[2]), 'PX', math.ceil(w[2] - now_ms) + 1000)
end
return {'ok'}
"""

# Holds of requests still running, pushed to expire `ttl` seconds from now (a long generation
# outlives the reservation's first ttl). Only holds still present move; an expired one was
# released and stays so.
# ARGV: 1 prefix, 2 now (s; '' = the server's TIME), 3 ttl (s), then per reservation:
#       request id, team scope base, key scope base, reserved micros
# Returns how many reservations were still held.
RENEW = _HELPERS + r"""
local p, ttl = ARGV[1], tonumber(ARGV[3])
local now = clock(ARGV[2])
local expires = now + ttl
local renewed = 0
for i = 4, #ARGV, 4 do
  local member = ARGV[i] .. ':' .. ARGV[i + 3]
  local held = 0
  for _, base in ipairs({ARGV[i + 1], ARGV[i + 2]}) do
    local zkey = p .. 'holds:' .. base
    local score = redis.call('ZSCORE', zkey, member)
    if score and tonumber(score) > now then
      redis.call('ZADD', zkey, 'XX', fmt(expires), member)
      held = held + 1
    end
  end
  redis.call('EXPIRE', p .. 'resv:' .. ARGV[i], math.ceil(ttl) + 1)
  if held > 0 then renewed = renewed + 1 end
end
return renewed
"""

# ARGV: 1 prefix, 2 request id, 3 team id, 4 key id, 5 team period, 6 key period,
#       7 reserved micros, 8 unused worst-case tokens, 9 actual micros, 10 record JSON,
#       11 record time, 12 hour bucket, 13 rollup cell, 14 now (s; '' = the server's TIME),
#       15 team period retention (s or ''), 16 key period retention (s or ''),
#       17 usage record retention (s), 18 rollup retention (s),
#       19.. metric name, increment pairs
# Returns 1 when applied, 0 when this request id was settled before.
SETTLE = _HELPERS + r"""
local p, rid, team_id, key_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local record_ttl, rollup_ttl = tonumber(ARGV[17]), tonumber(ARGV[18])
if not redis.call('SET', p .. 'rec:' .. rid, ARGV[10], 'NX', 'EX', math.ceil(record_ttl)) then return 0 end

local member = rid .. ':' .. ARGV[7]
-- The team is charged only while the team the request ran under still exists: one deleted (or
-- deleted and re-created under its id) since the request started owes nothing; the record and
-- the rollups keep the usage.
local created = redis.call('HGET', p .. 'team:' .. team_id, 'created_at')
local team_live = created and tonumber(created) <= tonumber(ARGV[11])
local scopes = {
  {'team:' .. team_id .. ':' .. ARGV[5], ARGV[15], team_live},
  {'key:' .. key_id .. ':' .. ARGV[6], ARGV[16], true},
}
for _, s in ipairs(scopes) do
  -- Only a hold that is still present is released; an expired one was already dropped.
  if redis.call('ZREM', p .. 'holds:' .. s[1], member) == 1 then
    redis.call('DECRBY', p .. 'held:' .. s[1], ARGV[7])
  end
  if s[3] then
    local skey = p .. 'spent:' .. s[1]
    redis.call('INCRBY', skey, ARGV[9])
    if s[2] ~= '' and redis.call('TTL', skey) < 0 then redis.call('EXPIRE', skey, s[2]) end
  end
end
redis.call('DEL', p .. 'resv:' .. rid)

local unused, now_ms = tonumber(ARGV[8]), clock(ARGV[14]) * 1000
if unused > 0 then
  for _, r in ipairs({{'team', team_id}, {'key', key_id}}) do
    local limit = redis.call('HGET', p .. r[1] .. ':' .. r[2], 'tpm_limit')
    local rkey = p .. 'rate:' .. r[1] .. ':' .. r[2] .. ':tpm'
    local raw = redis.call('GET', rkey)
    if limit and limit ~= '' and raw then
      local tat = tonumber(raw) - unused * WINDOW_MS / tonumber(limit)
      if tat < now_ms then tat = now_ms end
      redis.call('SET', rkey, fmt(tat), 'PX', math.ceil(tat - now_ms) + 1000)
    end
  end
end

-- Retention: a record expires record_ttl after it is written; the ledger's indexes keep the
-- records within record_ttl of the newest one written (the record times of a live ledger are
-- now); an hour's rollups expire rollup_ttl after their last write (so after their hour), and
-- the index of hours keeps those within rollup_ttl of the hour written.
local record_time = tonumber(ARGV[11])
for _, index in ipairs({p .. 'ledger', p .. 'ledger:team:' .. team_id}) do
  redis.call('ZADD', index, ARGV[11], rid)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. fmt(record_time - record_ttl))
end
redis.call('EXPIRE', p .. 'ledger:team:' .. team_id, math.ceil(record_ttl))
local hour = ARGV[12]
local rollup_left = math.ceil(rollup_ttl)
local rkey = p .. 'rollup:' .. hour .. ':' .. team_id
for i = 19, #ARGV, 2 do
  redis.call('HINCRBY', rkey, ARGV[13] .. '\31' .. ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', rkey, rollup_left)
redis.call('SADD', p .. 'rollup_teams:' .. hour, team_id)
redis.call('EXPIRE', p .. 'rollup_teams:' .. hour, rollup_left)
redis.call('ZADD', p .. 'rollup_hours', hour, hour)
redis.call('ZREMRANGEBYSCORE', p .. 'rollup_hours', '-inf', '(' .. fmt(tonumber(hour) - math.ceil(rollup_ttl / 3600)))
return 1
"""

# KEYS: 1 team hash, 2 teams zset. ARGV: 1 team id, 2 created_at, 3.. field/value pairs.
CREATE_TEAM = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# KEYS: 1 team hash. ARGV: field/value pairs. Returns the updated hash, or nil if missing.
UPDATE_TEAM = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if #ARGV > 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: 1 team hash, 2 teams zset, 3 team_keys zset, 4.. team counters to forget.
# ARGV: 1 team id, 2 now, 3 prefix.
DELETE_TEAM = r"""
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
for _, kid in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local kkey = ARGV[3] .. 'key:' .. kid
  if redis.call('HGET', kkey, 'revoked_at') == '' then
    redis.call('HSET', kkey, 'revoked_at', ARGV[2])
  end
end
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""

# KEYS: 1 team hash, 2 key hash, 3 keys zset, 4 team_keys zset, 5 hash index (keyhash:<hash>).
# ARGV: 1 key id, 2 created_at, 3.. field/value pairs.
# Returns {1} created, {0} no team, {-1} id taken, {2, id} this secret is already stored as id.
CREATE_KEY = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local existing = redis.call('GET', KEYS[5])
if existing then return {2, existing} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {-1} end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('SET', KEYS[5], ARGV[1])
return {1}
"""

# KEYS: 1 key hash. ARGV: 1 now. Returns the hash, or nil if missing.
REVOKE_KEY = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HGET', KEYS[1], 'revoked_at') == '' then
  redis.call('HSET', KEYS[1], 'revoked_at', ARGV[1])
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: 1 old key hash, 2 new key hash, 3 keys zset, 4 team_keys zset, 5 new key's hash index.
# ARGV: 1 now, 2 grace end, 3 new key id, 4 created_at, 5.. new key field/value pairs.
# Returns the old key's new expiry, 0 (missing) or -1 (not active).
ROTATE_KEY = r"""
local old = redis.call('HMGET', KEYS[1], 'id', 'revoked_at', 'expires_at')
if not old[1] then return 0 end
if old[2] ~= '' or (old[3] ~= '' and tonumber(ARGV[1]) >= tonumber(old[3])) then return -1 end
local ends = ARGV[2]
if old[3] ~= '' and tonumber(old[3]) < tonumber(ends) then ends = old[3] end
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
redis.call('SET', KEYS[5], ARGV[3])
redis.call('HSET', KEYS[1], 'expires_at', ends, 'replaced_by', ARGV[3])
return ends
"""
