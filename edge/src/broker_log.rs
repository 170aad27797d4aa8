//! The MQTT broker's own refusals, read from its log.
//!
//! Mosquitto refuses a bad login, a failed TLS handshake and a malformed or oversize packet
//! before anything reaches the edge, and it closes a session when the same identity connects
//! again (with `use_username_as_clientid`, the only takeover left). None of that shows in the
//! edge's message stream. With `log_dest topic` (deploy/mosquitto/edubrain.conf) Mosquitto
//! publishes each log line on `$SYS/broker/log/<level>`; the ACL lets each edge read them. The
//! edge counts the lines that record a refusal or a forced disconnect, by reason, and keeps each
//! as an audit record on the Kafka audit topic (through its WAL, like any record).
//!
//! It also counts the ACL's refusals: a publish on a topic the client may not publish on, a
//! subscription wider than what it may read. Mosquitto 2.0's own `acl_file` logs a refused
//! publish only at debug level (beside every message) and, under MQTT 3.1.1, acknowledges it
//! like an allowed one; the hub's ACL is therefore enforced by the edubrain plugin
//! (`mosquitto-acl/`), which logs each refusal as `ACL denied PUBLISH from <client> to '<topic>'`.
//!
//! Pure: no I/O; the caller passes the line and the time it was received.

use serde::Serialize;

/// The edge's subscription to the broker's log lines (every level).
pub const BROKER_LOG_FILTER: &str = "$SYS/broker/log/+";

/// Whether a message is one of the broker's log lines rather than a terminal's event.
pub fn is_broker_log(topic: &str) -> bool {
    topic.starts_with("$SYS/broker/log/")
}

/// Why the broker refused or disconnected a client. The label of
/// `edubrain_edge_mqtt_broker_disconnects_total`, so the set is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Unknown user, wrong password, or a certificate identity without access.
    NotAuthorised,
    /// A TLS handshake failed: no client certificate, one from another CA, an old protocol.
    TlsError,
    /// The same identity connected again; the broker closed the older connection.
    SessionTakenOver,
    /// Nothing heard from the client for 1.5 keepalive periods.
    KeepaliveTimeout,
    ProtocolError,
    MalformedPacket,
    /// Larger than the broker's `message_size_limit`.
    OversizePacket,
}

impl DisconnectReason {
    pub const ALL: [DisconnectReason; 7] = [
        DisconnectReason::NotAuthorised,
        DisconnectReason::TlsError,
        DisconnectReason::SessionTakenOver,
        DisconnectReason::KeepaliveTimeout,
        DisconnectReason::ProtocolError,
        DisconnectReason::MalformedPacket,
        DisconnectReason::OversizePacket,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::NotAuthorised => "not_authorised",
            DisconnectReason::TlsError => "tls_error",
            DisconnectReason::SessionTakenOver => "session_taken_over",
            DisconnectReason::KeepaliveTimeout => "keepalive_timeout",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::MalformedPacket => "malformed_packet",
            DisconnectReason::OversizePacket => "oversize_packet",
        }
    }
}

/// Mosquitto 2.0's wording of a refusal about one client, `Client <id><suffix>`.
const CLIENT_LINES: [(&str, DisconnectReason); 6] = [
    (" disconnected, not authorised.", DisconnectReason::NotAuthorised),
    (" already connected, closing old connection.", DisconnectReason::SessionTakenOver),
    (" has exceeded timeout, disconnecting.", DisconnectReason::KeepaliveTimeout),
    (" disconnected due to protocol error.", DisconnectReason::ProtocolError),
    (" disconnected due to malformed packet.", DisconnectReason::MalformedPacket),
    (" disconnected due to oversize packet.", DisconnectReason::OversizePacket),
];

/// Log lines and client ids are cut to these many bytes in the audit record, which then stays
/// within the WAL's per-record overhead even if every byte needs a JSON escape.
pub const MAX_LINE_BYTES: usize = 1024;
pub const MAX_CLIENT_BYTES: usize = 256;

/// One refusal, as the audit record the edge writes to Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerAudit<'a> {
    pub source: &'static str,
    /// A [`DisconnectReason`], `acl_denied_publish` or `acl_denied_subscribe`.
    pub reason: &'static str,
    /// The client id (with `use_username_as_clientid`, its login); `None` when the broker did
    /// not know it yet (a refused login, a failed handshake).
    pub client: Option<&'a str>,
    /// The topic or filter of an ACL refusal (cut to [`MAX_LINE_BYTES`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    /// The broker's own timestamp (seconds since the epoch), when the line starts with one.
    pub broker_time: Option<i64>,
    pub edge_city: &'a str,
    pub received_ms: i64,
    /// The line as the broker wrote it (cut to [`MAX_LINE_BYTES`]).
    pub line: &'a str,
}

