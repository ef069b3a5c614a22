//! The Lua scripts that make each multi-key step atomic on Redis. They work on
//! the original RestMQ's keyspace: `<q>:UUID` (counter), `<q>:<n>` (value),
//! `<q>:queue` (list of keys, LPUSH to publish, RPOP to pop), `queuestat::<q>`,
//! `<q>:<n>:refcount` and `QUEUESET`. Message keys are built inside the scripts
//! from a prefix (`<q>`, or `{<q>}` on a cluster) so they share their queue's slot.

use std::sync::LazyLock;

use redis::Script;

/// Appends messages. KEYS: counter, list, status. ARGV: prefix, queue name,
/// `1` to add the queue to QUEUESET here, channel to notify (or empty), then a
/// value and a ttl in seconds (0: none) per message. Returns the numbers.
/// The status is set to started on a queue's first message unless already set.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ids = {}
for i = 5, #ARGV, 2 do
  local n = redis.call('INCR', KEYS[1])
  local key = ARGV[1] .. ':' .. n
  local ttl = tonumber(ARGV[i + 1])
  if ttl > 0 then
    redis.call('SET', key, ARGV[i], 'EX', ttl)
  else
    redis.call('SET', key, ARGV[i])
  end
  redis.call('LPUSH', KEYS[2], key)
  ids[#ids + 1] = n
end
redis.call('SETNX', KEYS[3], 1)
if ARGV[3] == '1' then
  redis.call('SADD', 'QUEUESET', ARGV[2])
end
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], ARGV[2])
end
return ids
",
    )
});

/// Takes up to ARGV[1] messages from the head. KEYS: list. Returns key, value
/// and remaining ttl in ms (-1: none) per message. Keys whose value expired are
/// dropped on the way.
pub static POP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
local max = tonumber(ARGV[1])
while #out < max * 3 do
  local key = redis.call('RPOP', KEYS[1])
  if not key then break end
  local value = redis.call('GET', key)
  if value then
    out[#out + 1] = key
    out[#out + 1] = value
    out[#out + 1] = redis.call('PTTL', key)
  end
  redis.call('DEL', key, key .. ':refcount')
end
return out
",
    )
});

/// Reads the head without taking it, counting the read. KEYS: list. Returns key,
/// value, read count and remaining ttl in ms, or nil when empty.
pub static PEEK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
while true do
  local key = redis.call('LINDEX', KEYS[1], -1)
  if not key then return nil end
  local value = redis.call('GET', key)
  if value then
    local count = redis.call('INCR', key .. ':refcount')
    return {key, value, count, redis.call('PTTL', key)}
  end
  redis.call('RPOP', KEYS[1])
  redis.call('DEL', key .. ':refcount')
end
",
    )
});

/// Deletes one message. KEYS: list, message key. Returns 1 when it was waiting.
pub static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local removed = redis.call('LREM', KEYS[1], 0, KEYS[2])
local existed = redis.call('DEL', KEYS[2])
redis.call('DEL', KEYS[2] .. ':refcount')
if removed > 0 and existed > 0 then return 1 end
return 0
",
    )
});

/// Deletes every waiting message. KEYS: list. Returns 1 when the list existed.
pub static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local keys = redis.call('LRANGE', KEYS[1], 0, -1)
for i = 1, #keys, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #keys) do
    chunk[#chunk + 1] = keys[j]
    chunk[#chunk + 1] = keys[j] .. ':refcount'
  end
  redis.call('UNLINK', unpack(chunk))
end
return redis.call('DEL', KEYS[1])
",
    )
});

/// Puts messages back at the head under their own keys. KEYS: list. ARGV:
/// prefix, channel to notify (or empty), queue name, then number, value and
/// remaining ttl in ms (-1: none) per message, highest number first.
pub static RESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 4, #ARGV, 3 do
  local key = ARGV[1] .. ':' .. ARGV[i]
  if redis.call('EXISTS', key) == 0 then
    local ttl = tonumber(ARGV[i + 2])
    if ttl > 0 then
      redis.call('SET', key, ARGV[i + 1], 'PX', ttl)
    else
      redis.call('SET', key, ARGV[i + 1])
    end
    redis.call('RPUSH', KEYS[1], key)
  end
end
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
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

/// Raises a counter to at least ARGV[1]. KEYS: counter.
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
