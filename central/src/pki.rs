//! Central's certificate authority: made once at `init`, it signs central's server
//! certificate; agents pin the CA by its SHA-256 fingerprint when they join, so no one can
//! stand in for central even on a network the operator does not trust.

pub use ferry_api::fingerprint;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA and the server certificate it signed, in PEM.
pub struct Pki {
    /// The CA certificate.
    pub ca_cert_pem: String,
    /// The CA's private key (stays in central's data directory).
    pub ca_key_pem: String,
    /// Central's TLS certificate.
    pub server_cert_pem: String,
    /// Central's TLS private key.
    pub server_key_pem: String,
    /// `sha256:` and the hex digest of the CA certificate's DER.
    pub ca_fingerprint: String,
}

/// Errors from making certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

/// Makes a CA and a server certificate valid for `names` (DNS names or IP addresses).
pub fn create(names: &[String]) -> Result<Pki, PkiError> {
    let fail = |what| move |source| PkiError::Generate { what, source };
    let ca_key = KeyPair::generate().map_err(fail("the CA key"))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail("the CA"))?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ferry central CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(fail("the CA certificate"))?;

    let server_key = KeyPair::generate().map_err(fail("the server key"))?;
    let mut server_params =
        CertificateParams::new(names.to_vec()).map_err(fail("the server names"))?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "ferry central");
    let issuer = Issuer::new(ca_params, &ca_key);
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(fail("the server certificate"))?;

    Ok(Pki {
        ca_fingerprint: fingerprint(ca_cert.der()),
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}
