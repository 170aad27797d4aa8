//! JSON Schema documents generated from the Rust types. The committed copies in
//! `schemas/json/` are what non-Rust publishers validate against; a test fails when they drift
//! (regenerate with `EDUBRAIN_BLESS=1 cargo test -p edubrain-schemas json_schema`).

use crate::event::Event;
use crate::registry::School;

/// File name and pretty-printed JSON of every committed schema document.
pub fn documents() -> Vec<(&'static str, String)> {
    let pretty = |v: schemars::Schema| serde_json::to_string_pretty(&v).expect("schemas serialise") + "\n";
    vec![("event.schema.json", pretty(schemars::schema_for!(Event))), ("school.schema.json", pretty(schemars::schema_for!(School)))]
}
