//! Kafka over TLS and SASL, for the edge's producer and the cloud's consumers.
//!
//! `[kafka.tls]` and `[kafka.sasl]` in a component's config become librdkafka properties
//! ([`client_properties`]); which sections are present decides `security.protocol`, so the
//! protocol can never disagree with the settings. The password is read from a file (a
//! Kubernetes or compose secret, a systemd credential), never from the config or the
//! environment. librdkafka does TLS and SCRAM with OpenSSL (rdkafka's `ssl` feature).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[kafka.tls]`: PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// The CA certificate(s) that signed the brokers' certificates (`ssl.ca.location`). The
    /// broker's name is checked against its certificate (librdkafka's default `https`).
    pub ca_file: PathBuf,
    /// This client's certificate, for brokers that require one. With `key_file`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// `[kafka.sasl]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    /// A file holding the password (one line; a trailing newline is ignored).
    pub password_file: PathBuf,
}

/// The SASL mechanisms librdkafka implements without libsasl2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// The password itself travels: refused without `[kafka.tls]`.
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSecurityError {
    #[error("kafka {what} {path}: {message}")]
    File { what: &'static str, path: String, message: String },
    #[error("kafka security: {0}")]
    Config(String),
}

fn readable(what: &'static str, path: &Path) -> Result<String, KafkaSecurityError> {
    std::fs::read_to_string(path).map_err(|e| KafkaSecurityError::File { what, path: path.display().to_string(), message: e.to_string() })
}

fn pem(what: &'static str, path: &Path, marker: &str) -> Result<String, KafkaSecurityError> {
    let text = readable(what, path)?;
    if !text.contains("-----BEGIN ") || !text.contains(marker) {
        return Err(KafkaSecurityError::File { what, path: path.display().to_string(), message: format!("no PEM {marker} in it") });
    }
    Ok(path.display().to_string())
}

/// The librdkafka properties for these sections; reads and checks every file they name, so a
/// missing CA or an empty password file fails at start-up with the file's name, not later as
/// a broker that "cannot be reached".
pub fn client_properties(tls: Option<&KafkaTls>, sasl: Option<&KafkaSasl>) -> Result<Vec<(&'static str, String)>, KafkaSecurityError> {
    let protocol = match (tls.is_some(), sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    let mut properties = vec![("security.protocol", protocol.to_string())];
    if let Some(tls) = tls {
        properties.push(("ssl.ca.location", pem("tls ca_file", &tls.ca_file, "CERTIFICATE")?));
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                properties.push(("ssl.certificate.location", pem("tls cert_file", cert, "CERTIFICATE")?));
                properties.push(("ssl.key.location", pem("tls key_file", key, "PRIVATE KEY")?));
            }
            (None, None) => {}
            _ => return Err(KafkaSecurityError::Config("[kafka.tls] cert_file and key_file go together".into())),
        }
    }
    if let Some(sasl) = sasl {
        if sasl.mechanism == SaslMechanism::Plain && tls.is_none() {
            return Err(KafkaSecurityError::Config(
                "[kafka.sasl] mechanism PLAIN sends the password in the clear: add [kafka.tls] or use SCRAM-SHA-512".into(),
            ));
        }
        if sasl.username.is_empty() {
            return Err(KafkaSecurityError::Config("[kafka.sasl] username is empty".into()));
        }
        let password = readable("sasl password_file", &sasl.password_file)?;
        let password = password.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(KafkaSecurityError::File {
                what: "sasl password_file",
                path: sasl.password_file.display().to_string(),
                message: "it is empty".into(),
            });
        }
        properties.push(("sasl.mechanism", sasl.mechanism.as_str().to_string()));
        properties.push(("sasl.username", sasl.username.clone()));
        properties.push(("sasl.password", password.to_string()));
    }
    Ok(properties)
}

