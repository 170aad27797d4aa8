//! What the edge writes to its WAL per accepted or rejected message: everything needed to
//! produce the Kafka record after a restart, without the MQTT message. Pure encode/decode.
//!
//! Layout (little endian): `version u8 | destination u8 | has_id u8 | event_id [16] |
//! key_len u16 | key | header_count u8 | (name_len u8 | name | value_len u16 | value)* | payload`.

use crate::EdgeError;

const VERSION: u8 = 1;

/// Which Kafka topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Events,
    DeadLetter,
    Rollups,
    /// The MQTT broker's refusals (see [`crate::broker_log`]).
    Audit,
}

impl Destination {
    /// Every destination, in the order of their discriminants (`destination as usize`).
    pub const ALL: [Destination; 4] = [Destination::Events, Destination::DeadLetter, Destination::Rollups, Destination::Audit];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub destination: Destination,
    /// Set for accepted events, so a restart can refill the dedup window.
    pub event_id: Option<u128>,
    pub key: String,
    pub headers: Vec<(&'static str, String)>,
    /// The MQTT payload, byte for byte.
    pub payload: Vec<u8>,
}

/// Header names the edge writes; decoding maps them back to these statics.
pub const HEADER_NAMES: [&str; 8] = [
    "edubrain.received_ms",
    "edubrain.edge_city",
    "edubrain.rule",
    "edubrain.field",
    "edubrain.reason",
    "edubrain.mqtt_topic",
    "edubrain.clock_flag",
    "edubrain.summarised",
];

impl WalRecord {
    pub fn encode(&self) -> Vec<u8> {
        // The shipper refuses a record with another name as corrupt, which stops the edge.
        debug_assert!(self.headers.iter().all(|(n, _)| HEADER_NAMES.contains(n)), "a header not in HEADER_NAMES: {:?}", self.headers);
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        encode(self.destination, self.event_id, &self.key, &headers, &self.payload)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EdgeError> {
        let r = WalRecordRef::parse(bytes)?;
        Ok(Self {
            destination: r.destination,
            event_id: r.event_id,
            key: r.key.to_string(),
            headers: r.headers().iter().map(|&(n, v)| (n, v.to_string())).collect(),
            payload: r.payload.to_vec(),
        })
    }
}

/// Encodes a record from borrowed parts, in one allocation (the edge's hot path).
pub fn encode(destination: Destination, event_id: Option<u128>, key: &str, headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let header_bytes: usize = headers.iter().map(|(n, v)| 3 + n.len() + v.len()).sum();
    let mut out = Vec::with_capacity(22 + key.len() + 1 + header_bytes + payload.len());
    out.push(VERSION);
    out.push(match destination {
        Destination::Events => 0,
        Destination::DeadLetter => 1,
        Destination::Rollups => 2,
        Destination::Audit => 3,
    });
    out.push(u8::from(event_id.is_some()));
    out.extend_from_slice(&event_id.unwrap_or(0).to_le_bytes());
    push_str16(&mut out, key);
    out.push(headers.len() as u8);
    for (name, value) in headers {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        push_str16(&mut out, value);
    }
    out.extend_from_slice(payload);
    out
}

/// A record read in place, borrowing the WAL bytes: what the shipper hands to librdkafka
/// (which copies it), without a copy of its own per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecordRef<'a> {
    pub destination: Destination,
    pub event_id: Option<u128>,
    pub key: &'a str,
    /// The first `header_count` are the record's headers (see [`WalRecordRef::headers`]): held
    /// in place rather than in a `Vec`, since the shipper parses every record it produces.
    header_slots: [(&'static str, &'a str); HEADER_NAMES.len()],
    header_count: usize,
    pub payload: &'a [u8],
}

impl<'a> WalRecordRef<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, EdgeError> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u8()?;
        if version != VERSION {
            return Err(EdgeError::Wal(format!("record version {version} is not {VERSION}")));
        }
        let destination = match r.u8()? {
            0 => Destination::Events,
            1 => Destination::DeadLetter,
            2 => Destination::Rollups,
            3 => Destination::Audit,
            d => return Err(EdgeError::Wal(format!("unknown destination {d}"))),
        };
        let has_id = r.u8()? == 1;
        let id = u128::from_le_bytes(r.take(16)?.try_into().expect("16 bytes"));
        let key = r.str16()?;
        let header_count = r.u8()? as usize;
        // Each name at most once: more headers than names is a foreign or damaged record.
        if header_count > HEADER_NAMES.len() {
            return Err(EdgeError::Wal(format!("{header_count} headers, more than the {} names there are", HEADER_NAMES.len())));
        }
        let mut header_slots = [("", ""); HEADER_NAMES.len()];
        for slot in &mut header_slots[..header_count] {
            let n = r.u8()? as usize;
            let raw = r.take(n)?;
            let name = HEADER_NAMES
                .iter()
                .find(|h| h.as_bytes() == raw)
                .ok_or_else(|| EdgeError::Wal(format!("unknown header {:?}", String::from_utf8_lossy(raw))))?;
            *slot = (*name, r.str16()?);
        }
        Ok(Self { destination, event_id: has_id.then_some(id), key, header_slots, header_count, payload: &bytes[r.pos..] })
    }

    /// The record's headers, in the order they were written.
    pub fn headers(&self) -> &[(&'static str, &'a str)] {
        &self.header_slots[..self.header_count]
    }
}

