//! The local ingest interface: how real classroom software (a lesson recorder, a booking
//! kiosk, an assessment app) hands events to the terminal agent, beside the simulator.
//!
//! `POST /v1/events` takes one JSON event or an array of them, in the wire shape of
//! `schemas/` minus what the agent knows better than the app: the identity fields (`city`,
//! `school`, `classroom`, `terminal`) come from the agent's own identity (if the app sends them
//! they must match), `event_id` is generated when absent (send one to make retries idempotent),
//! `schema_version` defaults to the current one. A student is named by `payload.student_id`
//! (the school's own id); the agent replaces it with the per-alliance HMAC pseudonym before the
//! event is written anywhere, so raw ids never reach disk or the network.
//!
//! Each event is validated against the same contract as the edge applies, and is either written
//! to the durable outbox (fsynced) or rejected with the field and rule at fault. A rejected
//! event is counted and kept, pseudonymised, in `rejected.jsonl` under the state directory;
//! good events in the same request still go through. Status: 202 all accepted, 207 some
//! rejected, 422 none accepted, 507 the outbox is full (retry later), 400 not JSON.
//!
//! [`prepare`] is the pure core (no I/O, time passed in); [`serve`] is the HTTP server.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use edubrain_schemas::event::EventType;
use edubrain_schemas::pseudonym::pseudonymise;
use edubrain_schemas::topics::TerminalTopic;
use edubrain_schemas::{Event, SCHEMA_VERSION, SchemaError, ValidationPolicy, validate};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::outbox::{Outbox, OutboxEvent};
use crate::publisher::push_to_outbox;

/// One event from classroom software, ready for the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub event_id: Uuid,
    /// The canonical wire bytes (what the edge receives).
    pub bytes: Vec<u8>,
}

fn invalid(field: &str, rule: &'static str, message: String) -> SchemaError {
    SchemaError::Invalid { field: field.into(), rule, message }
}

/// Event types that name a student (by pseudonym on the wire).
fn names_a_student(kind: Option<EventType>) -> bool {
    matches!(kind, Some(EventType::ElectiveEnrolled | EventType::AssessmentRecorded))
}

/// What [`pseudonymise_in_place`] found in `payload.student_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StudentId {
    Absent,
    /// Replaced by `student_pseudonym`.
    Pseudonymised,
    /// Not a string, so not an id that can be pseudonymised: removed rather than kept.
    NotAString,
}

/// Replaces `payload.student_id` with its pseudonym in place, whatever else is wrong with the
/// event, so that not even a rejected event is kept with a raw student id.
pub fn pseudonymise_in_place(input: &mut Value, alliance_key: &[u8]) -> StudentId {
    let Some(payload) = input.get_mut("payload").and_then(Value::as_object_mut) else { return StudentId::Absent };
    match payload.remove("student_id") {
        Some(Value::String(id)) => {
            payload.insert("student_pseudonym".into(), pseudonymise(alliance_key, &id).into());
            StudentId::Pseudonymised
        }
        Some(_) => StudentId::NotAString,
        None => StudentId::Absent,
    }
}

/// Turns one event from classroom software into wire bytes for the outbox, or says which field
/// breaks which rule. `input` has been through [`pseudonymise_in_place`] (which said
/// `student`); the identity and defaults are filled into it, so a rejected input is kept as
/// the agent saw it.
pub fn prepare(
    input: &mut Value,
    student: StudentId,
    identity: &TerminalTopic,
    now: DateTime<Utc>,
    policy: &ValidationPolicy,
) -> Result<Prepared, SchemaError> {
    let Some(obj) = input.as_object_mut() else {
        return Err(SchemaError::Decode { field: "$".into(), rule: "type", message: "an event must be a JSON object".into() });
    };
    for (field, mine) in
        [("city", &identity.city), ("school", &identity.school), ("classroom", &identity.classroom), ("terminal", &identity.terminal)]
    {
        match obj.get(field) {
            None => {
                obj.insert(field.into(), mine.clone().into());
            }
            Some(Value::String(s)) if s == mine => {}
            Some(other) => {
                return Err(invalid(field, "identity_matches_terminal", format!("{other} is not this terminal's {field} {mine:?}")));
            }
        }
    }
    obj.entry("event_id").or_insert_with(|| Uuid::new_v4().to_string().into());
    obj.entry("schema_version").or_insert(SCHEMA_VERSION.into());
    let kind = obj.get("type").and_then(Value::as_str).and_then(EventType::parse);
    if student != StudentId::Absent && !names_a_student(kind) {
        return Err(invalid(
            "payload.student_id",
            "no_unknown_fields",
            format!("{} events name no student", kind.map_or("these", EventType::as_str)),
        ));
    }
    if student == StudentId::NotAString {
        return Err(invalid("payload.student_id", "type", "student_id must be a string".into()));
    }
    let event = Event::from_json(&serde_json::to_vec(input).expect("a Value always serialises"))?;
    validate(&event, now, policy)?;
    Ok(Prepared { event_id: event.header.event_id, bytes: event.to_json() })
}

