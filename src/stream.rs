//! Redis stream I/O: consumer groups, reading, reclaiming, acknowledging.
//!
//! Replies are parsed from `redis::Value` directly into [`StreamEntry`]
//! values (no per-entry hash maps). Blocking reads must run on a connection
//! of their own: a `BLOCK`ed `XREADGROUP` on a shared multiplexed connection
//! would stall every other command queued behind it.

use std::collections::HashMap;
use std::sync::Arc;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

/// One stream entry as delivered to this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub stream: Arc<str>,
    pub id: String,
    /// Field names and raw values, in entry order. Empty when the entry was
    /// deleted from the stream while still pending.
    pub fields: Vec<(String, Vec<u8>)>,
    /// How many times Redis has delivered it (1 for a first read).
    pub deliveries: u32,
}

impl StreamEntry {
    /// The entry's XADD time (the millisecond part of its id).
    pub fn added_at_ms(&self) -> Option<u64> {
        self.id.split('-').next()?.parse().ok()
    }

    /// The fields as borrowed pairs.
    pub fn field_pairs(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// `[id, [field, value, …]]` → entry (fields empty for a deleted entry).
/// Takes the reply by value so payloads are moved out, not copied.
fn parse_entry(stream: &Arc<str>, v: Value) -> Option<StreamEntry> {
    let Value::Array(parts) = v else { return None };
    let mut parts = parts.into_iter();
    let id = text(&parts.next()?)?;
    let mut fields = Vec::new();
    if let Some(Value::Array(kv)) = parts.next() {
        fields.reserve(kv.len() / 2);
        let mut kv = kv.into_iter();
        while let (Some(name), Some(value)) = (kv.next(), kv.next()) {
            let name = text(&name)?;
            let value = match value {
                Value::BulkString(b) => b,
                other => text(&other)?.into_bytes(),
            };
            fields.push((name, value));
        }
    }
    Some(StreamEntry {
        stream: stream.clone(),
        id,
        fields,
        deliveries: 1,
    })
}

/// Parses an XREADGROUP reply: `[[stream, [entry, …]], …]` (RESP2) or a map
/// of stream → entries (RESP3); nil when the read timed out.
fn parse_read_reply(reply: Value, streams: &[Arc<str>]) -> Vec<StreamEntry> {
    let per_stream: Vec<(Value, Value)> = match reply {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Array(pair) => <[Value; 2]>::try_from(pair)
                    .ok()
                    .map(|[name, entries]| (name, entries)),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs,
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for (name, entries) in per_stream {
        let Some(name) = text(&name) else { continue };
        let Some(stream) = streams.iter().find(|s| s.as_ref() == name) else {
            continue;
        };
        if let Value::Array(entries) = entries {
            out.extend(entries.into_iter().filter_map(|e| parse_entry(stream, e)));
        }
    }
    out
}

/// Creates the consumer group on every stream (and the stream itself if
/// absent), starting from the beginning. An existing group is left as is.
pub async fn ensure_groups<C: ConnectionLike>(
    conn: &mut C,
    streams: &[Arc<str>],
    group: &str,
) -> RedisResult<()> {
    for stream in streams {
        let result: RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream.as_ref())
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match result {
            Ok(_) => tracing::info!(stream = %stream, group, "created consumer group"),
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether an error means the group (or its stream) is gone, e.g. after
/// Redis restarted without persistence.
pub fn is_missing_group(error: &redis::RedisError) -> bool {
    error.code() == Some("NOGROUP")
}

/// `XREADGROUP` over `streams` with one id each (`>` for new entries, an
/// entry id to page through this consumer's pending entries).
#[allow(clippy::too_many_arguments)]
pub async fn read_group<C: ConnectionLike>(
    conn: &mut C,
    group: &str,
    consumer: &str,
    streams: &[Arc<str>],
    ids: &[&str],
    count: usize,
    block_ms: Option<u64>,
) -> RedisResult<Vec<StreamEntry>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    if let Some(ms) = block_ms {
        cmd.arg("BLOCK").arg(ms);
    }
    cmd.arg("STREAMS");
    for s in streams {
        cmd.arg(s.as_ref());
    }
    for id in ids {
        cmd.arg(*id);
    }
    let reply: Value = cmd.query_async(conn).await?;
    Ok(parse_read_reply(reply, streams))
}

/// One `XAUTOCLAIM … JUSTID` page: the ids of entries idle longer than
/// `min_idle_ms`, now owned by `consumer`. `JUSTID` leaves their delivery
/// counts alone, so the caller can skip entries it is still processing
/// itself and [`claim`] the others (which counts as a delivery). Returns the
/// next cursor (`0-0` when the scan is complete), the ids, and the ids that
/// were pending but are gone from the stream.
pub async fn autoclaim_ids<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle_ms: u64,
    start: &str,
    count: usize,
) -> RedisResult<(String, Vec<String>, Vec<String>)> {
    let reply: Value = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg(start)
        .arg("COUNT")
        .arg(count)
        .arg("JUSTID")
        .query_async(conn)
        .await?;
    let Value::Array(parts) = reply else {
        return Ok(("0-0".to_owned(), Vec::new(), Vec::new()));
    };
    let ids = |v: Option<&Value>| match v {
        Some(Value::Array(ids)) => ids.iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    let next = parts
        .first()
        .and_then(text)
        .unwrap_or_else(|| "0-0".to_owned());
    Ok((next, ids(parts.get(1)), ids(parts.get(2))))
}

/// `XCLAIM` of entries by id, with their fields; each counts as a delivery.
pub async fn claim<C: ConnectionLike>(
    conn: &mut C,
    stream: &Arc<str>,
    group: &str,
    consumer: &str,
    ids: &[&str],
) -> RedisResult<Vec<StreamEntry>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let reply: Value = redis::cmd("XCLAIM")
        .arg(stream.as_ref())
        .arg(group)
        .arg(consumer)
        .arg(0)
        .arg(ids)
        .query_async(conn)
        .await?;
    Ok(match reply {
        Value::Array(entries) => entries
            .into_iter()
            .filter_map(|e| parse_entry(stream, e))
            .collect(),
        _ => Vec::new(),
    })
}

/// Delivery counts of `consumer`'s pending entries (`XPENDING` over the
/// range `ids` span, filtered to the consumer). Takes only the ids, in
/// stream order: callers need not copy whole entries to ask.
pub async fn delivery_counts<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
    group: &str,
    consumer: &str,
    ids: &[&str],
) -> RedisResult<HashMap<String, u32>> {
    let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
        return Ok(HashMap::new());
    };
    let reply: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(*first)
        .arg(*last)
        .arg(ids.len())
        .arg(consumer)
        .query_async(conn)
        .await?;
    let mut counts = HashMap::new();
    if let Value::Array(rows) = reply {
        for row in rows {
            if let Value::Array(cols) = row
                && let (Some(id), Some(count)) =
                    (cols.first().and_then(text), cols.get(3).and_then(int))
            {
                counts.insert(id, count.max(0) as u32);
            }
        }
    }
    Ok(counts)
}

/// Acknowledges entries, one `XACK` per stream, pipelined in one round trip.
pub async fn ack<C: ConnectionLike>(
    conn: &mut C,
    group: &str,
    entries: &[(&str, &str)],
) -> RedisResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut by_stream: Vec<(&str, Vec<&str>)> = Vec::new();
    for (stream, id) in entries {
        match by_stream.iter_mut().find(|(s, _)| s == stream) {
            Some((_, ids)) => ids.push(id),
            None => by_stream.push((stream, vec![id])),
        }
    }
    let mut pipe = redis::pipe();
    for (stream, ids) in &by_stream {
        pipe.cmd("XACK").arg(*stream).arg(group).arg(ids).ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// A group's backlog on one stream, as /health shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupInfo {
    /// Entries still in the stream and not yet delivered to the group (None
    /// when Redis cannot tell).
    pub lag: Option<u64>,
    /// Entries delivered but not acknowledged.
    pub pending: u64,
    /// Entries this process found removed from the stream before the group
    /// read them (see `stream_watch`), since it started; /health fills it
    /// from the watcher's record of losses when it answers.
    pub lost: u64,
}

/// What `XINFO STREAM` and `XINFO GROUPS` say about one stream and one
/// group: read only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    /// The stream's `entries-added`: every entry ever added to it. It never
    /// decreases for one stream, so a smaller value means a new stream.
    pub entries_added: u64,
    /// The backlog, with `lost` left at 0.
    pub info: GroupInfo,
}

