//! The classroom device's durable outbox. An event is written here (fsynced) before it is
//! first published, and deleted only when the edge's application-level ack
//! ([`edubrain_schemas::ack::EdgeAck`]) says the edge has it in its WAL. An MQTT PUBACK is not
//! enough: the broker can still lose a message it acknowledged.
//!
//! Policy when full (`max_bytes` on disk): new events are refused with [`AgentError::OutboxFull`]
//! and the oldest are kept, because the oldest were already promised to the school; callers
//! wait (the simulator) or pass the refusal on (the local ingest API answers 507).
//!
//! Resends: an event not acknowledged within `resend_after` of its last send is sent again, in
//! creation order; the same `event_id` lets the edge drop the duplicate and ack it again. An
//! event the edge deferred (its rate limit) is resent once its `retry_after` has passed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edubrain_schemas::ack::{EdgeAck, peek_event_id};
use edubrain_wal::{Wal, WalError, WalOptions};
use uuid::Uuid;

use crate::AgentError;

/// Outbox sizes and timing.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Disk the outbox may use; about 400 bytes per event, so the default holds ~160k events
    /// (months of one classroom's events at the simulated rate).
    pub max_bytes: u64,
    pub segment_bytes: u64,
    /// Resend an unacknowledged event after this long.
    pub resend_after_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self { max_bytes: 64 << 20, segment_bytes: 1 << 20, resend_after_ms: 15_000 }
    }
}

impl OutboxConfig {
    fn options(&self) -> WalOptions {
        // The broker refuses messages over 64 KiB (deploy/mosquitto), so no event is larger.
        let max_record_bytes = (64 * 1024).min(self.segment_bytes.saturating_sub(16)) as u32;
        WalOptions { segment_bytes: self.segment_bytes, max_bytes: self.max_bytes, max_record_bytes }
    }
}

/// An event in the outbox: its id and its encoded bytes (shared with the MQTT client).
pub type OutboxEvent = (Uuid, Arc<Vec<u8>>);

/// What [`Outbox::push`] did with a batch.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Events written now (to be sent).
    pub written: Vec<OutboxEvent>,
    /// How many of the batch, from its start, are in the outbox: written now or already
    /// pending. The rest were refused because the outbox is full.
    pub taken: usize,
}

#[derive(Debug)]
struct Pending {
    event_id: Uuid,
    payload: Arc<Vec<u8>>,
    last_sent: Option<Instant>,
    /// Set by a deferral: resend at this instant, not `resend_after` after the last send.
    retry_at: Option<Instant>,
}

/// What an ack did to the outbox.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AckOutcome {
    pub durable: usize,
    pub rejected: usize,
    /// Still pending: the edge asked for a resend later.
    pub deferred: usize,
}

#[derive(Debug)]
pub struct Outbox {
    wal: Wal,
    pending: BTreeMap<u64, Pending>,
    by_id: HashMap<Uuid, u64>,
    resend_after: Duration,
}

fn wal_err(dir: &Path) -> impl FnOnce(WalError) -> AgentError + '_ {
    move |e| match e {
        WalError::Full { disk_bytes, max_bytes, .. } => AgentError::OutboxFull { dir: dir.display().to_string(), disk_bytes, max_bytes },
        e => AgentError::Outbox(e.to_string()),
    }
}

impl Outbox {
    /// Opens the outbox in `dir`; events left from a previous run are pending again (they are
    /// resent first, in their original order).
    pub fn open(dir: &Path, config: &OutboxConfig) -> Result<Outbox, AgentError> {
        let (wal, recovered) = Wal::open(dir, config.options()).map_err(wal_err(dir))?;
        let mut outbox =
            Outbox { wal, pending: BTreeMap::new(), by_id: HashMap::new(), resend_after: Duration::from_millis(config.resend_after_ms) };
        for (seq, payload) in recovered.records {
            let Some(event_id) = peek_event_id(&payload) else {
                // Only validated events are ever written; keep it on disk and say so.
                tracing::error!(seq, dir = %dir.display(), "outbox record without an event_id; left in place");
                continue;
            };
            outbox.by_id.insert(event_id, seq);
            outbox.pending.insert(seq, Pending { event_id, payload: Arc::new(payload), last_sent: None, retry_at: None });
        }
        Ok(outbox)
    }

