//! How many of the broker's refusals become audit records one by one.
//!
//! Every refusal the broker logs is counted (see [`crate::broker_log`]), but one client that
//! keeps trying (a terminal looping on another classroom's topic, a script guessing passwords)
//! would otherwise turn each refused MQTT packet into a Kafka record, a WAL write and a log
//! line at the edge, crowding out its city's events. So each (reason, client) gets
//! `per_client` audit records per window; the refusals past that are counted and, when the
//! window ends, written as one summary record with their number, the first and last time and
//! the last topic. Nothing is dropped without a trace: every refusal is either its own record
//! or counted in a summary.
//!
//! Memory is bounded: at most `max_clients` (reason, client) windows are open; refusals of
//! further clients share one window per reason, whose summary says it stands for other clients.
//!
//! Pure: no I/O; the caller passes the time (milliseconds since the epoch).

use std::collections::HashMap;

use serde::Serialize;

/// The limits, from [`crate::config::RefusalAuditConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Audit records per (reason, client) per window, one per refusal.
    pub per_client: u32,
    pub window_ms: i64,
    /// Open windows beyond which further clients share one per reason.
    pub max_clients: usize,
}

/// Whose refusals a window counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Who {
    Client(String),
    /// The broker did not know the client yet (a refused login, a failed handshake).
    Unknown,
    /// Clients beyond `max_clients`.
    Others,
}

/// The verdict on one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it as its own audit record.
    Record,
    /// Counted; it is in the summary at the end of its window.
    Summarised,
}

#[derive(Debug)]
struct Window {
    opened_ms: i64,
    recorded: u32,
    summarised: u64,
    first_ms: i64,
    last_ms: i64,
    last_topic: Option<String>,
}

/// The audit record of a window's refusals past the per-client limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub reason: &'static str,
    /// The client id; `None` for refusals of an unknown client or of [`Summary::other_clients`].
    pub client: Option<String>,
    /// True when this summary counts the refusals of clients past `max_clients`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub other_clients: bool,
    /// Refusals in it (not audited one by one).
    pub summarised: u64,
    /// When the edge received the first and the last of them.
    pub first_received_ms: i64,
    pub last_received_ms: i64,
    /// The topic of the last of them, for ACL refusals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_topic: Option<String>,
}

/// A summary as the audit record the edge writes to Kafka, beside the one-by-one records
/// ([`crate::broker_log::BrokerAudit`]): the same `source`, `reason`, `client` and `edge_city`,
/// and `summarised` in place of the log line.
#[derive(Debug, Serialize)]
pub struct SummaryRecord<'a> {
    pub source: &'static str,
    #[serde(flatten)]
    pub summary: &'a Summary,
    pub edge_city: &'a str,
    pub received_ms: i64,
}

impl<'a> SummaryRecord<'a> {
    pub fn new(summary: &'a Summary, edge_city: &'a str, received_ms: i64) -> Self {
        Self { source: "mqtt_broker", summary, edge_city, received_ms }
    }
}

/// Per-(reason, client) windows of refusals.
#[derive(Debug)]
pub struct RefusalAudit {
    limits: Limits,
    windows: HashMap<(&'static str, Who), Window>,
    /// Summaries of windows that ended when the same client was refused again.
    ended: Vec<Summary>,
}

impl RefusalAudit {
    pub fn new(limits: Limits) -> Self {
        Self { limits, windows: HashMap::new(), ended: Vec::new() }
    }

    /// Takes one refusal for `reason` of `client` (with its `topic`, if any) at `now_ms`.
    pub fn admit(&mut self, reason: &'static str, client: Option<&str>, topic: Option<&str>, now_ms: i64) -> Verdict {
        let own = (reason, client.map_or(Who::Unknown, |c| Who::Client(c.to_string())));
        let key = if self.windows.len() < self.limits.max_clients || self.windows.contains_key(&own) { own } else { (reason, Who::Others) };
        if let Some(w) = self.windows.get(&key)
            && now_ms >= w.opened_ms.saturating_add(self.limits.window_ms)
        {
            let w = self.windows.remove(&key).expect("present");
            self.ended.extend(summary(&key, w));
        }
        let w = self.windows.entry(key).or_insert_with(|| Window {
            opened_ms: now_ms,
            recorded: 0,
            summarised: 0,
            first_ms: now_ms,
            last_ms: now_ms,
            last_topic: None,
        });
        if w.recorded < self.limits.per_client {
            w.recorded += 1;
            return Verdict::Record;
        }
        if w.summarised == 0 {
            w.first_ms = now_ms;
        }
        w.summarised += 1;
        w.last_ms = now_ms;
        w.last_topic = topic.map(str::to_string);
        Verdict::Summarised
    }