/// The librdkafka properties a component sets itself for security; extra producer or consumer
/// properties from a config may not override them (they would bypass the checks above).
pub const SECURITY_PROPERTIES: &[&str] = &[
    "security.protocol",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
];

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    fn get<'a>(props: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
        props.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_sections_present_choose_the_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, CERT).unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let tls = KafkaTls { ca_file: ca.clone(), cert_file: None, key_file: None };
        let sasl = KafkaSasl { mechanism: SaslMechanism::ScramSha512, username: "edge-c01".into(), password_file: pw };

        assert_eq!(client_properties(None, None).unwrap(), vec![("security.protocol", "plaintext".to_string())]);
        assert_eq!(get(&client_properties(Some(&tls), None).unwrap(), "security.protocol"), Some("ssl"));
        let scram = client_properties(None, Some(&sasl)).unwrap();
        assert_eq!(get(&scram, "security.protocol"), Some("sasl_plaintext"));
        let both = client_properties(Some(&tls), Some(&sasl)).unwrap();
        assert_eq!(get(&both, "security.protocol"), Some("sasl_ssl"));
        assert_eq!(get(&both, "ssl.ca.location"), Some(ca.to_str().unwrap()));
        assert_eq!(get(&both, "sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(get(&both, "sasl.username"), Some("edge-c01"));
        assert_eq!(get(&both, "sasl.password"), Some("s3cret"), "the file's trailing newline is not part of the password");
        assert!(both.iter().all(|(k, _)| SECURITY_PROPERTIES.contains(k)));
    }

    #[test]
    fn each_mistake_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, CERT).unwrap();
        let key = dir.path().join("client.key");
        std::fs::write(&key, KEY).unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "pw").unwrap();
        let error = |tls: Option<&KafkaTls>, sasl: Option<&KafkaSasl>| client_properties(tls, sasl).unwrap_err().to_string();

        let missing_ca = KafkaTls { ca_file: dir.path().join("nope.pem"), cert_file: None, key_file: None };
        assert!(error(Some(&missing_ca), None).contains("tls ca_file") && error(Some(&missing_ca), None).contains("nope.pem"));
        let key_as_ca = KafkaTls { ca_file: key.clone(), cert_file: None, key_file: None };
        assert!(error(Some(&key_as_ca), None).contains("no PEM CERTIFICATE"), "{}", error(Some(&key_as_ca), None));
        let half = KafkaTls { ca_file: ca.clone(), cert_file: Some(ca.clone()), key_file: None };
        assert!(error(Some(&half), None).contains("go together"));
        let swapped = KafkaTls { ca_file: ca.clone(), cert_file: Some(ca.clone()), key_file: Some(ca.clone()) };
        assert!(error(Some(&swapped), None).contains("tls key_file"));

        let plain = KafkaSasl { mechanism: SaslMechanism::Plain, username: "u".into(), password_file: pw.clone() };
        assert!(error(None, Some(&plain)).contains("in the clear"));
        let tls = KafkaTls { ca_file: ca, cert_file: None, key_file: None };
        assert!(client_properties(Some(&tls), Some(&plain)).is_ok(), "PLAIN inside TLS is allowed");
        let no_password = KafkaSasl { mechanism: SaslMechanism::ScramSha256, username: "u".into(), password_file: empty };
        assert!(error(None, Some(&no_password)).contains("it is empty"));
        let nobody = KafkaSasl { mechanism: SaslMechanism::ScramSha256, username: String::new(), password_file: pw };
        assert!(error(None, Some(&nobody)).contains("username is empty"));
    }

    #[test]
    fn mechanisms_are_spelled_as_kafka_spells_them() {
        #[derive(Debug, Deserialize)]
        struct T {
            sasl: KafkaSasl,
        }
        let t: T = toml::from_str("[sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"cloud\"\npassword_file = \"/run/secrets/kafka\"\n")
            .unwrap();
        assert_eq!(t.sasl.mechanism, SaslMechanism::ScramSha256);
        let wrong = toml::from_str::<T>("[sasl]\nmechanism = \"scram\"\nusername = \"cloud\"\npassword_file = \"/p\"\n").unwrap_err();
        assert!(wrong.to_string().contains("SCRAM-SHA-512"), "{wrong}");
    }
}