    /// Writes `events` (validated, encoded events with their ids) durably, with one fsync for
    /// the batch. The first [`Pushed::taken`] of them are in the outbox, written now or already
    /// pending; fewer than given means the outbox is full: the rest were refused (see the
    /// module's policy) and [`Outbox::is_full_for`] says when there is room again.
    pub fn push(&mut self, events: Vec<(Uuid, Vec<u8>)>) -> Result<Pushed, AgentError> {
        let dir = self.wal.dir().to_path_buf();
        let mut pushed = Pushed { written: Vec::with_capacity(events.len()), taken: 0 };
        for (id, payload) in events {
            if self.by_id.contains_key(&id) {
                // Already pending: handed in again, e.g. retried by software whose answer was
                // lost to a crash. It is held (and will be sent); not written twice.
                pushed.taken += 1;
                continue;
            }
            match self.wal.append(&payload) {
                Ok(seq) => {
                    let payload = Arc::new(payload);
                    self.by_id.insert(id, seq);
                    self.pending.insert(seq, Pending { event_id: id, payload: payload.clone(), last_sent: None, retry_at: None });
                    pushed.written.push((id, payload));
                    pushed.taken += 1;
                }
                Err(WalError::Full { .. }) => break,
                Err(e) => return Err(wal_err(&dir)(e)),
            }
        }
        self.wal.commit().map_err(wal_err(&dir))?;
        Ok(pushed)
    }

    /// Whether an event of `len` bytes would be refused now.
    pub fn is_full_for(&self, len: usize) -> bool {
        !self.wal.has_room_for(len)
    }

    /// The error to report when an event is refused because the outbox is full.
    pub fn full_error(&self) -> AgentError {
        AgentError::OutboxFull {
            dir: self.wal.dir().display().to_string(),
            disk_bytes: self.wal.disk_bytes(),
            max_bytes: self.wal.max_bytes(),
        }
    }

    /// Marks `ids` as sent now.
    pub fn mark_sent(&mut self, ids: impl IntoIterator<Item = Uuid>, now: Instant) {
        for id in ids {
            if let Some(p) = self.by_id.get(&id).and_then(|s| self.pending.get_mut(s)) {
                p.last_sent = Some(now);
                p.retry_at = None;
            }
        }
    }

    /// Applies an edge ack received at `now`: acknowledged and rejected events leave the
    /// outbox; deferred ones stay and are due again after the ack's `retry_after_ms`.
    pub fn ack(&mut self, ack: &EdgeAck, now: Instant) -> Result<AckOutcome, AgentError> {
        let mut out = AckOutcome::default();
        for id in &ack.durable {
            if self.remove(id) {
                out.durable += 1;
            }
        }
        for r in &ack.rejected {
            if self.remove(&r.event_id) {
                tracing::warn!(event_id = %r.event_id, rule = %r.rule, reason = %r.reason, "the edge rejected an event (kept in its dead-letter topic)");
                out.rejected += 1;
            }
        }
        let retry_at = now + Duration::from_millis(ack.retry_after_ms);
        for id in &ack.deferred {
            if let Some(p) = self.by_id.get(id).and_then(|s| self.pending.get_mut(s)) {
                p.retry_at = Some(retry_at);
                out.deferred += 1;
            }
        }
        if out.durable + out.rejected > 0 {
            let dir = self.wal.dir().to_path_buf();
            self.wal.truncate().map_err(wal_err(&dir))?;
        }
        Ok(out)
    }

