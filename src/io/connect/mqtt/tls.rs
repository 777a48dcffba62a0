//! TLS for MQTT: a rustls client configuration on the ring provider, from PEM files.

use std::path::Path;
use std::sync::Arc;

use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsConfig;

/// The transport for `config`, or the failing field and why.
pub(super) fn transport(config: &TlsConfig) -> Result<Transport, (&'static str, String)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(&config.ca_file).map_err(|e| ("ca_file", e))? {
        roots
            .add(cert)
            .map_err(|e| ("ca_file", format!("{}: {e}", config.ca_file.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("ca_file", e.to_string()))?
        .with_root_certificates(roots);
    let client_config = match (&config.client_cert_file, &config.client_key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_file), Some(key_file)) => {
            let chain = certificates(cert_file).map_err(|e| ("client_cert_file", e))?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| ("client_key_file", format!("{}: {e}", key_file.display())))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                (
                    "client_cert_file",
                    format!("{e} (the certificate, or its key in client_key_file)"),
                )
            })?
        }
        (Some(_), None) => {
            return Err((
                "client_key_file",
                "is missing: a client certificate needs its private key".into(),
            ));
        }
        (None, Some(_)) => {
            return Err((
                "client_cert_file",
                "is missing: a private key was given without its certificate".into(),
            ));
        }
    };
    Ok(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
        client_config,
    ))))
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
