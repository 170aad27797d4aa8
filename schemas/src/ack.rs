//! The edge's application-level acknowledgement to a terminal, published (QoS 1) on the
//! terminal's acks topic (`edubrain/v1/{city}/{school}/{classroom}/{terminal}/acks`).
//!
//! An MQTT PUBACK only says the broker has the message; a broker can still lose it (queue
//! overflow, `kill -9`). This ack says the edge has it in its fsynced write-ahead log, which is
//! the only thing that lets a terminal delete an event from its outbox.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Event ids per ack message: 39 bytes each in JSON, so 1,000 stay well under the 64 KiB
/// message limit of `deploy/mosquitto/edubrain.conf` and the terminal's packet limit.
pub const MAX_IDS_PER_ACK: usize = 1000;

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
    /// Events the edge did not take because their terminal is over its rate limit. They are not
    /// durable anywhere but in the terminal's outbox: keep them and resend after
    /// `retry_after_ms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retry_after_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
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
        self.durable.is_empty() && self.rejected.is_empty() && self.deferred.is_empty()
    }

    /// Splits this ack into acks of at most `max_ids` event ids each, so every message stays
    /// under the broker's message size limit (Mosquitto drops larger ones silently; a dropped
    /// ack costs the terminal a 15 s wait and a resend of every event in it).
    pub fn chunks(self, max_ids: usize) -> Vec<EdgeAck> {
        let max_ids = max_ids.max(1);
        if self.durable.len() + self.rejected.len() + self.deferred.len() <= max_ids {
            return vec![self];
        }
        let retry_after_ms = self.retry_after_ms;
        let mut out = Vec::new();
        for ids in self.durable.chunks(max_ids) {
            out.push(EdgeAck { durable: ids.to_vec(), ..EdgeAck::default() });
        }
        // Rejections carry their reasons (up to a few hundred bytes each): smaller chunks.
        for r in self.rejected.chunks((max_ids / 8).max(1)) {
            out.push(EdgeAck { rejected: r.to_vec(), ..EdgeAck::default() });
        }
        for ids in self.deferred.chunks(max_ids) {
            out.push(EdgeAck { deferred: ids.to_vec(), retry_after_ms, ..EdgeAck::default() });
        }
        out
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
        let ack = EdgeAck {
            durable: vec![id],
            rejected: vec![RejectedEvent { event_id: id, rule: "range".into(), reason: "x".into() }],
            deferred: vec![Uuid::from_u128(43)],
            retry_after_ms: 1500,
        };
        assert_eq!(EdgeAck::from_json(&ack.to_json()).unwrap(), ack);
        assert_eq!(EdgeAck::from_json(br#"{"durable":[]}"#).unwrap(), EdgeAck::default());
        let bad = format!(r#"{{"event_id":"{id}","type":"nope","rating":99}}"#);
        assert_eq!(peek_event_id(bad.as_bytes()), Some(id));
        assert_eq!(peek_event_id(b"\xff not json"), None);
    }

    #[test]
    fn large_acks_split_into_messages_under_the_broker_limit() {
        let ids = |n: u128| (0..n).map(Uuid::from_u128).collect::<Vec<_>>();
        let ack = EdgeAck { durable: ids(2048), deferred: ids(700), retry_after_ms: 500, ..EdgeAck::default() };
        assert!(ack.to_json().len() > 65_536, "one message would be over Mosquitto's limit");
        let parts = ack.clone().chunks(MAX_IDS_PER_ACK);
        assert!(parts.iter().all(|p| p.to_json().len() < 65_536));
        assert_eq!(parts.iter().map(|p| p.durable.len()).sum::<usize>(), 2048);
        assert_eq!(parts.iter().map(|p| p.deferred.len()).sum::<usize>(), 700);
        assert!(parts.iter().filter(|p| !p.deferred.is_empty()).all(|p| p.retry_after_ms == 500));
        let small = EdgeAck { durable: ids(3), ..EdgeAck::default() };
        assert_eq!(small.clone().chunks(MAX_IDS_PER_ACK), vec![small]);
    }
}
