//! rustls client configuration for the broker link: mutual TLS with a pinned CA.
//!
//! Only the CA file from the configuration is trusted (no system roots), only TLS 1.2 and 1.3
//! are offered, and the crypto provider is `ring` — the one provider of this workspace (ureq uses
//! it too; aws-lc is never linked). The client key is read into a zeroizing buffer and refused if
//! group/other can read the file.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use zeroize::Zeroizing;

use super::{MqttConfig, MqttError, Result};

const MAX_PEM: u64 = 1 << 20;

fn cred_err(path: &Path, problem: impl Into<String>) -> MqttError {
    MqttError::Credential {
        path: path.into(),
        problem: problem.into(),
    }
}

fn read_pem(path: &Path, secret: bool) -> Result<Zeroizing<Vec<u8>>> {
    let mut f =
        std::fs::File::open(path).map_err(|e| cred_err(path, format!("cannot open: {e}")))?;
    let md = f
        .metadata()
        .map_err(|e| cred_err(path, format!("cannot stat: {e}")))?;
    if !md.is_file() || md.len() > MAX_PEM {
        return Err(cred_err(path, "not a regular file of reasonable size"));
    }
    // systemd credentials may arrive root-owned with an ACL (0440 on systemd >= 254): the
    // directory is private to the service, so the mode rule is for hand-placed files only.
    if secret && md.mode() & 0o077 != 0 && !crate::store::keys::is_systemd_credential(path) {
        return Err(cred_err(
            path,
            format!(
                "mode {:04o} lets other users read the private key; run `chmod 600`",
                md.mode() & 0o777
            ),
        ));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(md.len() as usize));
    f.read_to_end(&mut buf)
        .map_err(|e| cred_err(path, format!("cannot read: {e}")))?;
    Ok(buf)
}

/// Build the client TLS configuration from a pinned CA, a client certificate chain and key.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let ca_pem = read_pem(ca, false)?;
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(&ca_pem) {
        let c = c.map_err(|e| cred_err(ca, format!("malformed PEM: {e}")))?;
        roots
            .add(c)
            .map_err(|e| cred_err(ca, format!("unusable CA certificate: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(cred_err(ca, "no CERTIFICATE found"));
    }
    let cert_pem = read_pem(cert, false)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| cred_err(cert, format!("malformed PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cred_err(cert, "no CERTIFICATE found"));
    }
    let key_pem = read_pem(key, true)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| cred_err(key, "no usable PRIVATE KEY found (PKCS#8, SEC1 or RSA PEM)"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| MqttError::Tls(format!("client certificate/key rejected: {e}")))
}

/// TLS configuration for `cfg`, resolving credential paths (config or systemd credentials).
pub fn from_config(cfg: &MqttConfig) -> Result<ClientConfig> {
    let (ca, cert, key) = cfg.credential_paths()?;
    client_config(&ca, &cert, &key)
}