    fn remove(&mut self, id: &Uuid) -> bool {
        let Some(seq) = self.by_id.remove(id) else { return false };
        self.pending.remove(&seq);
        self.wal.confirm(seq);
        true
    }

    /// Events never sent, or sent more than `resend_after` ago, oldest first (at most `max`);
    /// they are marked as sent at `now`.
    /// Up to `max` events due at `now`, oldest first. They stay due until
    /// [`Outbox::mark_sent`] says they went out.
    pub fn due(&self, now: Instant, max: usize) -> Vec<OutboxEvent> {
        self.pending
            .values()
            .filter(|p| match p.retry_at {
                Some(at) => now >= at,
                None => p.last_sent.is_none_or(|t| now.duration_since(t) >= self.resend_after),
            })
            .take(max)
            .map(|p| (p.event_id, p.payload.clone()))
            .collect()
    }

    /// Keeps those of `items` that are still pending and were never sent: a resend tick may
    /// have sent an event between its write and the hand-over to the sender.
    pub fn unsent(&self, mut items: Vec<OutboxEvent>) -> Vec<OutboxEvent> {
        items.retain(|(id, _)| self.by_id.get(id).and_then(|s| self.pending.get(s)).is_some_and(|p| p.last_sent.is_none()));
        items
    }

    /// Forgets when events were sent, so all are due (after a reconnect: a new session has
    /// none of the old in-flight messages).
    pub fn reset_sent(&mut self) {
        self.pending.values_mut().for_each(|p| p.last_sent = None);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn disk_bytes(&self) -> u64 {
        self.wal.disk_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edubrain_schemas::ack::RejectedEvent;

    fn ev(i: u128) -> (Uuid, Vec<u8>) {
        let id = Uuid::from_u128(i);
        (id, format!(r#"{{"event_id":"{id}","type":"bandwidth_sampled"}}"#).into_bytes())
    }

    fn config() -> OutboxConfig {
        OutboxConfig { max_bytes: 3 * 4096, segment_bytes: 4096, resend_after_ms: 1000 }
    }

    #[test]
    fn events_stay_until_the_edge_acks_them_even_across_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), &config()).unwrap();
        o.push((1..=5).map(ev).collect()).unwrap();
        let now = Instant::now();
        o.ack(&EdgeAck { durable: vec![Uuid::from_u128(2)], ..EdgeAck::default() }, now).unwrap();
        let outcome = o
            .ack(
                &EdgeAck {
                    durable: vec![Uuid::from_u128(2), Uuid::from_u128(99)],
                    rejected: vec![RejectedEvent { event_id: Uuid::from_u128(4), rule: "range".into(), reason: "r".into() }],
                    ..EdgeAck::default()
                },
                now,
            )
            .unwrap();
        assert_eq!(outcome, AckOutcome { durable: 0, rejected: 1, deferred: 0 }, "repeat and unknown acks are harmless");
        std::mem::forget(o); // kill -9
        let o = Outbox::open(dir.path(), &config()).unwrap();
        let ids: Vec<u128> = o.due(Instant::now(), 100).iter().map(|(id, _)| id.as_u128()).collect();
        // 1, 3 and 5 were never acked, so they are back. 2 and 4 were, but only the acked
        // prefix is persisted (1 was still pending), so they come back too: a resend the edge
        // drops by event_id, never a loss.
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn resends_wait_for_the_timeout_and_go_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), &config()).unwrap();
        let t0 = Instant::now();
        o.push((1..=3).map(ev).collect()).unwrap();
        let ids = |due: Vec<OutboxEvent>| due.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        let first = ids(o.due(t0, 2));
        assert_eq!(first.len(), 2);
        assert_eq!(ids(o.due(t0, 10)).len(), 3, "due until marked sent");
        o.mark_sent(first, t0);
        let rest = ids(o.due(t0, 10));
        assert_eq!(rest, vec![Uuid::from_u128(3)], "only the one not yet sent");
        o.mark_sent(rest, t0);
        assert!(o.due(t0 + Duration::from_millis(999), 10).is_empty());
        let again: Vec<u128> = o.due(t0 + Duration::from_secs(1), 10).iter().map(|(i, _)| i.as_u128()).collect();
        assert_eq!(again, vec![1, 2, 3]);
    }

    #[test]
    fn deferred_events_stay_and_come_back_after_the_edges_delay() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), &config()).unwrap();
        let t0 = Instant::now();
        o.push((1..=3).map(ev).collect()).unwrap();
        let sent: Vec<Uuid> = o.due(t0, 10).into_iter().map(|(id, _)| id).collect();
        assert_eq!(sent.len(), 3);
        o.mark_sent(sent, t0);
        let deferred = EdgeAck {
            durable: vec![Uuid::from_u128(1)],
            deferred: vec![Uuid::from_u128(2), Uuid::from_u128(3)],
            retry_after_ms: 300,
            ..EdgeAck::default()
        };
        assert_eq!(o.ack(&deferred, t0).unwrap(), AckOutcome { durable: 1, rejected: 0, deferred: 2 });
        assert_eq!(o.len(), 2, "a deferral is not an acknowledgement");
        assert!(o.due(t0 + Duration::from_millis(299), 10).is_empty());
        let again: Vec<u128> = o.due(t0 + Duration::from_millis(300), 10).iter().map(|(i, _)| i.as_u128()).collect();
        assert_eq!(again, vec![2, 3], "sooner than the 1 s resend timeout, oldest first");
        o.mark_sent([2, 3].map(Uuid::from_u128), t0 + Duration::from_millis(300));
        assert!(o.due(t0 + Duration::from_millis(301), 10).is_empty(), "then the normal timeout applies again");
    }

    #[test]
    fn events_already_sent_by_a_resend_are_not_handed_over_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), &config()).unwrap();
        let written = o.push((1..=3).map(ev).collect()).unwrap().written;
        o.mark_sent([Uuid::from_u128(2)], Instant::now());
        let ids: Vec<u128> = o.unsent(written).iter().map(|(id, _)| id.as_u128()).collect();
        assert_eq!(ids, vec![1, 3]);
    }

    #[test]
    fn a_full_outbox_refuses_new_events_and_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), &config()).unwrap();
        let mut i = 0;
        loop {
            i += 1;
            if o.push(vec![ev(i)]).unwrap().taken == 0 {
                break;
            }
        }
        assert!(o.is_full_for(60));
        let err = o.full_error();
        assert!(err.to_string().contains("outbox"), "{err}");
        assert_eq!(o.len() as u128, i - 1, "everything before the refusal is kept");
        let acked: Vec<Uuid> = (1..i / 2).map(Uuid::from_u128).collect();
        o.ack(&EdgeAck { durable: acked, ..EdgeAck::default() }, Instant::now()).unwrap();
        assert_eq!(o.push(vec![ev(i)]).unwrap().written.len(), 1, "room again after acks freed a segment");
    }

    /// The agent killed after writing a batch and before answering: the software sends the
    /// same batch again. Its events are held, not refused as if the outbox were full, and not
    /// written twice.
    #[test]
    fn a_batch_handed_in_again_after_a_crash_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let batch = || (1..=3).map(ev).collect::<Vec<_>>();
        let first = Outbox::open(dir.path(), &config()).unwrap().push(batch()).unwrap();
        assert_eq!((first.written.len(), first.taken), (3, 3));
        let mut reopened = Outbox::open(dir.path(), &config()).unwrap();
        let mut again = batch();
        again.push(ev(4));
        let second = reopened.push(again).unwrap();
        assert_eq!(second.taken, 4, "all four are held");
        assert_eq!(second.written.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![Uuid::from_u128(4)], "only the new one written");
        assert_eq!(reopened.len(), 4);
    }
}
