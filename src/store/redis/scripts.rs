//! The Lua scripts that make each multi-key step atomic on Redis. They work on
//! the original RestMQ's keyspace: `<q>:UUID` (counter), `<q>:<n>` (value),
//! `<q>:queue` (list of keys, LPUSH to publish, RPOP to pop), `queuestat::<q>`,
//! `<q>:<n>:refcount` and `QUEUESET`; and on restmq's own keys for reliable
//! delivery (unknown to the original, which ignores them):
//!
//! - `<q>:ready`: sorted set (score: number) of messages that came back
//!   (redelivered, released, delayed ones come due, or put back); taken before
//!   the list, so messages always leave in key order;
//! - `<q>:inflight` and `<q>:delayed`: sorted sets (score: when due, ms);
//! - `<q>:deliveries`: hash, number -> times received;
//! - `<q>:config`: hash of the queue's settings;
//! - `<q>:dying`: list of keys received too often, for the store to move to the
//!   dead-letter queue (a queue elsewhere, so not in the same script);
//! - `<q>:expires`: hash, number -> expiry in ms by restmq's clock. A message
//!   with a ttl also gets EXPIRE on its key (the original's way, and cleanup),
//!   but restmq judges expiry by the time it passes in;
//! - `<q>:purging`: list of the keys a purge set aside (`<q>:purged-<n>-list`,
//!   `-ready`, …) whose messages are still to delete, numbered by `<q>:purges`.
//!
//! Message keys are built from a prefix (`<q>`, or `{<q>}` on a cluster) so that
//! they share their queue's slot. Every script that takes or reads messages
//! first settles the hidden ones that came due. KEYS are always, in this order:
//! list, ready, inflight, delayed, deliveries, dying, config, expires (then more).

use std::sync::LazyLock;

use redis::Script;

/// Shared by the scripts: names of the queue's keys, and settling.
const PRELUDE: &str = r"
local LIST, READY, INFLIGHT, DELAYED, DELIVERIES, DYING, CONFIG, EXPIRES =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]

local function id_of(key)
  return tonumber(string.match(key, ':(%d+)$'))
end

