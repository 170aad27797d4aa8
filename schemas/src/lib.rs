//! The edubrain event contract, shared by terminals, edges and the cloud.
//!
//! - [`ack`]: the edge's application-level ack to a terminal (durable / rejected event ids).
//! - [`dedup`]: bounded window of recently seen event ids.
//! - [`event`]: the versioned envelope and typed payloads; JSON wire decode/encode.
//! - [`message`]: one MQTT message carries one event or several as JSON Lines.
//! - [`validate`]: rules beyond decoding (ids, plausible clocks, ranges, pseudonymised students).
//! - [`topics`]: MQTT topic scheme and Kafka topic names.
//! - [`registry`]: the school registry (master data) CSV.
//! - [`warehouse`]: Arrow schemas of the warehouse tables.
//! - [`pseudonym`]: per-alliance HMAC pseudonyms of student ids.
//! - [`identity`]: MQTT usernames of terminals and edges; per-device derived passwords.
//! - [`json_schema`]: JSON Schema documents generated from the Rust types (committed in `json/`).
//!
//! Pure: no I/O beyond reading and writing what the caller hands in; time is passed in.

pub mod ack;
pub mod dedup;
pub mod event;
pub mod identity;
pub mod json_schema;
pub mod message;
pub mod pseudonym;
pub mod registry;
pub mod topics;
pub mod validate;
pub mod warehouse;

pub use event::{Event, EventBody, EventType, Header, SCHEMA_VERSION};
pub use registry::{Level, Locale, School};
pub use validate::{ValidationPolicy, validate};

/// Everything that can be wrong with an event or a registry.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The bytes are not a well-formed event of this contract.
    #[error("{field}: {message} (rule: {rule})")]
    Decode { field: String, rule: &'static str, message: String },
    /// The event decodes but breaks a rule.
    #[error("{field}: {message} (rule: {rule})")]
    Invalid { field: String, rule: &'static str, message: String },
    /// A registry row (line 1 is the header) has a bad value.
    #[error("registry line {line}, column {column}: {message} (value {value:?})")]
    Registry { line: u64, column: String, value: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl SchemaError {
    /// The field an event error is about (`payload.rating`, `event_time`, …).
    pub fn field(&self) -> &str {
        match self {
            SchemaError::Decode { field, .. } | SchemaError::Invalid { field, .. } => field,
            SchemaError::Registry { column, .. } => column,
            SchemaError::Io { .. } => "$",
        }
    }

    /// A short, bounded rule name, fit for a metric label.
    pub fn rule(&self) -> &'static str {
        match self {
            SchemaError::Decode { rule, .. } | SchemaError::Invalid { rule, .. } => rule,
            SchemaError::Registry { .. } => "registry",
            SchemaError::Io { .. } => "io",
        }
    }
}