    /// Ends the windows due at `now_ms`: the summaries of those with refusals past the limit,
    /// oldest first.
    pub fn close(&mut self, now_ms: i64) -> Vec<Summary> {
        let window_ms = self.limits.window_ms;
        let due: Vec<_> =
            self.windows.iter().filter(|(_, w)| now_ms >= w.opened_ms.saturating_add(window_ms)).map(|(k, _)| k.clone()).collect();
        let mut out = std::mem::take(&mut self.ended);
        for key in due {
            let w = self.windows.remove(&key).expect("present");
            out.extend(summary(&key, w));
        }
        out.sort_by(|a, b| (a.first_received_ms, a.reason, &a.client).cmp(&(b.first_received_ms, b.reason, &b.client)));
        out
    }

    /// Open windows (bounded by `max_clients` plus one per reason).
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }
}

fn summary((reason, who): &(&'static str, Who), w: Window) -> Option<Summary> {
    (w.summarised > 0).then(|| Summary {
        reason,
        client: match who {
            Who::Client(c) => Some(c.clone()),
            Who::Unknown | Who::Others => None,
        },
        other_clients: *who == Who::Others,
        summarised: w.summarised,
        first_received_ms: w.first_ms,
        last_received_ms: w.last_ms,
        last_topic: w.last_topic,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const PUBLISH: &str = "acl_denied_publish";
    const LOGIN: &str = "not_authorised";

    fn audit(per_client: u32, window_ms: i64, max_clients: usize) -> RefusalAudit {
        RefusalAudit::new(Limits { per_client, window_ms, max_clients })
    }

    #[test]
    fn a_client_past_its_limit_is_summarised_at_the_end_of_the_window() {
        let mut a = audit(3, 1_000, 16);
        let verdicts: Vec<_> = (0..10).map(|i| a.admit(PUBLISH, Some("c01/s1/r1/t1"), Some(&format!("t/{i}")), 100 + i)).collect();
        assert_eq!(verdicts[..3], [Verdict::Record; 3]);
        assert_eq!(verdicts[3..], [Verdict::Summarised; 7]);
        assert!(a.close(1_099).is_empty(), "the window is still open");
        let s = a.close(1_100);
        assert_eq!(
            s,
            vec![Summary {
                reason: PUBLISH,
                client: Some("c01/s1/r1/t1".into()),
                other_clients: false,
                summarised: 7,
                first_received_ms: 103,
                last_received_ms: 109,
                last_topic: Some("t/9".into()),
            }]
        );
        assert_eq!(a.open_windows(), 0);
        // A new window: records again.
        assert_eq!(a.admit(PUBLISH, Some("c01/s1/r1/t1"), None, 1_200), Verdict::Record);
    }

    #[test]
    fn one_noisy_client_does_not_silence_another_or_another_reason() {
        let mut a = audit(1, 60_000, 16);
        assert_eq!(a.admit(PUBLISH, Some("a"), Some("x"), 0), Verdict::Record);
        assert_eq!(a.admit(PUBLISH, Some("a"), Some("x"), 1), Verdict::Summarised);
        assert_eq!(a.admit(PUBLISH, Some("b"), Some("x"), 2), Verdict::Record);
        assert_eq!(a.admit("acl_denied_subscribe", Some("a"), Some("#"), 3), Verdict::Record);
        assert_eq!(a.admit(LOGIN, None, None, 4), Verdict::Record);
        assert_eq!(a.admit(LOGIN, None, None, 5), Verdict::Summarised);
    }

    #[test]
    fn a_window_that_ended_before_the_next_refusal_keeps_its_summary() {
        let mut a = audit(1, 100, 16);
        a.admit(LOGIN, None, None, 0);
        a.admit(LOGIN, None, None, 50);
        // No close() in between: the refusal at 150 opens a new window and records.
        assert_eq!(a.admit(LOGIN, None, None, 150), Verdict::Record);
        let s = a.close(160);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].summarised, s[0].client.as_deref(), s[0].first_received_ms), (1, None, 50));
    }

    #[test]
    fn clients_past_the_bound_share_a_window_per_reason() {
        let mut a = audit(1, 1_000, 2);
        assert_eq!(a.admit(PUBLISH, Some("a"), None, 0), Verdict::Record);
        assert_eq!(a.admit(PUBLISH, Some("b"), None, 0), Verdict::Record);
        assert_eq!(a.admit(PUBLISH, Some("c"), None, 0), Verdict::Record, "the first of the others' window");
        assert_eq!(a.admit(PUBLISH, Some("d"), Some("d/x"), 1), Verdict::Summarised);
        assert_eq!(a.admit(PUBLISH, Some("a"), None, 2), Verdict::Summarised, "a keeps its own window");
        assert_eq!(a.open_windows(), 3);
        let s = a.close(1_000);
        let others = s.iter().find(|s| s.other_clients).expect("a summary for the other clients");
        assert_eq!((others.client.as_deref(), others.summarised, others.last_topic.as_deref()), (None, 1, Some("d/x")));
        let json = serde_json::to_value(SummaryRecord::new(others, "c01", 1_000)).unwrap();
        assert_eq!(json["other_clients"], true);
        assert_eq!(
            (json["source"].as_str(), json["reason"].as_str(), json["summarised"].as_u64()),
            (Some("mqtt_broker"), Some(PUBLISH), Some(1))
        );
        assert_eq!(json["client"], serde_json::Value::Null);
        let own = serde_json::to_value(s.iter().find(|s| !s.other_clients).unwrap()).unwrap();
        assert!(own.get("other_clients").is_none(), "{own}");
    }

    proptest! {
        // Whatever the clients, reasons, times and bounds: every refusal is a record or counted
        // in exactly one summary; no window records more than the limit; windows stay bounded.
        #[test]
        fn every_refusal_is_recorded_or_summarised_once(
            per_client in 0u32..4,
            window_ms in 1i64..50,
            max_clients in 1usize..16,
            steps in prop::collection::vec((0usize..6, 0usize..2, 0i64..20, any::<bool>()), 0..200),
        ) {
            let mut a = audit(per_client, window_ms, max_clients);
            let reasons = [PUBLISH, LOGIN];
            let mut now = 0;
            let (mut recorded, mut summarised, mut total) = (0u64, 0u64, 0u64);
            // Records per (reason, client, window start): never above the limit.
            let mut per_window: BTreeMap<(usize, usize, i64), u32> = BTreeMap::new();
            let mut opened: BTreeMap<(usize, usize), i64> = BTreeMap::new();
            for (client, reason, dt, close) in steps {
                now += dt;
                total += 1;
                let name = format!("client-{client}");
                if a.admit(reasons[reason], (client > 0).then_some(name.as_str()), Some("t"), now) == Verdict::Record {
                    recorded += 1;
                    // With a window for every (client, reason) pair the bound never merges clients.
                    if max_clients >= 12 {
                        let start = *opened.entry((client, reason)).and_modify(|s| if now >= *s + window_ms { *s = now }).or_insert(now);
                        let n = per_window.entry((client, reason, start)).or_default();
                        *n += 1;
                        prop_assert!(*n <= per_client);
                    }
                }
                prop_assert!(a.open_windows() <= max_clients + reasons.len());
                if close {
                    summarised += a.close(now).iter().map(|s| s.summarised).sum::<u64>();
                }
            }
            summarised += a.close(i64::MAX).iter().map(|s| s.summarised).sum::<u64>();
            prop_assert_eq!(recorded + summarised, total);
            prop_assert_eq!(a.open_windows(), 0);
        }
    }
}
