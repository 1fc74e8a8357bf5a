"""The Lua scripts behind `gateway.limits_redis.RedisLimiter`, one per operation.

Each runs atomically inside Redis, so a request's counters (its place in the rolling
minute, its tokens, its concurrency lease, its share of the monthly quota) are checked
and charged together, or not at all, whatever other gateway processes do meanwhile.
They read the time from Redis (`TIME`), never from the hosts, whose clocks may
disagree; `now` in ARGV replaces it, for tests only.

The keys of one API key name (all with the same hash tag, `{name}`):
  w   sorted set: the admissions of the rolling minute (member: admission id, score: time)
  tk  hash: admission id -> tokens charged, and `_sum`, the total of the window
  c   sorted set: concurrency leases (member: admission id, score: when the lease lapses)
  q   hash: `month` (year * 12 + month - 1, UTC) and `used` (tokens of that month)

The rules mirror `gateway.limits.InProcessLimiter.admit` line by line (same order of
checks, same windows, `<=` at the horizon), so both answer the same numbers; the
times a retry is computed from are returned as Redis wrote them, and Python does the
arithmetic, so the floats come out bit for bit equal.
"""

from __future__ import annotations

from typing import Final

# days since 1970-01-01 <-> (year, month): Howard Hinnant's civil calendar algorithms,
# since a Redis script has no date library
_CALENDAR: Final = """
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function days_from_civil(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + math.floor((153 * mp + 2) / 5)
  return era * 146097 + doe - 719468
end

local function clock(given)
  if given and given ~= '' then return tonumber(given), given end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  return now, string.format('%.17g', now)
end
"""

# KEYS: w, tk, c, q
# ARGV: id, estimate, rpm, tpm, concurrency, tokens_per_month ('' = unlimited), lease ms, now ('' = TIME)
# -> 'rejected|ref|requests|newest|tokens|used|month|now', one string (a reply array costs the
#    client more to parse than the rest of the call): rejected ('' = admitted); ref, the time
#    whose + 60 s is when a refused request fits ('' = none); requests and tokens in the window;
#    the newest admission's time ('' = none); tokens this month; the month; the time used
ADMIT: Final = (
    _CALENDAR
    + """
local w, tk, c, q = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, est = ARGV[1], tonumber(ARGV[2])
local rpm, tpm, conc, quota = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local lease_ms = tonumber(ARGV[7])
local now, now_text = clock(ARGV[8])
local WINDOW = 60

-- the month rolls forward, never back; the quota hash holds the current month only
local y, m = civil(math.floor(now / 86400))
local month = y * 12 + m - 1
local stored = redis.call('HMGET', q, 'month', 'used')
local used = tonumber(stored[2]) or 0
if tonumber(stored[1]) and tonumber(stored[1]) > month then
  month = tonumber(stored[1])
elseif tonumber(stored[1]) ~= month then
  used = 0
end

-- admissions that left the rolling minute take their tokens with them (in pages:
-- unpack() of thousands of values would overflow Lua's stack)
local horizon = now - WINDOW
while true do
  local old = redis.call('ZRANGEBYSCORE', w, '-inf', horizon, 'LIMIT', 0, 500)
  if #old == 0 then break end
  local tokens = redis.call('HMGET', tk, unpack(old))
  local gone = 0
  for i = 1, #tokens do gone = gone + (tonumber(tokens[i]) or 0) end
  redis.call('HDEL', tk, unpack(old))
  redis.call('ZREM', w, unpack(old))
  if gone ~= 0 then redis.call('HINCRBY', tk, '_sum', 0 - gone) end  -- (Redis refuses a '-0')
  if #old < 500 then break end
end
local sum = tonumber(redis.call('HGET', tk, '_sum')) or 0
local n = redis.call('ZCARD', w)

-- leases of requests whose process died lapse on their own
redis.call('ZREMRANGEBYSCORE', c, '-inf', now)

local rejected, ref = '', ''
if quota and used + est > quota then
  rejected = 'tokens_per_month'
elseif conc and redis.call('ZCARD', c) >= conc then
  rejected = 'concurrency'
elseif rpm and n >= rpm then
  rejected = 'rpm'  -- the oldest admission leaving the window frees a slot
  ref = redis.call('ZRANGE', w, n - rpm, n - rpm, 'WITHSCORES')[2]
elseif tpm and est > tpm then
  rejected = 'too_large'
elseif tpm and sum + est > tpm then
  rejected = 'tpm'  -- when enough tokens will have left the window for these to fit
  local excess = sum + est - tpm
  local start = 0
  while ref == '' do
    local page = redis.call('ZRANGE', w, start, start + 199, 'WITHSCORES')
    if #page == 0 then break end
    local ids = {}
    for i = 1, #page, 2 do ids[#ids + 1] = page[i] end
    local tokens = redis.call('HMGET', tk, unpack(ids))
    for i = 1, #ids do
      excess = excess - (tonumber(tokens[i]) or 0)
      if excess <= 0 then ref = page[2 * i]; break end
    end
    start = start + 200
  end
  if ref == '' and n > 0 then ref = redis.call('ZRANGE', w, -1, -1, 'WITHSCORES')[2] end
else
  redis.call('ZADD', w, now, id)
  redis.call('HSET', tk, id, est)
  sum = redis.call('HINCRBY', tk, '_sum', est)
  n = n + 1
  redis.call('PEXPIRE', w, (WINDOW + 1) * 1000)
  redis.call('PEXPIRE', tk, (WINDOW + 1) * 1000)
  redis.call('ZADD', c, now + lease_ms / 1000, id)
  redis.call('PEXPIRE', c, lease_ms)
  used = used + est
  redis.call('HSET', q, 'month', month, 'used', used)
  -- relative, so that a test clock far from Redis's own gives a sane lifetime too
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  redis.call('PEXPIRE', q, math.max(1000, math.ceil((days_from_civil(ny, nm) * 86400 - now) * 1000)))
end

local newest = ''
if n > 0 then newest = redis.call('ZRANGE', w, -1, -1, 'WITHSCORES')[2] end
local function int(x) return string.format('%d', x) end  -- tostring() would write 1e+15
return table.concat({rejected, ref, int(n), newest, int(sum), int(used), int(month), now_text}, '|')
"""
)