fn push_str16(out: &mut Vec<u8>, s: &str) {
    // Keys and header values are ids and short reasons; cut rather than fail.
    let s = cut(s, u16::MAX as usize);
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EdgeError> {
        let s = self.bytes.get(self.pos..self.pos + n).ok_or_else(|| EdgeError::Wal(format!("record ends early at byte {}", self.pos)))?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, EdgeError> {
        Ok(self.take(1)?[0])
    }
    fn str16(&mut self) -> Result<&'a str, EdgeError> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| EdgeError::Wal(format!("string before byte {} is not UTF-8", self.pos)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(
            dead in any::<bool>(),
            id in any::<Option<u128>>(),
            key in "[a-z0-9-]{0,40}",
            values in proptest::collection::vec(".{0,60}", 0..6),
            payload in proptest::collection::vec(any::<u8>(), 0..500),
        ) {
            let headers = values.into_iter().enumerate().map(|(i, v)| (HEADER_NAMES[i], v)).collect();
            let r = WalRecord {
                destination: if dead { Destination::DeadLetter } else { Destination::Events },
                event_id: id, key, headers, payload,
            };
            prop_assert_eq!(WalRecord::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn an_events_largest_record_fits_its_budgeted_overhead() {
        // The largest record an event becomes: a dead letter with every free-text header at its
        // cut length and the longest city id, next to an accepted event's (key: an id of <= 64).
        let (city, value) = ("c".repeat(64), "x".repeat(crate::MAX_HEADER_VALUE));
        let dead = WalRecord {
            destination: Destination::DeadLetter,
            event_id: None,
            key: city.clone(),
            headers: vec![
                ("edubrain.rule", "identity_matches_topic_and_some_more".into()),
                ("edubrain.field", value.clone()),
                ("edubrain.reason", value.clone()),
                ("edubrain.mqtt_topic", value),
                ("edubrain.edge_city", city.clone()),
                ("edubrain.received_ms", i64::MAX.to_string()),
            ],
            payload: vec![],
        };
        let accepted = WalRecord {
            destination: Destination::Events,
            event_id: Some(u128::MAX),
            key: "r".repeat(64),
            headers: vec![
                ("edubrain.received_ms", i64::MAX.to_string()),
                ("edubrain.edge_city", city),
                ("edubrain.clock_flag", "device_clock_unset_or_far_behind".into()),
            ],
            payload: vec![],
        };
        for r in [dead, accepted] {
            assert!(r.encode().len() <= crate::EVENT_RECORD_OVERHEAD, "{:?}: {} bytes", r.destination, r.encode().len());
        }
    }

    #[test]
    fn truncated_or_foreign_records_are_errors_not_panics() {
        let r = WalRecord { destination: Destination::Events, event_id: None, key: "r1".into(), headers: vec![], payload: b"{}".to_vec() };
        let bytes = r.encode();
        for cut in 0..22 {
            assert!(WalRecord::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut v2 = bytes.clone();
        v2[0] = 9;
        assert_eq!(WalRecord::decode(&v2).unwrap_err().to_string(), "WAL: record version 9 is not 1");
        // The header count sits after version, destination, has_id, the id and the key.
        let mut many = bytes.clone();
        many[19 + 2 + "r1".len()] = 9;
        assert_eq!(WalRecord::decode(&many).unwrap_err().to_string(), "WAL: 9 headers, more than the 8 names there are");
    }

    #[test]
    fn parsed_headers_keep_their_order_and_names() {
        let headers = vec![("edubrain.clock_flag", "device_clock_ahead".to_string()), ("edubrain.received_ms", "7".to_string())];
        let r = WalRecord { destination: Destination::Events, event_id: Some(3), key: "r1".into(), headers, payload: b"{}".to_vec() };
        let bytes = r.encode();
        let parsed = WalRecordRef::parse(&bytes).unwrap();
        assert_eq!(parsed.headers(), &[("edubrain.clock_flag", "device_clock_ahead"), ("edubrain.received_ms", "7")]);
        let mut foreign = bytes.clone();
        let at = bytes.windows(8).position(|w| w == b"edubrain").unwrap();
        foreign[at] = b'E';
        assert_eq!(WalRecordRef::parse(&foreign).unwrap_err().to_string(), "WAL: unknown header \"Edubrain.clock_flag\"");
    }
}
