//! MQTT over TLS with client certificates, for the edge and the terminal agent.
//!
//! The broker's TLS listener (see `deploy/mosquitto/edubrain.conf`) requires a certificate
//! signed by the hub's CA and takes the login from its common name (`use_identity_as_username`),
//! so a terminal's certificate *is* its identity `city/school/classroom/terminal` and the ACL's
//! `%u` patterns confine it as they do a password login. rustls with the `ring` provider, passed
//! explicitly (no process-wide default provider to race over).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `[mqtt.tls]`: PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// The CA certificate(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// This client's certificate chain; its common name is its MQTT login. With `key_file`.
    pub cert_file: Option<PathBuf>,
    /// This client's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("mqtt tls: {0}")]
    Config(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.display().to_string(), message: e.to_string() }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

impl MqttTls {
    /// The rustls client configuration: trusts only `ca_file`, presents the client certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(&self.ca_file)? {
            roots.add(cert).map_err(|e| file_error(&self.ca_file, e))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err(TlsError::Config("cert_file and key_file go together".into())),
        }
    }

    /// The rumqttc transport for this configuration.
    pub fn transport(&self) -> Result<rumqttc::Transport, TlsError> {
        Ok(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(self.client_config()?))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_and_empty_files_are_named() {
        let dir = std::env::temp_dir().join(format!("edubrain-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = MqttTls { ca_file: dir.join("missing.pem"), cert_file: None, key_file: None };
        assert!(missing.client_config().unwrap_err().to_string().contains("missing.pem"));
        std::fs::write(dir.join("empty.pem"), "no pem here\n").unwrap();
        let empty = MqttTls { ca_file: dir.join("empty.pem"), cert_file: None, key_file: None };
        assert!(empty.client_config().unwrap_err().to_string().contains("no PEM certificate"), "{:?}", empty.client_config().err());
        let half = MqttTls { ca_file: dir.join("empty.pem"), cert_file: Some(dir.join("c.pem")), key_file: None };
        assert!(half.client_config().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
