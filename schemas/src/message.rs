//! What one MQTT message on a terminal's events topic carries: one event, or several as JSON
//! Lines (one compact event object per line, `\n` between them).
//!
//! Why several: a terminal coming back from hours offline, or a busy recording room, has many
//! events queued. Sent one per MQTT message, the broker's per-message work (one PUBLISH in, a
//! PUBACK, one PUBLISH out and its PUBACK, each a syscall) is what limits a whole city hub.
//! Packed into one message they cost it once. Every line is still its own event: validated,
//! deduplicated, dead-lettered and acknowledged on its own, and its bytes are exactly the bytes
//! the same event would have as a message of its own, so a resend packed differently is still
//! recognised as the same event.
//!
//! A message is JSON Lines only when it has a line break and every line is an object on one line
//! (starts with `{` and ends with `}`). Anything else is one JSON document, so a pretty-printed
//! event is still one event, and a malformed one gets one error, not one per line.

/// The events of one message, in the order they were sent (a message without a line break is
/// one event, whatever its bytes).
pub fn events_in(payload: &[u8]) -> Vec<&[u8]> {
    let body = payload.trim_ascii();
    if memchr::memchr(b'\n', body).is_none() {
        return vec![payload];
    }
    // memchr finds the line breaks a word at a time; a byte-by-byte split was ~3% of the
    // edge's CPU on packed messages.
    let mut lines = Vec::new();
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len())) {
        let line = body[start..end].trim_ascii();
        if !line.is_empty() {
            lines.push(line);
        }
        start = end + 1;
    }
    if lines.iter().all(|l| l.first() == Some(&b'{') && l.last() == Some(&b'}')) { lines } else { vec![payload] }
}

/// Packs events' JSON (each compact, as [`crate::Event::to_json`] writes it) into messages of
/// at most `max_events` events and `max_bytes` bytes, in order. An event larger than
/// `max_bytes` on its own travels alone (the broker then refuses it as it would have anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    pub max_events: usize,
    pub max_bytes: usize,
}

impl Packing {
    /// One event per message: what terminals sent before packing existed.
    pub const SINGLE: Packing = Packing { max_events: 1, max_bytes: usize::MAX };

    /// How many of `sizes` (each event's JSON length, in order) go into the next message: at
    /// least one, while the message stays within both limits.
    pub fn take(&self, sizes: impl IntoIterator<Item = usize>) -> usize {
        let mut bytes = 0usize;
        let mut n = 0usize;
        for size in sizes {
            let with = if n == 0 { size } else { bytes + 1 + size };
            if n > 0 && (n >= self.max_events || with > self.max_bytes) {
                break;
            }
            bytes = with;
            n += 1;
        }
        n
    }

    /// Joins `events` into one message: the event itself when it is one, JSON Lines otherwise.
    pub fn join<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            if i > 0 {
                out.push(b'\n');
            }
            out.extend_from_slice(e);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_message_without_a_line_break_is_one_event_as_sent() {
        assert_eq!(events_in(br#"{"a":1}"#), vec![&br#"{"a":1}"#[..]]);
        assert_eq!(events_in(b"not json"), vec![&b"not json"[..]]);
        assert_eq!(events_in(b""), vec![&b""[..]]);
        // A trailing line break is not a second event, and the bytes are kept as sent.
        assert_eq!(events_in(b"{\"a\":1}\n"), vec![&b"{\"a\":1}\n"[..]]);
    }

    #[test]
    fn json_lines_are_split_into_their_events() {
        let msg = b"{\"a\":1}\n{\"b\":2}\r\n\n  {\"c\":3}\n";
        assert_eq!(events_in(msg), vec![&b"{\"a\":1}"[..], b"{\"b\":2}", b"{\"c\":3}"]);
    }

    #[test]
    fn a_pretty_printed_or_broken_document_stays_one_event() {
        let pretty = b"{\n  \"a\": 1,\n  \"b\": [2]\n}";
        assert_eq!(events_in(pretty), vec![&pretty[..]]);
        let broken = b"{\"a\":1}\n\"b\":2}";
        assert_eq!(events_in(broken), vec![&broken[..]]);
    }

    #[test]
    fn packing_respects_both_limits_and_always_takes_one() {
        let p = Packing { max_events: 3, max_bytes: 20 };
        assert_eq!(p.take([5, 5, 5, 5]), 3);
        assert_eq!(p.take([9, 9, 9]), 2, "9 + 1 + 9 = 19 fits, a third does not");
        assert_eq!(p.take([50, 1]), 1, "an oversized event travels alone");
        assert_eq!(p.take([]), 0);
        assert_eq!(Packing::SINGLE.take([1, 1]), 1);
    }

    proptest! {
        /// Whatever the events, packing then splitting gives back each event's bytes in order.
        #[test]
        fn packed_events_split_back_byte_for_byte(events in proptest::collection::vec("\\{[a-z0-9\":,]{0,30}\\}", 1..40), max_events in 1usize..10) {
            let packing = Packing { max_events, max_bytes: 200 };
            let mut rest: &[String] = &events;
            let mut back: Vec<Vec<u8>> = Vec::new();
            while !rest.is_empty() {
                let n = packing.take(rest.iter().map(String::len));
                prop_assert!(n >= 1 && n <= max_events);
                let msg = Packing::join(rest[..n].iter().map(|e| e.as_bytes()));
                back.extend(events_in(&msg).into_iter().map(<[u8]>::to_vec));
                rest = &rest[n..];
            }
            prop_assert_eq!(back, events.iter().map(|e| e.as_bytes().to_vec()).collect::<Vec<_>>());
        }
    }
}
