//! The TLS certificates a stack's HTTPS ports serve: `certificates/<stack>/<name>`, each a
//! [`TlsCertificate`] for the host names it lists. Every agent follows them; the client's
//! SNI picks one. Checked before they are stored: the chain and key parse, belong
//! together, and the certificate is valid for every name it is stored for.

use std::{collections::BTreeMap, sync::Arc};

use ferry_api::types::TlsCertificate;
use rustls::pki_types::ServerName;

use super::StackError;
use crate::store::{Op, Store, StoreError};

/// Most host names one certificate may be stored for.
pub const MAX_HOSTS: usize = 100;

/// Errors storing a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for CertificateError {
    fn from(e: StoreError) -> Self {
        Self::Stack(StackError::Store(e))
    }
}

fn prefix(stack: &str) -> String {
    ferry_api::keys::certificates_of(stack)
}

/// Stack certificates over a store.
pub struct Certificates<S: Store> {
    store: Arc<S>,
}

impl<S: Store> Certificates<S> {
    /// Stack certificates on `store`.
    pub fn new(store: Arc<S>) -> Self {
        Self { store }
    }

    /// The stack's certificates: name to the hosts each serves (the keys stay in).
    pub fn list(&self, stack: &str) -> Result<BTreeMap<String, Vec<String>>, CertificateError> {
        let (all, _) = self.store.list(&prefix(stack))?;
        Ok(all
            .into_iter()
            .filter_map(|kv| {
                let name = kv.key.strip_prefix(&prefix(stack))?.to_string();
                let cert: TlsCertificate = serde_json::from_slice(&kv.value).ok()?;
                Some((name, cert.hosts))
            })
            .collect())
    }

    /// Stores `certificate` as `name`, after checking it.
    pub fn put(
        &self,
        stack: &str,
        name: &str,
        certificate: &TlsCertificate,
    ) -> Result<BTreeMap<String, Vec<String>>, CertificateError> {
        if !super::valid_name(name) {
            return Err(CertificateError::Invalid(format!(
                "{name:?} is not a certificate name; use lowercase letters, digits and '-'"
            )));
        }
        let certificate = &canonical_hosts(certificate)?;
        check(certificate)?;
        let value = serde_json::to_vec(certificate)
            .map_err(|e| CertificateError::Invalid(e.to_string()))?;
        self.store
            .put(&ferry_api::keys::certificate(stack, name), &value)?;
        self.list(stack)
    }

    /// Removes certificate `name`.
    pub fn delete(
        &self,
        stack: &str,
        name: &str,
    ) -> Result<BTreeMap<String, Vec<String>>, CertificateError> {
        let key = ferry_api::keys::certificate(stack, name);
        if self.store.get(&key)?.is_none() {
            return Err(CertificateError::Invalid(format!(
                "{stack} has no certificate {name:?}; `ferry certificates list --stack {stack}` shows them"
            )));
        }
        self.store.txn(&[], &[Op::Delete(key)])?;
        self.list(stack)
    }
}

/// `certificate` with its host names in the form SNI is matched in (lower case, no
/// trailing dot), duplicates dropped; an error names a host that is not a host name.
fn canonical_hosts(certificate: &TlsCertificate) -> Result<TlsCertificate, CertificateError> {
    let mut hosts: Vec<String> = Vec::with_capacity(certificate.hosts.len());
    for host in &certificate.hosts {
        let host = ferry_api::hostname::pattern(host).map_err(CertificateError::Invalid)?;
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Ok(TlsCertificate {
        hosts,
        ..certificate.clone()
    })
}

/// Whether `certificate` can be served for each of its hosts.
pub fn check(certificate: &TlsCertificate) -> Result<(), CertificateError> {
    let invalid = |why: String| CertificateError::Invalid(why);
    if certificate.hosts.is_empty() || certificate.hosts.len() > MAX_HOSTS {
        return Err(invalid(format!(
            "a certificate serves 1 to {MAX_HOSTS} host names, not {}",
            certificate.hosts.len()
        )));
    }
    let certified = certificate.certified_key().map_err(invalid)?;
    let leaf = certified
        .cert
        .first()
        .ok_or_else(|| invalid("the certificate file holds no certificate".into()))?;
    let parsed = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| invalid(format!("the certificate cannot be read: {e}")))?;
    for host in &certificate.hosts {
        // A wildcard entry is checked with a name it would cover.
        let sample = match host.strip_prefix("*.") {
            Some(rest) => format!("x.{rest}"),
            None => host.clone(),
        };
        let name = ServerName::try_from(sample.as_str())
            .map_err(|_| invalid(format!("{host:?} is not a host name")))?;
        parsed
            .verify_is_valid_for_subject_name(&name)
            .map_err(|_| invalid(format!("the certificate is not valid for {host}")))?;
    }
    Ok(())
}