-- A key's number as the field of the hashes keyed by number: the key's own
-- digits, which need no formatting (a number passed to redis.call is written
-- out with sprintf, one of a script's dearest steps), unless they have a
-- leading zero.
local function field_of(key)
  local digits = string.match(key, ':(%d+)$')
  if digits and string.byte(digits, 1) == 48 then return tostring(tonumber(digits)) end
  return digits
end

-- When a message expires (ms; 0: never): restmq's record, else the key's own
-- expiry (a message the original wrote).
local function expires_of(key, now)
  local at = redis.call('HGET', EXPIRES, id_of(key))
  if at then return tonumber(at) end
  local ttl = redis.call('PTTL', key)
  if ttl > 0 then return now + ttl end
  return 0
end

local function alive(key, now)
  if redis.call('EXISTS', key) == 0 then return false end
  local at = tonumber(redis.call('HGET', EXPIRES, id_of(key)) or '0')
  return at == 0 or at > now
end

-- Forgets a message entirely (it was taken, acknowledged, or expired).
local function forget(key)
  local id = id_of(key)
  redis.call('DEL', key, key .. ':refcount')
  redis.call('HDEL', DELIVERIES, id)
  redis.call('HDEL', EXPIRES, id)
end

-- Hidden messages that came due, in order of time then number: dropped when
-- expired, to DYING when received max_receives times, otherwise back in READY.
local function settle(now)
  -- Most queues hide nothing: one call to find that out.
  if redis.call('EXISTS', INFLIGHT, DELAYED) == 0 then return end
  local max = tonumber(redis.call('HGET', CONFIG, 'max_receives') or '0')
  for _, set in ipairs({INFLIGHT, DELAYED}) do
    local due = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 512)
    local items = {}
    for i = 1, #due, 2 do
      items[#items + 1] = {key = due[i], due = tonumber(due[i + 1]), id = id_of(due[i])}
    end
    table.sort(items, function(a, b)
      if a.due ~= b.due then return a.due < b.due end
      return a.id < b.id
    end)
    for _, item in ipairs(items) do
      local key, id = item.key, item.id
      redis.call('ZREM', set, key)
      if not alive(key, now) then
        forget(key)
      elseif set == INFLIGHT and max > 0 and
          tonumber(redis.call('HGET', DELIVERIES, id) or '0') >= max then
        redis.call('RPUSH', DYING, key)
      else
        redis.call('ZADD', READY, id, key)
      end
    end
  end
end

-- The next visible key (without taking it): the lower of READY's lowest and
-- the list's head (the list is in key order; READY holds what came back).
local function first()
  local ready = redis.call('ZRANGE', READY, 0, 0)[1]
  local head = redis.call('LINDEX', LIST, -1)
  if ready and (not head or id_of(ready) < id_of(head)) then return ready, true end
  return head, false
end

-- The next visible key, taken.
local function take()
  local key, from_ready = first()
  if not key then return nil end
  if from_ready then redis.call('ZREM', READY, key) else redis.call('RPOP', LIST) end
  return key
end

-- Calls `cmd` with `head` (nil: nothing) then `items`, in slices that unpack
-- can take; slices are of an even length, so pairs stay together.
local function bulk(cmd, head, items)
  for i = 1, #items, 4000 do
    local j = math.min(i + 3999, #items)
    if head then redis.call(cmd, head, unpack(items, i, j)) else redis.call(cmd, unpack(items, i, j)) end
  end
end

-- Up to n (at most a few thousand) visible keys, taken, in key order: READY's
-- lowest merged with the list's tail. A handful of calls instead of take()'s
-- three per key.
local function take_many(n)
  local ready = redis.call('ZRANGE', READY, 0, n - 1)
  local list = redis.call('LRANGE', LIST, -n, -1)
  local out, count, r, l = {}, 0, 1, #list
  while count < n do
    local a, b = ready[r], list[l]
    if not a and not b then break end
    count = count + 1
    if a and (not b or id_of(a) < id_of(b)) then
      out[count] = a
      r = r + 1
    else
      out[count] = b
      l = l - 1
    end
  end
  if r > 1 then redis.call('ZREMRANGEBYRANK', READY, 0, r - 2) end
  if l < #list then redis.call('LTRIM', LIST, 0, l - #list - 1) end
  return out
end

-- The keys' numbers, as the fields of the hashes keyed by number.
local function fields_of(keys)
  local ids = {}
  for i, key in ipairs(keys) do ids[i] = field_of(key) end
  return ids
end

-- Reads keys just taken, as alive() and expires_of() do one key: their
-- values, expiries (ms, 0: none; false for a key gone or expired, which the
-- caller forgets), and numbers as hash fields if they were needed (else nil:
-- numbering costs a pattern match a key, and a queue whose messages have no
-- expiry has no hash to ask).
local function read_taken(keys, now)
  local values = redis.call('MGET', unpack(keys))
  local ids, recorded = nil, {}
  if redis.call('EXISTS', EXPIRES) == 1 then
    ids = fields_of(keys)
    recorded = redis.call('HMGET', EXPIRES, unpack(ids))
  end
  local expiries = {}
  for i, key in ipairs(keys) do
    local at = tonumber(recorded[i] or '0')
    if values[i] and (at == 0 or at > now) then
      if not recorded[i] then
        local ttl = redis.call('PTTL', key)
        if ttl > 0 then at = now + ttl end
      end
      expiries[i] = at
    else
      expiries[i] = false
    end
  end
  return ids, values, expiries
end

-- forget() for many keys at once; ids are the keys' numbers, or nil to
-- number them here if a hash needs them.
local function forget_all(keys, ids)
  local doomed = {}
  for i, key in ipairs(keys) do
    doomed[2 * i - 1] = key
    doomed[2 * i] = key .. ':refcount'
  end
  bulk('DEL', nil, doomed)
  -- Messages popped without ever being received, or expiring, are in
  -- neither hash, which then does not exist.
  local deliveries = redis.call('EXISTS', DELIVERIES) == 1
  local expires = redis.call('EXISTS', EXPIRES) == 1
  if deliveries or expires then
    ids = ids or fields_of(keys)
    if deliveries then bulk('HDEL', DELIVERIES, ids) end
    if expires then bulk('HDEL', EXPIRES, ids) end
  end
end

-- Adds a taken message to the answer of the scripts that take many, after
-- the n parts there: a header of its key's and value's lengths (two
-- little-endian u32) and its expiry (ms, 0: none) and receive count (0 for a
-- pop; two little-endian doubles), then the key and the value. The answer is
-- one string however many messages it holds: restmq's client spends more
-- parsing each element of an array than Redis spends on the whole script, and
-- a binary header needs no number formatting. Returns the parts now there.
local function pack(taken, n, key, value, expiry, count)
  taken[n + 1] = struct.pack('<I4I4dd', #key, #value, expiry, count or 0)
  taken[n + 2] = key
  taken[n + 3] = value
  return n + 3
end

-- 1 when the queue has messages left anywhere, 0 when there is nothing more
-- to find here: remaining() > 0, in as few calls as it takes to tell.
local function left()
  if redis.call('LLEN', LIST) > 0 or redis.call('ZCARD', READY) > 0 or
      redis.call('EXISTS', INFLIGHT, DELAYED, DYING) > 0 then
    return 1
  end
  return 0
end

-- Messages of the queue left anywhere.
local function remaining()
  return redis.call('LLEN', LIST) + redis.call('ZCARD', READY) +
    redis.call('ZCARD', INFLIGHT) + redis.call('ZCARD', DELAYED) + redis.call('LLEN', DYING)
end

-- Whether delivery `d` of key is current: in flight, same count, not yet due.
local function current(key, d, now)
  local due = redis.call('ZSCORE', INFLIGHT, key)
  if not due or tonumber(due) <= now then return false end
  return tonumber(redis.call('HGET', DELIVERIES, id_of(key)) or '0') == d
end
";

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// Appends messages. KEYS: the eight, then counter, status. ARGV: prefix,
/// queue name, `1` to add the queue to QUEUESET here, channel to notify (or
/// empty), now, then value, ttl (s, 0: none) and delay (ms, 0: none) per
/// message. Returns the first number and how many (a call's numbers follow
/// each other), or `{-1, max_len}` when the queue is full.
/// The status is set to started unless already set; the queue's retention
/// bounds every ttl.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local max_len = tonumber(redis.call('HGET', CONFIG, 'max_len') or '0')
local count = (#ARGV - 5) / 3
if max_len > 0 and remaining() + count > max_len then
  return {-1, max_len}
end
local now = tonumber(ARGV[5])
-- Retention is any u64; past a century (broker::LONGEST) it is forever.
local keep = math.min(tonumber(redis.call('HGET', CONFIG, 'retention') or '0'), 3153600000)
-- Numbers, plain values, expiries and the two destinations are each set in
-- one call: a few calls for a whole batch, not three a message.
local n = 0
if count > 0 then n = redis.call('INCRBY', KEYS[9], count) - count end
local plain, expiries, delayed, listed = {}, {}, {}, {}
for i = 6, #ARGV, 3 do
  n = n + 1
  local key = ARGV[1] .. ':' .. n
  local ttl = tonumber(ARGV[i + 1])
  if keep > 0 and (ttl == 0 or ttl > keep) then ttl = keep end
  if ttl > 0 then
    redis.call('SET', key, ARGV[i], 'EX', ttl)
    expiries[#expiries + 1] = n
    expiries[#expiries + 1] = now + ttl * 1000
  else
    plain[#plain + 1] = key
    plain[#plain + 1] = ARGV[i]
  end
  local delay = tonumber(ARGV[i + 2])
  if delay > 0 then
    delayed[#delayed + 1] = now + delay
    delayed[#delayed + 1] = key
  else
    listed[#listed + 1] = key
  end
end
bulk('MSET', nil, plain)
bulk('HSET', EXPIRES, expiries)
bulk('ZADD', DELAYED, delayed)
bulk('LPUSH', LIST, listed)
redis.call('SETNX', KEYS[10], 1)
if ARGV[3] == '1' then
  redis.call('SADD', 'QUEUESET', ARGV[2])
end
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], ARGV[2])
end
return {n - count + 1, count}
",
    )
});

/// Takes up to `ARGV[1]` messages from the head. ARGV: max, now. Returns
/// messages waiting to be dead-lettered, 1 if messages are left (else 0),
/// then one string of the messages, each packed with its expiry (ms, 0: none)
/// as `pack` does (see `parse_packed`).
pub static POP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local now = tonumber(ARGV[2])
local wanted = tonumber(ARGV[1])
local taken, n, got = {}, 0, 0
-- A queue with none of restmq's keys for hidden, returned, expiring or
-- dying messages (the original's layout, and any queue only published to
-- and popped) is its list: taken from it with a third of the calls below,
-- and none of their bookkeeping for each message.
if redis.call('EXISTS', READY, INFLIGHT, DELAYED, DELIVERIES, DYING, EXPIRES) == 0 then
  while got < wanted do
    local keys = redis.call('LRANGE', LIST, -math.min(wanted - got, 1000), -1)
    if #keys == 0 then break end
    redis.call('LTRIM', LIST, 0, -#keys - 1)
    local values = redis.call('MGET', unpack(keys))
    local doomed = {}
    -- The list's tail is its oldest key.
    for i = #keys, 1, -1 do
      local key, value = keys[i], values[i]
      doomed[#doomed + 1] = key
      doomed[#doomed + 1] = key .. ':refcount'
      -- No value: expired by Redis (the original's ttl), or deleted.
      if value then
        local ttl = redis.call('PTTL', key)
        got = got + 1
        n = pack(taken, n, key, value, ttl > 0 and now + ttl or 0)
      end
    end
    bulk('DEL', nil, doomed)
  end
  return {0, redis.call('LLEN', LIST) > 0 and 1 or 0, table.concat(taken)}
end
settle(now)
while got < wanted do
  local keys = take_many(math.min(wanted - got, 1000))
  if #keys == 0 then break end
  local ids, values, expiries = read_taken(keys, now)
  for i, key in ipairs(keys) do
    if expiries[i] then
      got = got + 1
      n = pack(taken, n, key, values[i], expiries[i])
    end
  end
  forget_all(keys, ids)
end
return {redis.call('LLEN', DYING), left(), table.concat(taken)}
",
    )
});

/// Receives up to `ARGV[1]` messages, hiding each. ARGV: max, now, visibility
/// (ms). Returns messages waiting to be dead-lettered, 1 if messages are left
/// (else 0), then one string of the messages, each packed with its expiry (ms,
/// 0: none) and delivery count as `pack` does.
pub static RECEIVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local now = tonumber(ARGV[2])
settle(now)
local taken, n = {}, 0
local wanted = tonumber(ARGV[1])
-- Formatted once: every message hidden gets it.
local due = tostring(now + tonumber(ARGV[3]))
local got = 0
while got < wanted do
  local keys = take_many(math.min(wanted - got, 1000))
  if #keys == 0 then break end
  local ids, values, expiries = read_taken(keys, now)
  ids = ids or fields_of(keys)
  local hidden, gone, gone_ids = {}, {}, {}
  for i, key in ipairs(keys) do
    if expiries[i] then
      hidden[#hidden + 1] = due
      hidden[#hidden + 1] = key
      got = got + 1
      local count = redis.call('HINCRBY', DELIVERIES, ids[i], 1)
      n = pack(taken, n, key, values[i], expiries[i], count)
    else
      gone[#gone + 1] = key
      gone_ids[#gone_ids + 1] = ids[i]
    end
  end
  bulk('ZADD', INFLIGHT, hidden)
  forget_all(gone, gone_ids)
end
return {redis.call('LLEN', DYING), left(), table.concat(taken)}
",
    )
});

/// Acknowledges deliveries. ARGV: prefix, now, mode, then number and delivery
/// per receipt. Mode `0` only checks: receipts of messages not in flight here
/// are answered as absent, and nothing changes. Mode `1` applies: an absent
/// receipt is stale, and if any is stale nothing changes. Returns
/// `{stale…}, {absent…}, {current…}` as numbers.
pub static ACK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local now = tonumber(ARGV[2])
local apply = ARGV[3] == '1'
local stale, absent, here, current_ids = {}, {}, {}, {}
for i = 4, #ARGV, 2 do
  local key = ARGV[1] .. ':' .. ARGV[i]
  if not redis.call('ZSCORE', INFLIGHT, key) then
    if apply then
      stale[#stale + 1] = ARGV[i]
    else
      absent[#absent + 1] = ARGV[i]
    end
  elseif current(key, tonumber(ARGV[i + 1]), now) then
    here[#here + 1] = key
    current_ids[#current_ids + 1] = ARGV[i]
  else
    stale[#stale + 1] = ARGV[i]
  end
end
if apply and #stale == 0 then
  for _, key in ipairs(here) do
    redis.call('ZREM', INFLIGHT, key)
    forget(key)
  end
end
return {stale, absent, current_ids}
",
    )
});

/// Releases a delivery. ARGV: key, delivery, now, delay (ms), channel to notify
/// (or empty), queue name. Returns 0 when stale, 1 when visible or delayed
/// again, 2 when it went to be dead-lettered.
pub static NACK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local key, now = ARGV[1], tonumber(ARGV[3])
if not current(key, tonumber(ARGV[2]), now) then return 0 end
redis.call('ZREM', INFLIGHT, key)
if not alive(key, now) then
  forget(key)
  return 1
end
local id = id_of(key)
local max = tonumber(redis.call('HGET', CONFIG, 'max_receives') or '0')
if max > 0 and tonumber(ARGV[2]) >= max then
  redis.call('RPUSH', DYING, key)
  return 2
end
local delay = tonumber(ARGV[4])
if delay > 0 then
  redis.call('ZADD', DELAYED, now + delay, key)
else
  redis.call('ZADD', READY, id, key)
  if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
end
return 1
",
    )
});

/// Hides a delivery longer. ARGV: key, delivery, now, visibility (ms). Returns
/// 1, or 0 when stale.
pub static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local key, now = ARGV[1], tonumber(ARGV[3])
if not current(key, tonumber(ARGV[2]), now) then return 0 end
redis.call('ZADD', INFLIGHT, now + tonumber(ARGV[4]), key)
return 1
",
    )
});

/// Reads the head without taking it, counting the read. ARGV: now. Returns
/// messages waiting to be dead-lettered, then key, value, expiry (ms, 0: none)
/// and read count, or only the first when empty.
pub static PEEK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local now = tonumber(ARGV[1])
settle(now)
while true do
  local key = first()
  if not key then return {redis.call('LLEN', DYING)} end
  if alive(key, now) then
    local count = redis.call('INCR', key .. ':refcount')
    return {redis.call('LLEN', DYING), key, redis.call('GET', key), expires_of(key, now), count}
  end
  take()
  forget(key)
end
",
    )
});

/// Deletes one message, wherever it is. KEYS: the eight, then the message key.
/// ARGV: now. Returns 1 when it was there, unexpired.
pub static DELETE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local key = KEYS[9]
local found = redis.call('LREM', LIST, 0, key) + redis.call('ZREM', READY, key) +
  redis.call('ZREM', INFLIGHT, key) + redis.call('ZREM', DELAYED, key) +
  redis.call('LREM', DYING, 0, key)
local live = alive(key, tonumber(ARGV[1]))
forget(key)
if found > 0 and live then return 1 end
return 0
",
    )
});