/// Counters of the local interface (also shown at `/healthz`).
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub refused_full: AtomicU64,
}

/// What the HTTP handlers share.
pub struct LocalIngest {
    pub identity: TerminalTopic,
    pub alliance_key: Vec<u8>,
    pub policy: ValidationPolicy,
    pub outbox: Arc<std::sync::Mutex<Outbox>>,
    /// Written events go to the MQTT sender at once.
    pub fresh: tokio::sync::mpsc::UnboundedSender<Vec<OutboxEvent>>,
    /// `rejected.jsonl` (rotated to `.1` past [`REJECTED_FILE_MAX_BYTES`]).
    pub rejected_path: PathBuf,
    pub counters: IngestCounters,
}

/// Largest request body: a batch of a few thousand events.
pub const MAX_BODY_BYTES: usize = 4 << 20;
pub const REJECTED_FILE_MAX_BYTES: u64 = 16 << 20;

pub async fn serve(listener: tokio::net::TcpListener, state: Arc<LocalIngest>, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/v1/events", post(ingest))
        .route("/healthz", get(health))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(error = %e, "local ingest server failed");
    }
}

async fn health(State(s): State<Arc<LocalIngest>>) -> impl IntoResponse {
    let (pending, disk_bytes) = {
        let o = s.outbox.lock().expect("outbox lock");
        (o.len(), o.disk_bytes())
    };
    axum::Json(json!({
        "terminal": edubrain_schemas::identity::terminal_username(&s.identity),
        "outbox_pending_events": pending,
        "outbox_bytes": disk_bytes,
        "accepted_total": s.counters.accepted.load(Ordering::Relaxed),
        "rejected_total": s.counters.rejected.load(Ordering::Relaxed),
        "refused_outbox_full_total": s.counters.refused_full.load(Ordering::Relaxed),
    }))
}

async fn ingest(State(s): State<Arc<LocalIngest>>, body: Bytes) -> impl IntoResponse {
    let inputs = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(items)) => items,
        Ok(one @ Value::Object(_)) => vec![one],
        Ok(_) => return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "the body must be a JSON object or an array of them"}))),
        Err(e) => return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": format!("the body is not JSON: {e}")}))),
    };
    let now = Utc::now();
    let mut results: Vec<Value> = Vec::with_capacity(inputs.len());
    let mut good: Vec<(usize, Prepared)> = Vec::new();
    let mut kept: Vec<String> = Vec::new();
    for (index, mut input) in inputs.into_iter().enumerate() {
        let student = pseudonymise_in_place(&mut input, &s.alliance_key);
        match prepare(&mut input, student, &s.identity, now, &s.policy) {
            Ok(p) => {
                good.push((index, p));
                results.push(Value::Null);
            }
            Err(e) => {
                results.push(json!({"index": index, "status": "rejected", "field": e.field(), "rule": e.rule(), "error": e.to_string()}));
                kept.push(
                    json!({"received": now, "field": e.field(), "rule": e.rule(), "error": e.to_string(), "input": input}).to_string(),
                );
            }
        }
    }
    let rejected = kept.len() as u64;
    s.counters.rejected.fetch_add(rejected, Ordering::Relaxed);
    if !kept.is_empty() {
        let path = s.rejected_path.clone();
        if let Err(e) =
            tokio::task::spawn_blocking(move || keep_rejected(&path, &kept)).await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
        {
            tracing::error!(error = %e, path = %s.rejected_path.display(), "could not keep rejected events");
        }
    }
    let batch: Vec<(Uuid, Vec<u8>)> = good.iter().map(|(_, p)| (p.event_id, p.bytes.clone())).collect();
    let pushed = match push_to_outbox(&s.outbox, batch).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "outbox write failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": format!("the outbox could not be written: {e}")})));
        }
    };
    // Taken: written now, or already held from an earlier hand-in of the same id (a retry).
    let n_taken = pushed.taken;
    s.counters.accepted.fetch_add(pushed.written.len() as u64, Ordering::Relaxed);
    s.counters.refused_full.fetch_add((good.len() - n_taken) as u64, Ordering::Relaxed);
    let full_error = (n_taken < good.len()).then(|| s.outbox.lock().expect("outbox lock").full_error().to_string());
    let _ = s.fresh.send(pushed.written);
    for (i, (index, p)) in good.iter().enumerate() {
        results[*index] = if i < n_taken {
            json!({"index": index, "status": "accepted", "event_id": p.event_id})
        } else {
            json!({"index": index, "status": "outbox_full", "event_id": p.event_id, "error": full_error})
        };
    }
    let status = if n_taken < good.len() {
        StatusCode::INSUFFICIENT_STORAGE
    } else if rejected == 0 {
        StatusCode::ACCEPTED
    } else if n_taken == 0 {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::MULTI_STATUS
    };
    (status, axum::Json(json!({"accepted": n_taken, "rejected": rejected, "results": results})))
}