# KEYS: w, tk, c, q   ARGV: id, estimate, actual tokens, month of the admission
# The request ended: free its lease; its estimate becomes the actual tokens in the
# window (if it is still there) and in its month (if that month is still current).
RELEASE: Final = """
local w, tk, c, q = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, est, actual = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREM', c, id)
if redis.call('ZSCORE', w, id) then
  local old = tonumber(redis.call('HGET', tk, id)) or 0
  redis.call('HSET', tk, id, actual)
  if actual ~= old then redis.call('HINCRBY', tk, '_sum', actual - old) end
end
if redis.call('HGET', q, 'month') == ARGV[4] and actual ~= est then
  redis.call('HINCRBY', q, 'used', actual - est)
end
return 1
"""

# KEYS: the sentinel SEED sets, then the c key of each live lease
# ARGV: lease ms, then each lease's admission id
# -> 1 while Redis holds what was seeded (0: it restarted empty, or was never seeded)
# XX: a lease released (or lapsed) meanwhile stays gone, or a renewal racing a release
# would hold a slot for a request that has ended.
RENEW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease_ms = tonumber(ARGV[1])
local until_ = now + lease_ms / 1000
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', until_, ARGV[i])
  redis.call('PEXPIRE', KEYS[i], lease_ms)
end
return redis.call('EXISTS', KEYS[1])
"""

# KEYS: sentinel, then the q key of each name   ARGV: mode ('nx' | 'max'), now ('' = TIME), then tokens per name
# 'nx' (at start): a counter already there is live and newer than any log, keep it.
# 'max' (Redis lost its data while we ran): what the counter saw since, or the log's total.
SEED: Final = (
    _CALENDAR
    + """
local now = clock(ARGV[2])
local y, m = civil(math.floor(now / 86400))
local month = y * 12 + m - 1
local ny, nm = y, m + 1
if nm > 12 then ny, nm = y + 1, 1 end
local ttl = math.max(1000, math.ceil((days_from_civil(ny, nm) * 86400 - now) * 1000))
for i = 2, #KEYS do
  local q, tokens = KEYS[i], tonumber(ARGV[i + 1])
  local stored = redis.call('HMGET', q, 'month', 'used')
  local current = tonumber(stored[1]) == month
  if not current or ARGV[1] == 'max' then
    local used = tokens
    if current then used = math.max(tokens, tonumber(stored[2]) or 0) end
    redis.call('HSET', q, 'month', month, 'used', used)
    redis.call('PEXPIRE', q, ttl)
  end
end
redis.call('SET', KEYS[1], month)
return month
"""
)
