//! Student pseudonyms: HMAC-SHA256 of the raw id under a per-alliance key, hex encoded.
//!
//! Computed on the terminal, so raw student ids never leave the classroom. A per-alliance key
//! means the same student is linkable inside an alliance (for its analytics) but not across
//! alliances, and a leaked table cannot be reversed by hashing every plausible id.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Returns the 64-hex-digit pseudonym of `student_id` under `alliance_key`.
pub fn pseudonymise(alliance_key: &[u8], student_id: &str) -> String {
    hmac_sha256_hex(alliance_key, &[student_id.as_bytes()])
}

/// HMAC-SHA256 of the concatenated `parts` under `key`, hex encoded (also used for per-device
/// MQTT passwords, [`crate::identity::derived_password`]).
pub(crate) fn hmac_sha256_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc4231_test_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            pseudonymise(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn differs_between_alliances() {
        assert_ne!(pseudonymise(b"alliance-a", "stu-1"), pseudonymise(b"alliance-b", "stu-1"));
    }
}