/// An entry id as `(milliseconds, sequence)`, comparable.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Flat `[key, value, …]` (RESP2) or map (RESP3) reply → pairs.
fn pairs(v: Value) -> Vec<(String, Value)> {
    match v {
        Value::Array(flat) => flat
            .chunks_exact(2)
            .filter_map(|kv| Some((text(&kv[0])?, kv[1].clone())))
            .collect(),
        Value::Map(map) => map
            .into_iter()
            .filter_map(|(k, v)| Some((text(&k)?, v)))
            .collect(),
        _ => Vec::new(),
    }
}

/// `XINFO STREAM` and `XINFO GROUPS` for `group` on `stream`; None if the
/// stream or the group does not exist. Changes nothing.
///
/// The lag is what can still be delivered: 0 once the group has been
/// delivered the stream's last entry, the stream's length when the group's
/// position lies before its first entry (trimmed past), otherwise Redis's
/// own figure. Redis's figure alone can be wrong: after it reloads a
/// rewritten append-only file a group's `entries-read` goes back to its
/// value at the rewrite (Redis 7.0; a caught-up group kept reporting
/// 100,000 entries of lag), and after entries were trimmed ahead of the
/// group it keeps counting them. [`settle_read_counter`] corrects it.
pub async fn group_state<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> RedisResult<Option<GroupState>> {
    let stream_info: RedisResult<Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(conn)
        .await;
    let stream_info = match stream_info {
        Ok(v) => pairs(v),
        Err(e) if e.to_string().contains("no such key") => return Ok(None),
        Err(e) => return Err(e),
    };
    let field = |key: &str| stream_info.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let last_generated = field("last-generated-id")
        .and_then(text)
        .and_then(|id| parse_id(&id));
    let first = match field("first-entry") {
        Some(Value::Array(entry)) => entry.first().and_then(text).and_then(|id| parse_id(&id)),
        _ => None,
    };
    let length = field("length").and_then(int).unwrap_or(0).max(0) as u64;
    let entries_added = field("entries-added").and_then(int).unwrap_or(0).max(0) as u64;
    let reply: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    let Value::Array(groups) = reply else {
        return Ok(None);
    };
    for g in groups {
        let fields = pairs(g);
        let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        if get("name").and_then(text).as_deref() != Some(group) {
            continue;
        }
        let delivered = get("last-delivered-id")
            .and_then(text)
            .and_then(|id| parse_id(&id));
        let caught_up = matches!((delivered, last_generated), (Some(d), Some(g)) if d >= g);
        let behind_head = length == 0 || matches!((delivered, first), (Some(d), Some(f)) if d < f);
        let lag = if caught_up {
            Some(0)
        } else if behind_head {
            Some(length)
        } else {
            get("lag").and_then(int).map(|l| l.max(0) as u64)
        };
        return Ok(Some(GroupState {
            entries_added,
            info: GroupInfo {
                lag,
                pending: get("pending").and_then(int).unwrap_or(0).max(0) as u64,
                lost: 0,
            },
        }));
    }
    Ok(None)
}

