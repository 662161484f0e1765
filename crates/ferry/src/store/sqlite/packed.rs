//! Several events of one transfer in one `events` row: what one
//! transaction of the committer writes (512 `file.copied`, then 512
//! `file.committed`) costs a few bytes per event instead of a row each.
//!
//! The row is keyed by its last event's `seq` and holds `n` events,
//! numbered `seq - n + 1 ..= seq`; they share the row's time and transfer.
//! Each event is its entry (a delta from the previous one), its name (a
//! code for the names ferry writes) and its context (the shapes the
//! committer writes as binary, anything else as JSON text). Decoding gives
//! back exactly the JSON value that was encoded: a shape is packed only
//! when its unpacking is equal to it.

use serde_json::{Map, Value};

use crate::model::{Checksum, ChecksumAlgo, EntryIndex};

/// At most this many events share a row (a larger batch takes several):
/// a row is read whole, so this bounds what one read holds in memory.
pub(super) const EVENTS_MAX: usize = 4096;

/// The first byte of a packed row: its format.
const FORMAT: u8 = 1;

/// Event names by code (code = position + 1; 0: the name follows as text).
/// Part of the file format: append, never reorder.
const NAMES: &[&str] = &[
    "file.copying",
    "file.copied",
    "file.committed",
    "file.failed",
    "file.skipped",
    "file.progress",
    "file.removed",
    "file.pending",
    "transfer.created",
    "transfer.dispatched",
    "transfer.running",
    "transfer.completed",
    "transfer.failed",
    "transfer.cancelled",
    "transfer.finalized",
    "transfer.added",
    "transfer.freed",
    "transfer.reattached",
    "transfer.limited",
];

/// Context shapes.
const CONTEXT_NULL: u8 = 0;
/// `{"bytes": N}`
const CONTEXT_BYTES: u8 = 1;
/// `{"bytes": N, "checksum": "ALGO:HEX"}`: algorithm code, then the digest.
const CONTEXT_BYTES_CHECKSUM: u8 = 2;
/// Anything else: JSON text.
const CONTEXT_JSON: u8 = 3;

/// One event to pack.
pub(super) struct PackedEvent<'a> {
    pub entry: Option<EntryIndex>,
    pub name: &'a str,
    pub context: &'a Value,
}

/// One event unpacked.
#[derive(Debug, PartialEq)]
pub(super) struct UnpackedEvent {
    pub entry: Option<EntryIndex>,
    pub name: String,
    pub context: Value,
}

pub(super) fn pack(events: &[PackedEvent<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + events.len() * 24);
    out.push(FORMAT);
    let mut previous = 0i64;
    for event in events {
        match event.entry {
            None => put_varint(&mut out, 0),
            Some(index) => {
                let index = i64::from(index.0);
                put_varint(&mut out, zigzag(index - previous) + 1);
                previous = index;
            }
        }
        match NAMES.iter().position(|n| *n == event.name) {
            Some(code) => out.push(code as u8 + 1),
            None => {
                out.push(0);
                put_bytes(&mut out, event.name.as_bytes());
            }
        }
        put_context(&mut out, event.context);
    }
    out
}

/// The `n` events of a packed row, or what is wrong with it.
pub(super) fn unpack(bytes: &[u8], n: usize) -> Result<Vec<UnpackedEvent>, String> {
    let mut input = Input { bytes, at: 0 };
    if input.byte()? != FORMAT {
        return Err(format!("unknown packed format {}", bytes[0]));
    }
    let mut events = Vec::with_capacity(n);
    let mut previous = 0i64;
    for _ in 0..n {
        let entry = match input.varint()? {
            0 => None,
            delta => {
                let index = previous
                    .checked_add(unzigzag(delta - 1))
                    .and_then(|index| u32::try_from(index).ok())
                    .ok_or("an impossible entry")?;
                previous = i64::from(index);
                Some(EntryIndex(index))
            }
        };
        let name = match input.byte()? {
            0 => String::from_utf8(input.bytes_field()?.to_vec())
                .map_err(|_| "a name that is not UTF-8".to_string())?,
            code => NAMES
                .get(usize::from(code) - 1)
                .ok_or_else(|| format!("unknown name code {code}"))?
                .to_string(),
        };
        let context = input.context()?;
        events.push(UnpackedEvent {
            entry,
            name,
            context,
        });
    }
    if input.at != bytes.len() {
        return Err(format!("{} bytes after {n} events", bytes.len() - input.at));
    }
    Ok(events)
}

fn put_context(out: &mut Vec<u8>, context: &Value) {
    if context.is_null() {
        out.push(CONTEXT_NULL);
        return;
    }
    if let Some((bytes, checksum)) = bytes_shape(context) {
        match checksum {
            None => out.push(CONTEXT_BYTES),
            Some(_) => out.push(CONTEXT_BYTES_CHECKSUM),
        }
        put_varint(out, bytes);
        if let Some(checksum) = checksum {
            out.push(algo_code(checksum.algo));
            out.extend_from_slice(checksum.digest());
        }
        return;
    }
    out.push(CONTEXT_JSON);
    put_bytes(out, context.to_string().as_bytes());
}

/// `{"bytes": N}` or `{"bytes": N, "checksum": C}` where `C` is a checksum
/// in the form it is printed in, so that unpacking gives it back as it was.
fn bytes_shape(context: &Value) -> Option<(u64, Option<Checksum>)> {
    let map = context.as_object()?;
    let bytes = map.get("bytes")?;
    let bytes = bytes.is_u64().then(|| bytes.as_u64()).flatten()?;
    match map.len() {
        1 => Some((bytes, None)),
        2 => {
            let text = map.get("checksum")?.as_str()?;
            let checksum = Checksum::parse(text)?;
            (checksum.to_string() == text).then_some((bytes, Some(checksum)))
        }
        _ => None,
    }
}