/// Empties the queue at once: moves its list and sets of message keys aside,
/// to keys named `<prefix>:purged-<n>-<structure>` (no queue's key ends so),
/// listed in `KEYS[9]` for [`PURGE_STEP`] to delete the messages' own keys a
/// slice at a time. KEYS: the eight, the list of purges unfinished, the counter
/// numbering them. ARGV: the prefix. Returns 1 when there were any messages.
///
/// Moving is O(1) per structure, however many messages: one script deleting
/// every message key held Redis (and every other client) for seconds once a
/// queue had a few hundred thousand.
pub static PURGE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local existed, n = 0, nil
for _, part in ipairs({{LIST, 'list'}, {READY, 'ready'}, {INFLIGHT, 'inflight'},
                       {DELAYED, 'delayed'}, {DYING, 'dying'}}) do
  if redis.call('EXISTS', part[1]) == 1 then
    existed = 1
    n = n or redis.call('INCR', KEYS[10])
    local aside = ARGV[1] .. ':purged-' .. n .. '-' .. part[2]
    redis.call('RENAME', part[1], aside)
    redis.call('RPUSH', KEYS[9], aside)
  end
end
redis.call('UNLINK', DELIVERIES, EXPIRES)
return existed
",
    )
});

/// Deletes up to `ARGV[1]` message keys (and their refcounts) that [`PURGE`] set
/// aside. KEYS: the list of purges unfinished, the counter numbering them.
/// Returns 1 while some are left. Unfinished purges (restmq stopped midway)
/// are finished by the queue's next purge.
pub static PURGE_STEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local budget = tonumber(ARGV[1])
while budget > 0 do
  local aside = redis.call('LINDEX', KEYS[1], 0)
  if not aside then
    redis.call('DEL', KEYS[2])
    return 0
  end
  local kind = redis.call('TYPE', aside)['ok']
  local keys = {}
  if kind == 'list' then
    keys = redis.call('LRANGE', aside, 0, budget - 1)
    redis.call('LTRIM', aside, #keys, -1)
  elseif kind == 'zset' then
    keys = redis.call('ZRANGE', aside, 0, budget - 1)
    if #keys > 0 then redis.call('ZREMRANGEBYRANK', aside, 0, #keys - 1) end
  end
  if #keys == 0 then
    redis.call('UNLINK', aside)
    redis.call('LPOP', KEYS[1])
  else
    local doomed = {}
    for i, key in ipairs(keys) do
      doomed[2 * i - 1] = key
      doomed[2 * i] = key .. ':refcount'
    end
    redis.call('UNLINK', unpack(doomed))
    budget = budget - #keys
  end
end
return 1
",
    )
});