/// [`group_state`]'s backlog alone; None if the stream or group is absent.
pub async fn group_info<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> RedisResult<Option<GroupInfo>> {
    Ok(group_state(conn, stream, group).await?.map(|s| s.info))
}

/// How [`settle_read_counter`] found the group's read counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Right: nothing changed.
    Exact,
    /// The group lies inside the stream, short of its last entry: Redis's
    /// counters cannot tell whether entries between were removed.
    Unknown,
    /// The group's position lies before the stream's first entry and
    /// entries between were removed (trimmed) unread: this many.
    TrimmedUnread(u64),
    /// The group has been delivered the last entry, yet Redis counted this
    /// many more entries added than read: entries trimmed after the group
    /// last read and before it read on, or a counter gone stale when Redis
    /// reloaded its append-only file. Only the caller's history can tell.
    CaughtUpOff(u64),
}

/// Corrects a group's `entries-read` counter, atomically, and returns by how
/// much it was off; see [`Settled`]. Several writer processes share a
/// group: only the one whose script made the correction gets a non-zero
/// figure, so a loss is counted once, however many processes watch, and
/// not again after a restart.
///
/// Redis 7.0 does not count trimmed entries against a group: trimming
/// leaves `entries-read` alone, and reading on past a trimmed gap adds one
/// per entry read, so `entries-added − entries-read` keeps counting the
/// gap. (Trimming does not move `max-deleted-entry-id` either: only XDEL
/// does.)
const SETTLE_READ_COUNTER: &str = r#"
local stream, group = KEYS[1], ARGV[1]
if redis.call('EXISTS', stream) == 0 then return {'exact', 0} end
local function id(s)
  local ms, seq = string.match(s, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)
  local am, as = id(a)
  local bm, bs = id(b)
  return am < bm or (am == bm and as < bs)
