//! A Mosquitto 2.0 plugin that enforces the hub's ACL file (`deploy/mosquitto/acl`) and logs
//! every refused publish and subscribe, so that the edge can count and audit them.
//!
//! Mosquitto's own `acl_file` refuses the same publishes, but logs them only at debug level
//! (where it logs every message) and, under MQTT 3.1.1, acknowledges them like allowed ones:
//! a terminal publishing as another classroom went unseen. A plugin that only watched could not
//! see the decision either: the broker asks its ACL checks in turn until one answers.
//!
//! - [`acl`]: the ACL file's format and decisions (pure, Mosquitto's semantics; subscriptions
//!   granted only when every topic they can match is readable).
//! - [`plugin`]: the C interface Mosquitto loads (the one module with unsafe code).

pub mod acl;
pub mod plugin;

/// The file name cargo gives the plugin library on Linux.
pub const LIBRARY_FILE: &str = "libedubrain_mosquitto_acl.so";
