//! MQTT identities. A terminal logs in as its topic path (`{city}/{school}/{classroom}/{terminal}`)
//! and an edge as `edge-{city}`; the broker's ACL (`deploy/mosquitto/acl`) derives what each
//! may publish and read from that name, so a terminal can only speak for its own classroom, and
//! `use_username_as_clientid` stops one client from taking over another's session.

use crate::pseudonym::hmac_sha256_hex;
use crate::topics::TerminalTopic;

pub fn terminal_username(t: &TerminalTopic) -> String {
    format!("{}/{}/{}/{}", t.city, t.school, t.classroom, t.terminal)
}

pub fn edge_username(city: &str) -> String {
    format!("edge-{city}")
}

/// A device's MQTT password derived from the hub's provisioning secret (HMAC-SHA256, hex), so
/// the hub can issue one password per device and rebuild the broker's password file without
/// keeping a list. Knowing one device's password says nothing about another's.
pub fn derived_password(provisioning_secret: &[u8], username: &str) -> String {
    // The prefix separates this use of a key from any other HMAC under the same secret.
    hmac_sha256_hex(provisioning_secret, &[b"edubrain-mqtt-password\0", username.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_topic_and_passwords_differ_per_device() {
        let t = TerminalTopic { city: "c01".into(), school: "s1".into(), classroom: "r1".into(), terminal: "t1".into() };
        assert_eq!(terminal_username(&t), "c01/s1/r1/t1");
        assert_eq!(format!("edubrain/v1/{}/events", terminal_username(&t)), t.events_topic(), "the ACL pattern %u matches");
        let a = derived_password(b"k", "c01/s1/r1/t1");
        assert_eq!(a.len(), 64);
        assert_ne!(a, derived_password(b"k", "c01/s1/r1/t2"));
        assert_ne!(a, derived_password(b"k2", "c01/s1/r1/t1"));
    }
}
