//! No code: a workspace-hack crate managed by `cargo hakari` (`.config/hakari.toml`).
//!
//! Cargo resolves a dependency's features for what a command builds. `cargo run -p
//! edubrain-demo` builds the demo alone, without the test-only dependencies of other members
//! (one of them, scraper, turns on a feature of syn, which every proc macro builds on), so after
//! `scripts/test` it rebuilt nearly every dependency (17 minutes on 2 cores), and each member run
//! alone could do the same. Every member but edubrain-schemas (which `fuzz/` builds outside the
//! workspace) depends on this crate, whose `Cargo.toml` asks for the union of the features the
//! workspace uses, so every such command reuses one build. `scripts/test` checks that it is up
//! to date; after changing dependencies, run `cargo hakari generate && cargo hakari manage-deps`.