/// What the ACL refused (the label of `edubrain_edge_mqtt_broker_acl_denials_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAction {
    Publish,
    Subscribe,
}

impl AclAction {
    pub const ALL: [AclAction; 2] = [AclAction::Publish, AclAction::Subscribe];

    pub fn as_str(self) -> &'static str {
        match self {
            AclAction::Publish => "publish",
            AclAction::Subscribe => "subscribe",
        }
    }

    /// The audit record's `reason` for a refusal of this action.
    pub fn reason(self) -> &'static str {
        match self {
            AclAction::Publish => "acl_denied_publish",
            AclAction::Subscribe => "acl_denied_subscribe",
        }
    }
}

/// Every `reason` an audit record of the broker's refusals can have.
pub fn all_reasons() -> impl Iterator<Item = &'static str> {
    DisconnectReason::ALL.into_iter().map(DisconnectReason::as_str).chain(AclAction::ALL.into_iter().map(AclAction::reason))
}

/// What a broker log line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal<'a> {
    /// A client refused at connect or disconnected by the broker.
    Disconnect(DisconnectReason),
    /// The ACL refused a publish or a subscription; `topic` is its topic or filter.
    AclDenied { action: AclAction, topic: &'a str },
}

impl Refusal<'_> {
    /// The audit record's `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Disconnect(r) => r.as_str(),
            Refusal::AclDenied { action, .. } => action.reason(),
        }
    }
}

/// The edubrain ACL plugin's wording of a refusal (`mosquitto-acl/src/plugin.rs`):
/// `ACL denied <PUBLISH|SUBSCRIBE> from <client id> to '<topic>'`. The client id is the hub's
/// (the login); the topic is the client's own choice and may hold anything, so the id ends at
/// the first ` to '`.
fn parse_acl_denial(text: &str) -> Option<(AclAction, &str, &str)> {
    let rest = text.strip_prefix("ACL denied ")?;
    let (action, rest) = if let Some(rest) = rest.strip_prefix("PUBLISH from ") {
        (AclAction::Publish, rest)
    } else {
        (AclAction::Subscribe, rest.strip_prefix("SUBSCRIBE from ")?)
    };
    let (client, topic) = rest.split_once(" to '")?;
    Some((action, client, topic.strip_suffix('\'')?))
}