fn algo_code(algo: ChecksumAlgo) -> u8 {
    match algo {
        ChecksumAlgo::Xxh3 => 0,
        ChecksumAlgo::Blake3 => 1,
    }
}

fn algo_of_code(code: u8) -> Option<ChecksumAlgo> {
    [ChecksumAlgo::Xxh3, ChecksumAlgo::Blake3]
        .into_iter()
        .find(|algo| algo_code(*algo) == code)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.at).ok_or("truncated")?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint longer than 64 bits".into())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(len).ok_or("truncated")?;
        let bytes = self.bytes.get(self.at..end).ok_or("truncated")?;
        self.at = end;
        Ok(bytes)
    }

    fn bytes_field(&mut self) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.varint()?).map_err(|_| "truncated")?;
        self.take(len)
    }

    fn context(&mut self) -> Result<Value, String> {
        match self.byte()? {
            CONTEXT_NULL => Ok(Value::Null),
            shape @ (CONTEXT_BYTES | CONTEXT_BYTES_CHECKSUM) => {
                let mut map = Map::new();
                map.insert("bytes".into(), self.varint()?.into());
                if shape == CONTEXT_BYTES_CHECKSUM {
                    let code = self.byte()?;
                    let algo = algo_of_code(code).ok_or(format!("unknown hash {code}"))?;
                    let digest = self.take(algo.digest_len())?;
                    let checksum = Checksum::from_digest(algo, digest).ok_or("bad digest")?;
                    map.insert("checksum".into(), checksum.to_string().into());
                }
                Ok(Value::Object(map))
            }
            CONTEXT_JSON => {
                serde_json::from_slice(self.bytes_field()?).map_err(|e| format!("bad context: {e}"))
            }
            shape => Err(format!("unknown context shape {shape}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unpacking_gives_back_what_was_packed() {
        let checksum = Checksum::parse(&format!("xxh3:{}", "ab".repeat(16))).unwrap();
        let blake = Checksum::parse(&format!("blake3:{}", "0f".repeat(32))).unwrap();
        let contexts = [
            Value::Null,
            json!({"bytes": 4096}),
            json!({"bytes": 0, "checksum": checksum.to_string()}),
            json!({"bytes": u64::MAX, "checksum": blake.to_string()}),
            json!({"bytes": -1}),
            json!({"bytes": 1.5}),
            json!({"bytes": 1, "checksum": "XXH3:00"}),
            json!({"bytes": 1, "checksum": format!("xxh3:{}", "AB".repeat(16))}),
            json!({"bytes": 1, "other": 2}),
            json!({"error": "no space left on device", "nested": [1, null, "x"]}),
            json!("text"),
        ];
        let names = ["file.copied", "file.committed", "something.new", ""];
        let entries = [
            Some(EntryIndex(5)),
            None,
            Some(EntryIndex(0)),
            Some(EntryIndex(u32::MAX - 1)),
        ];
        let mut events = Vec::new();
        for (i, context) in contexts.iter().enumerate() {
            events.push(PackedEvent {
                entry: entries[i % entries.len()],
                name: names[i % names.len()],
                context,
            });
        }
        let bytes = pack(&events);
        let unpacked = unpack(&bytes, events.len()).unwrap();
        for (event, back) in events.iter().zip(&unpacked) {
            assert_eq!(back.entry, event.entry);
            assert_eq!(back.name, event.name);
            assert_eq!(&back.context, event.context);
            assert_eq!(back.context.to_string(), event.context.to_string());
        }
    }

    #[test]
    fn a_committed_batch_costs_a_few_bytes_an_event() {
        let checksum = Checksum::parse(&format!("xxh3:{}", "ab".repeat(16))).unwrap();
        let copied = json!({"bytes": 4096, "checksum": checksum.to_string()});
        let events: Vec<_> = (0..512)
            .map(|i| PackedEvent {
                entry: Some(EntryIndex(100 + i)),
                name: "file.copied",
                context: &copied,
            })
            .collect();
        assert!(pack(&events).len() <= 2 + 512 * 22);
        let null = Value::Null;
        let events: Vec<_> = (0..512)
            .map(|i| PackedEvent {
                entry: Some(EntryIndex(100 + i)),
                name: "file.committed",
                context: &null,
            })
            .collect();
        assert!(pack(&events).len() <= 2 + 512 * 3);
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        let context = json!({"bytes": 4096});
        let events = [
            PackedEvent {
                entry: Some(EntryIndex(3)),
                name: "file.copied",
                context: &context,
            },
            PackedEvent {
                entry: Some(EntryIndex(4)),
                name: "file.committed",
                context: &Value::Null,
            },
        ];
        let bytes = pack(&events);
        assert!(unpack(&bytes, 2).is_ok());
        assert!(unpack(&bytes, 3).is_err(), "fewer events than the row says");
        assert!(unpack(&bytes, 1).is_err(), "bytes left over");
        for cut in 0..bytes.len() {
            assert!(unpack(&bytes[..cut], 2).is_err());
        }
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                let _ = unpack(&damaged, 2);
            }
        }
        assert!(unpack(&[2], 0).is_err(), "an unknown format");
    }
}
