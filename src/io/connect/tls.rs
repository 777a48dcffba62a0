//! TLS for every client iotpipe opens (MQTT brokers, InfluxDB, webhooks): a rustls client
//! configuration on the ring provider, from PEM files, or the system's trusted roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// TLS to a server: whom to trust, and who this client is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate authorities that sign the server's certificate.
    pub ca_file: PathBuf,
    /// PEM file of this client's certificate chain, for servers that require client
    /// certificates (mosquitto's `require_certificate true`, an mTLS proxy).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// HTTP only: the name the server's certificate must carry, where it is not the URL's host
    /// (a server reached by its address). MQTT checks the broker's host name.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// A TLS setting that cannot be used: the field (within `tls`) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tls.{field}: {message}")]
pub struct TlsConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> TlsConfigError {
    TlsConfigError {
        field,
        message: message.into(),
    }
}

impl TlsConfig {
    /// The rustls client configuration: trusting `ca_file`, presenting the client certificate
    /// if one is given.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(&self.ca_file).map_err(|e| invalid("ca_file", e))? {
            roots
                .add(cert)
                .map_err(|e| invalid("ca_file", format!("{}: {e}", self.ca_file.display())))?;
        }
        let builder = builder()
            .map_err(|e| invalid("ca_file", e))?
            .with_root_certificates(roots);
        let config = match (&self.client_cert_file, &self.client_key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert_file), Some(key_file)) => {
                let chain = certificates(cert_file).map_err(|e| invalid("client_cert_file", e))?;
                let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
                    invalid("client_key_file", format!("{}: {e}", key_file.display()))
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    invalid(
                        "client_cert_file",
                        format!("{e} (the certificate, or its key in client_key_file)"),
                    )
                })?
            }
            (Some(_), None) => {
                return Err(invalid(
                    "client_key_file",
                    "is missing: a client certificate needs its private key",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "client_cert_file",
                    "is missing: a private key was given without its certificate",
                ));
            }
        };
        Ok(Arc::new(config))
    }
}

/// A client configuration trusting the system's roots (`/etc/ssl/certs` and the like), for
/// `https://` without a `tls` section: InfluxDB Cloud, a public receiver.
pub fn system_client_config() -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(invalid(
            "ca_file",
            "the system has no trusted certificates to check the server with: set tls.ca_file",
        ));
    }
    let config = builder()
        .map_err(|e| invalid("ca_file", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

type WantsRoots = rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>;

/// A builder on the ring provider (the default, aws-lc, adds minutes of C build).
fn builder() -> Result<WantsRoots, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_cannot_be_used_are_named() {
        let config = TlsConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            ..TlsConfig::default()
        };
        let error = config.client_config().unwrap_err();
        assert_eq!(error.field, "ca_file");
        assert!(
            error
                .to_string()
                .starts_with("tls.ca_file: /nonexistent/ca.pem")
        );
    }
}