/// A log line that records a refusal or a forced disconnect, with the client (when the broker
/// knew it) and the broker's time, or `None` for any other line (connections, clean
/// disconnects, start-up messages).
pub fn parse(line: &str) -> Option<(Refusal<'_>, Option<&str>, Option<i64>)> {
    let line = line.trim_end();
    // `log_timestamp true` (the default) prefixes `<seconds>: `; other formats are kept whole.
    let (time, text) = match line.split_once(": ") {
        Some((t, rest)) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => (t.parse().ok(), rest),
        _ => (None, line),
    };
    // One handshake failure logs OpenSSL's error stack as [0], [1], ...: count it once.
    if text.starts_with("OpenSSL Error[0]: ") {
        return Some((Refusal::Disconnect(DisconnectReason::TlsError), None, time));
    }
    if let Some((action, client, topic)) = parse_acl_denial(text) {
        return Some((Refusal::AclDenied { action, topic }, Some(client), time));
    }
    let rest = text.strip_prefix("Client ")?;
    CLIENT_LINES.iter().find_map(|(suffix, reason)| {
        let id = rest.strip_suffix(suffix)?;
        Some((Refusal::Disconnect(*reason), (id != "<unknown>" && !id.is_empty()).then_some(id), time))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as Mosquitto 2.0.11 published them on $SYS/broker/log/<level> (deploy config).
    #[test]
    fn refusals_are_recognised_with_their_client() {
        use DisconnectReason::*;
        let d = Refusal::Disconnect;
        assert_eq!(parse("1795828019: Client <unknown> disconnected, not authorised."), Some((d(NotAuthorised), None, Some(1795828019))));
        assert_eq!(
            parse("1795828020: Client c01/s1/r1/t1 already connected, closing old connection."),
            Some((d(SessionTakenOver), Some("c01/s1/r1/t1"), Some(1795828020)))
        );
        assert_eq!(
            parse("1795828020: Client edge-c01 has exceeded timeout, disconnecting."),
            Some((d(KeepaliveTimeout), Some("edge-c01"), Some(1795828020)))
        );
        assert_eq!(
            parse("1795828082: OpenSSL Error[0]: error:0A0000C7:SSL routines::peer did not return a certificate"),
            Some((d(TlsError), None, Some(1795828082)))
        );
        assert_eq!(parse("Client x disconnected due to oversize packet.\n"), Some((d(OversizePacket), Some("x"), None)));
        assert_eq!(parse("Client x disconnected due to malformed packet."), Some((d(MalformedPacket), Some("x"), None)));
        assert_eq!(parse("Client x disconnected due to protocol error."), Some((d(ProtocolError), Some("x"), None)));
    }

    // Lines as the edubrain ACL plugin logged them under Mosquitto 2.0.11.
    #[test]
    fn acl_refusals_are_recognised_with_their_client_and_topic() {
        let publish = parse("1796583936: ACL denied PUBLISH from c01/s1/r1/t1 to 'edubrain/v1/c01/s1/r2/t2/events'");
        let topic = "edubrain/v1/c01/s1/r2/t2/events";
        assert_eq!(publish, Some((Refusal::AclDenied { action: AclAction::Publish, topic }, Some("c01/s1/r1/t1"), Some(1796583936))));
        assert_eq!(publish.unwrap().0.reason(), "acl_denied_publish");
        let subscribe = parse("1796583936: ACL denied SUBSCRIBE from c01/s1/r2/t2 to 'edubrain/#'");
        assert_eq!(
            subscribe,
            Some((Refusal::AclDenied { action: AclAction::Subscribe, topic: "edubrain/#" }, Some("c01/s1/r2/t2"), Some(1796583936)))
        );
        assert_eq!(subscribe.unwrap().0.reason(), "acl_denied_subscribe");
        // The topic is the client's choice: one that repeats the separator stays whole.
        let odd = parse("ACL denied PUBLISH from a to 'x to 'y''");
        assert_eq!(odd, Some((Refusal::AclDenied { action: AclAction::Publish, topic: "x to 'y'" }, Some("a"), None)));
        // Mosquitto's own debug line for a refused publish is not the plugin's: not counted twice.
        assert_eq!(parse("1: Denied PUBLISH from a (d0, q1, r0, m1, 'x', ... (5 bytes))"), None);
        assert_eq!(parse("1: ACL denied UNSUBSCRIBE from a to 'x'"), None);
    }

    #[test]
    fn ordinary_lines_and_follow_ups_are_not_counted() {
        for line in [
            "1795828019: New connection from 127.0.0.1:41306 on port 18830.",
            "1795828019: New client connected from 127.0.0.1:41320 as c01/s1/r1/t1 (p2, c1, k60, u'c01/s1/r1/t1').",
            "1795828019: Client c01/s1/r1/t1 disconnected.",
            "1795828019: Client c01/s1/r1/t1 closed its connection.",
            // A failed handshake's later lines: the handshake is counted once, at OpenSSL Error[0].
            "1795828082: OpenSSL Error[1]: error:10080002:BIO routines::system lib",
            "1795828082: Client <unknown> disconnected: Protocol error.",
            "1795828018: mosquitto version 2.0.11 running",
            "",
            "Client ",
        ] {
            assert_eq!(parse(line), None, "{line}");
        }
    }

    #[test]
    fn a_client_id_that_looks_like_a_suffix_is_still_whole() {
        let line = "1: Client a disconnected, not authorised. disconnected, not authorised.";
        let refusal = Refusal::Disconnect(DisconnectReason::NotAuthorised);
        assert_eq!(parse(line), Some((refusal, Some("a disconnected, not authorised."), Some(1))));
    }

    #[test]
    fn the_audit_record_names_the_reason_in_snake_case() {
        let audit = BrokerAudit {
            source: "mqtt_broker",
            reason: DisconnectReason::SessionTakenOver.as_str(),
            client: Some("c01/s1/r1/t1"),
            topic: None,
            broker_time: Some(5),
            edge_city: "c01",
            received_ms: 7,
            line: "5: Client c01/s1/r1/t1 already connected, closing old connection.",
        };
        let json: serde_json::Value = serde_json::to_value(&audit).unwrap();
        assert_eq!(json["reason"], DisconnectReason::SessionTakenOver.as_str());
        assert_eq!(json["client"], "c01/s1/r1/t1");
        assert!(json.get("topic").is_none(), "{json}");
    }
}
