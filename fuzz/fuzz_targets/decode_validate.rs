//! Arbitrary bytes as an MQTT payload: splitting it into its events (JSON Lines), decoding and
//! validation must never panic, every error must name a field and a rule, and whatever is
//! accepted must re-encode to the same event.
#![no_main]

use chrono::{TimeZone, Utc};
use edubrain_schemas::ack::{EdgeAck, peek_event_id};
use edubrain_schemas::message::events_in;
use edubrain_schemas::{Event, ValidationPolicy, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|message: &[u8]| {
    let events = events_in(message);
    assert!(!events.is_empty(), "a message carries at least one event");
    for data in events {
        decode_validate(data);
    }
});

fn decode_validate(data: &[u8]) {
    let _ = peek_event_id(data);
    let _ = EdgeAck::from_json(data);
    match Event::from_json(data) {
        Ok(event) => {
            let now = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
            match validate(&event, now, &ValidationPolicy::default()) {
                Ok(_) => {}
                Err(e) => assert!(!e.field().is_empty() && !e.rule().is_empty(), "{e}"),
            }
            let again = Event::from_json(&event.to_json()).expect("an accepted event re-decodes");
            assert_eq!(again, event, "an accepted event round-trips");
        }
        Err(e) => assert!(!e.field().is_empty() && !e.rule().is_empty(), "{e}"),
    }
}