end
local s = {}
local info = redis.call('XINFO', 'STREAM', stream)
for i = 1, #info, 2 do s[info[i]] = info[i + 1] end
local g
for _, row in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local t = {}
  for i = 1, #row, 2 do t[row[i]] = row[i + 1] end
  if t['name'] == group then g = t end
end
if not g then return {'exact', 0} end
local added, length = s['entries-added'], s['length']
local delivered, read = g['last-delivered-id'], g['entries-read']
if not before(delivered, s['last-generated-id']) then
  if read and added > read then
    redis.call('XGROUP', 'SETID', stream, group, delivered, 'ENTRIESREAD', added)
    return {'caught_up', added - read}
  end
  return {'exact', 0}
end
local first = s['first-entry'] and s['first-entry'][1]
if length == 0 or before(delivered, first) then
  local removed = added - length
  local lost
  if read then
    lost = removed - read
  elseif delivered == '0-0' then
    lost = removed
  else
    return {'unknown', 0}
  end
  if lost > 0 then
    redis.call('XGROUP', 'SETID', stream, group, delivered, 'ENTRIESREAD', removed)
    return {'trimmed', lost}
  end
  return {'exact', 0}
end
return {'unknown', 0}
"#;

/// Runs [`SETTLE_READ_COUNTER`] for `group` on `stream`: a write.
pub async fn settle_read_counter<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> RedisResult<Settled> {
    let (kind, n): (String, i64) = redis::cmd("EVAL")
        .arg(SETTLE_READ_COUNTER)
        .arg(1)
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await?;
    let n = n.max(0) as u64;
    Ok(match kind.as_str() {
        "trimmed" if n > 0 => Settled::TrimmedUnread(n),
        "caught_up" if n > 0 => Settled::CaughtUpOff(n),
        "unknown" => Settled::Unknown,
        _ => Settled::Exact,
    })
}

/// Marks, once per incarnation of a stream's group, that the loss of the
/// stream it replaced has been accounted for: `XGROUP CREATECONSUMER` of a
/// consumer that never reads. True for the one caller that created it.
pub async fn claim_recreation<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> RedisResult<bool> {
    let created: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(stream)
        .arg(group)
        .arg(RECREATION_MARK)
        .query_async(conn)
        .await?;
    Ok(created == 1)
}

/// The consumer name [`claim_recreation`] creates; it never reads.
pub const RECREATION_MARK: &str = "writer-recreation-accounted";

/// The Redis server's `run_id`, new at every restart.
pub async fn server_run_id<C: ConnectionLike>(conn: &mut C) -> RedisResult<String> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .unwrap_or("")
        .trim()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_read_replies() {
        let streams: Vec<Arc<str>> = vec!["a".into(), "b".into()];
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("b"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1700000000000-3"),
                    Value::Array(vec![bulk("payload"), bulk("{}"), bulk("x"), bulk("y")]),
                ]),
                // Pending but deleted from the stream.
                Value::Array(vec![bulk("1700000000001-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read_reply(reply, &streams);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].stream.as_ref(), "b");
        assert_eq!(entries[0].fields[0], ("payload".to_owned(), b"{}".to_vec()));
        assert_eq!(entries[0].added_at_ms(), Some(1_700_000_000_000));
        assert!(entries[1].fields.is_empty());
        assert!(parse_read_reply(Value::Nil, &streams).is_empty());
    }
}