fn keep_rejected(path: &std::path::Path, lines: &[String]) -> std::io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > REJECTED_FILE_MAX_BYTES) {
        std::fs::rename(path, path.with_extension("jsonl.1"))?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    for l in lines {
        writeln!(f, "{l}")?;
    }
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn me() -> TerminalTopic {
        TerminalTopic { city: "c01".into(), school: "c01-s1".into(), classroom: "c01-s1-r1".into(), terminal: "c01-s1-r1-t".into() }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 2, 0, 0).unwrap()
    }

    fn run(mut v: Value) -> Result<Event, SchemaError> {
        let student = pseudonymise_in_place(&mut v, b"alliance-key");
        let p = prepare(&mut v, student, &me(), now(), &ValidationPolicy::default())?;
        Ok(Event::from_json(&p.bytes).unwrap())
    }

    fn assessment() -> Value {
        json!({"type":"assessment_recorded","event_time":"2026-11-23T09:40:00+08:00",
            "payload":{"assessment_id":"q1","subject":"math","grade":5,"student_id":"S-2026-0042","score":88.0,"max_score":100.0}})
    }

    #[test]
    fn fills_identity_and_id_and_pseudonymises_the_student() {
        let e = run(assessment()).unwrap();
        assert_eq!((e.header.city.as_str(), e.header.terminal.as_str()), ("c01", "c01-s1-r1-t"));
        assert_eq!(e.header.event_id.get_version_num(), 4);
        let wire = String::from_utf8(e.to_json()).unwrap();
        assert!(!wire.contains("S-2026-0042"), "the raw id never leaves: {wire}");
        assert!(wire.contains(&pseudonymise(b"alliance-key", "S-2026-0042")));
    }

    #[test]
    fn a_given_event_id_is_kept_so_retries_are_idempotent() {
        let mut v = assessment();
        v["event_id"] = "0b7f2a34-6a1e-4a53-9b38-3f5cf7d9a001".into();
        assert_eq!(run(v).unwrap().header.event_id.to_string(), "0b7f2a34-6a1e-4a53-9b38-3f5cf7d9a001");
    }

    #[test]
    fn errors_name_the_field_and_rule() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!([1]), "$", "type"),
            (
                {
                    let mut v = assessment();
                    v["classroom"] = "c01-s1-r9".into();
                    v
                },
                "classroom",
                "identity_matches_terminal",
            ),
            (
                {
                    let mut v = assessment();
                    v["payload"]["score"] = 120.0.into();
                    v
                },
                "payload.score",
                "range",
            ),
            (
                {
                    let mut v = assessment();
                    v["payload"]["student_name"] = "张三".into();
                    v
                },
                "payload.student_name",
                "no_unknown_fields",
            ),
            (
                {
                    let mut v = assessment();
                    v["payload"]["student_id"] = 42.into();
                    v
                },
                "payload.student_id",
                "type",
            ),
            (
                json!({"type":"lesson_ended","event_time":"2026-11-23T01:00:00Z","payload":{"lesson_id":"l1","duration_s":60.0,"student_id":"S1"}}),
                "payload.student_id",
                "no_unknown_fields",
            ),
            (
                {
                    let mut v = assessment();
                    v.as_object_mut().unwrap().remove("event_time");
                    v
                },
                "event_time",
                "required",
            ),
        ];
        for (input, field, rule) in cases {
            let err = run(input.clone()).expect_err(&input.to_string());
            assert_eq!((err.field(), err.rule()), (field, rule), "{input}: {err}");
        }
    }

    #[test]
    fn a_rejected_event_is_kept_without_the_raw_student_id() {
        let mut v = assessment();
        v["payload"]["score"] = 120.0.into();
        assert_eq!(pseudonymise_in_place(&mut v, b"k"), StudentId::Pseudonymised);
        assert!(!v.to_string().contains("S-2026-0042"));
    }
}