/// Puts messages back under their own keys, in key order at the head. ARGV:
/// prefix, channel to notify (or empty), queue name, now, then number, value
/// and expiry (ms, 0: none) per message.
pub static RESTORE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local now = tonumber(ARGV[4])
for i = 5, #ARGV, 3 do
  local key = ARGV[1] .. ':' .. ARGV[i]
  local at = tonumber(ARGV[i + 2])
  if redis.call('EXISTS', key) == 0 and (at == 0 or at > now) then
    if at > 0 then
      redis.call('SET', key, ARGV[i + 1], 'PX', at - now)
      redis.call('HSET', EXPIRES, ARGV[i], at)
    else
      redis.call('SET', key, ARGV[i + 1])
    end
    redis.call('ZADD', READY, tonumber(ARGV[i]), key)
  end
end
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
",
    )
});

/// Removes a message that was copied to the dead-letter queue. ARGV: key.
pub static BURY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local key = ARGV[1]
if redis.call('LREM', DYING, 1, key) > 0 then forget(key) end
return 1
",
    )
});

/// Counts of the queue: visible, in flight, delayed. ARGV: none.
pub static COUNTS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
return {redis.call('LLEN', LIST) + redis.call('ZCARD', READY),
  redis.call('ZCARD', INFLIGHT), redis.call('ZCARD', DELAYED)}
",
    )
});

/// Sets a status and notifies. KEYS: status. ARGV: value, channel (or empty), queue.
pub static SET_STATUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
",
    )
});

/// Raises a counter to at least `ARGV[1]`. KEYS: counter.
pub static RAISE_COUNTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if wanted > current then redis.call('SET', KEYS[1], wanted) end
return 1
",
    )
});
