//! The edge's application-level acknowledgement to a terminal, published (QoS 1) on the
//! terminal's acks topic (`edubrain/v1/{city}/{school}/{classroom}/{terminal}/acks`).
//!
//! An MQTT PUBACK only says the broker has the message; a broker can still lose it (queue
//! overflow, `kill -9`). This ack says the edge has it in its fsynced write-ahead log, which is
//! the only thing that lets a terminal delete an event from its outbox.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeAck {
    /// Events now durable at the edge (new, or duplicates of events that already were).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub durable: Vec<Uuid>,
    /// Events the edge refused; they are durable in its dead-letter path, so the terminal must
    /// not resend them, but it should count and report them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectedEvent {
    pub event_id: Uuid,
    pub rule: String,
    pub reason: String,
}

impl EdgeAck {
    pub fn is_empty(&self) -> bool {
        self.durable.is_empty() && self.rejected.is_empty()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("acks always serialise")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The `event_id` of a payload that may be otherwise invalid, so a rejection can still be
/// acknowledged to its sender. `None` when not even that can be read.
pub fn peek_event_id(payload: &[u8]) -> Option<Uuid> {
    #[derive(Deserialize)]
    struct Peek {
        event_id: Uuid,
    }
    serde_json::from_slice::<Peek>(payload).ok().map(|p| p.event_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_peeks_ids_of_invalid_events() {
        let id = Uuid::from_u128(42);
        let ack = EdgeAck { durable: vec![id], rejected: vec![RejectedEvent { event_id: id, rule: "range".into(), reason: "x".into() }] };
        assert_eq!(EdgeAck::from_json(&ack.to_json()).unwrap(), ack);
        assert_eq!(EdgeAck::from_json(br#"{"durable":[]}"#).unwrap(), EdgeAck::default());
        let bad = format!(r#"{{"event_id":"{id}","type":"nope","rating":99}}"#);
        assert_eq!(peek_event_id(bad.as_bytes()), Some(id));
        assert_eq!(peek_event_id(b"\xff not json"), None);
    }
}
