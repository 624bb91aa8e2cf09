//! A client of central's API, for the `ferry` CLI and the agents.
//!
//! Trust is explicit: either the CA certificate itself (saved after joining), or, on first
//! contact, the CA's fingerprint from `ferry-central init`. With a fingerprint the client
//! accepts central only if the chain central presents contains a CA with that fingerprint
//! and the server certificate verifies against that CA for the name dialled.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _};
use serde::de::DeserializeOwned;

use crate::{
    Revision, fingerprint,
    types::{
        ActionKind, ActionResult, ContainerReport, DatasourcesChange, DeployResponse, ErrorBody,
        Generation, JoinRequest, JoinResponse, ListResponse, ProgressReport, Reason, ScaleRequest,
        ScaleResponse, Server, Stack, StatusReport, VariablesChange, WatchLine,
    },
};

/// How the client recognises central.
#[derive(Clone, Debug)]
pub enum Trust {
    /// `sha256:...` of central's CA, as `ferry-central init` printed it.
    Fingerprint(String),
    /// The CA certificate in PEM.
    CaPem(String),
}

/// Errors talking to central.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the CA certificate given is not valid PEM: {0}")]
    BadCa(String),
    #[error("{url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: central answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: the watch ended: {message}")]
    WatchEnded { url: String, message: String },
    /// The revision asked for is no longer in central's history: list again.
    #[error("{url}: the revision asked for has been compacted; list again")]
    Compacted { url: String },
}

/// A client bound to one central (one or several replicas) and one token; clones share
/// its connections and which replica answers.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Every replica's URL, without a trailing slash.
    bases: Arc<Vec<String>>,
    /// The index in `bases` of the replica that answered last: asked first.
    answering: Arc<AtomicUsize>,
    token: String,
    pinned: Arc<Mutex<Option<CertificateDer<'static>>>>,
}

impl Client {
    /// A client of the central at `url` (e.g. `https://central.example.com:7443`), or of
    /// its replicas, comma-separated (`https://a:7443,https://b:7443`): a request that
    /// cannot connect to one is sent to the next (it was never sent, so even a write is
    /// safe to send again), as is a GET, PUT or DELETE cut off on a connection the replica
    /// dropped; the one that answers is asked first from then on.
    pub fn new(url: &str, token: &str, trust: Trust) -> Result<Self, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pinned = Arc::new(Mutex::new(None));
        let verifier: Arc<dyn ServerCertVerifier> = match trust {
            Trust::Fingerprint(expected) => Arc::new(PinnedCa {
                expected,
                provider: provider.clone(),
                seen: pinned.clone(),
            }),
            Trust::CaPem(pem) => {
                let ca = CertificateDer::from_pem_slice(pem.as_bytes())
                    .map_err(|e| ClientError::BadCa(e.to_string()))?;
                verifier_for(ca, &provider).map_err(|e| ClientError::BadCa(e.to_string()))?
            }
        };
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::BadCa(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|source| ClientError::Transport {
                url: url.into(),
                source,
            })?;
        let bases: Vec<String> = url
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        Ok(Self {
            http,
            bases: Arc::new(bases),
            answering: Arc::default(),
            token: token.into(),
            pinned,
        })
    }

    /// The replica asked first now.
    fn base(&self) -> &str {
        let at = self.answering.load(Ordering::Relaxed);
        self.bases
            .get(at)
            .or_else(|| self.bases.first())
            .map_or("", String::as_str)
    }

    /// The CA certificate a fingerprint-pinned client accepted, in PEM, to save for later.
    pub fn pinned_ca_pem(&self) -> Option<String> {
        let der = self.pinned.lock().ok()?.clone()?;
        Some(pem_encode(&der))
    }

    /// Sends `request` with the token; a non-2xx answer becomes [`ClientError::Status`]
    /// with central's reason.
    async fn respond(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let transport = |source| ClientError::Transport {
            url: url.into(),
            source,
        };
        let request = request
            .bearer_auth(&self.token)
            .build()
            .map_err(transport)?;
        // A pooled connection central has just closed (after refusing an oversized body,
        // or across its restart) fails a request before it is sent; a read is safe to send
        // again once on a fresh connection.
        let again = (request.method() == reqwest::Method::GET)
            .then(|| request.try_clone())
            .flatten();
        let others = self.others(&request);
        // A request that never connected can go anywhere; one cut off on a connection
        // the replica dropped (it died) may have been seen, so only a method that may be
        // sent twice goes again (GET, PUT and DELETE: ferry's PUTs replace whole values).
        let twice = matches!(
            *request.method(),
            reqwest::Method::GET | reqwest::Method::PUT | reqwest::Method::DELETE
        );
        let response = match (self.http.execute(request).await, again) {
            (Ok(response), _) => response,
            (Err(e), _) if (e.is_connect() || (twice && e.is_request())) && !others.is_empty() => {
                // Each replica's failure is the same kind; the last one is told.
                self.fail_over(others)
                    .await
                    .map_err(|last| transport(last.unwrap_or(e)))?
            }
            (Err(e), Some(again)) if e.is_request() || e.is_connect() => {
                self.http.execute(again).await.map_err(transport)?
            }
            (Err(e), _) => return Err(transport(e)),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: ErrorBody = response.json().await.unwrap_or_default();
        if body.reason == Some(Reason::Compacted) {
            return Err(ClientError::Compacted { url: url.into() });
        }
        Err(ClientError::Status {
            url: url.into(),
            status: status.as_u16(),
            message: if body.error.is_empty() {
                "no reason given".into()
            } else {
                body.error
            },
        })
    }

    /// `request` as it would go to each other replica, in order after the one it goes to
    /// (none for a body that cannot be sent twice, such as a streamed upload).
    fn others(&self, request: &reqwest::Request) -> Vec<(usize, reqwest::Request)> {
        let current = self.base();
        let url = request.url().as_str();
        let Some(path) = url.strip_prefix(current) else {
            return Vec::new();
        };
        let at = self.answering.load(Ordering::Relaxed);
        (1..self.bases.len())
            .map(|step| (at + step) % self.bases.len())
            .filter_map(|i| {
                let mut other = request.try_clone()?;
                *other.url_mut() = format!("{}{path}", self.bases[i]).parse().ok()?;
                Some((i, other))
            })
            .collect()
    }

    /// Sends each of `others` in turn until one connects; that replica is asked first
    /// from then on. Err: the last failure (None when there was no other replica).
    async fn fail_over(
        &self,
        others: Vec<(usize, reqwest::Request)>,
    ) -> Result<reqwest::Response, Option<reqwest::Error>> {
        let mut last = None;
        for (i, request) in others {
            match self.http.execute(request).await {
                Ok(response) => {
                    self.answering.store(i, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ClientError> {
        let response = self.respond(request, url).await?;
        response
            .json()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.into(),
                source,
            })
    }

    /// Registers this server (with the join token).
    pub async fn join(&self, request: &JoinRequest) -> Result<JoinResponse, ClientError> {
        let url = format!("{}/v1/join", self.base());
        self.send(self.http.post(&url).json(request), &url).await
    }

    /// Every server (admin).
    pub async fn servers(&self) -> Result<Vec<Server>, ClientError> {
        let url = format!("{}/v1/servers", self.base());
        self.send(self.http.get(&url), &url).await
    }

    /// Removes a server and revokes its agent token (admin).
    pub async fn remove_server(&self, name: &str) -> Result<Server, ClientError> {
        let url = format!("{}/v1/servers/{name}", self.base());
        self.send(self.http.delete(&url), &url).await
    }

    /// Asks server `name`'s agent for a new WireGuard keypair (admin); returns the record
    /// with its `key_requested` bumped.
    pub async fn rotate_key(&self, name: &str) -> Result<Server, ClientError> {
        let url = format!("{}/v1/servers/{name}/rotate-key", self.base());
        self.send(self.http.post(&url), &url).await
    }

    /// Publishes this server's new WireGuard public key for rotation `generation` (the
    /// server's own agent).
    pub async fn publish_key(
        &self,
        name: &str,
        update: &crate::types::KeyUpdate,
    ) -> Result<Server, ClientError> {
        let url = format!("{}/v1/servers/{name}/wireguard-key", self.base());
        self.send(self.http.put(&url).json(update), &url).await
    }

    /// Uploads a source archive (tar.gz, service.yml at its root) as the next generation of
    /// `stack` (admin).
    pub async fn deploy(
        &self,
        stack: &str,
        archive: Vec<u8>,
    ) -> Result<DeployResponse, ClientError> {
        let url = format!("{}/v1/stacks/{stack}/deploy", self.base());
        let request = self
            .http
            .post(&url)
            .header("content-type", "application/gzip")
            .body(archive);
        self.send(request, &url).await
    }

    /// Deploys the generation that served before again; it serves once healthy (admin).
    pub async fn rollback(&self, stack: &str) -> Result<Generation, ClientError> {
        let url = format!("{}/v1/stacks/{stack}/rollback", self.base());
        self.send(self.http.post(&url), &url).await
    }

    /// A stack's variables (admin).
    pub async fn variables(
        &self,
        stack: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
        let url = format!("{}/v1/stacks/{stack}/variables", self.base());
        self.send(self.http.get(&url), &url).await
    }

    /// Sets and removes stack variables in one change; returns them all (admin).
    pub async fn change_variables(
        &self,
        stack: &str,
        change: &VariablesChange,
    ) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
        let url = format!("{}/v1/stacks/{stack}/variables", self.base());
        self.send(self.http.put(&url).json(change), &url).await
    }

    /// Where a stack's datasources are (admin).
    pub async fn datasources(
        &self,
        stack: &str,
    ) -> Result<std::collections::BTreeMap<String, Vec<std::net::Ipv4Addr>>, ClientError> {
        let url = format!("{}/v1/stacks/{stack}/datasources", self.base());
        self.send(self.http.get(&url), &url).await
    }

    /// Sets and removes stack datasources in one change; returns them all (admin).
    pub async fn change_datasources(
        &self,
        stack: &str,
        change: &DatasourcesChange,
    ) -> Result<std::collections::BTreeMap<String, Vec<std::net::Ipv4Addr>>, ClientError> {
        let url = format!("{}/v1/stacks/{stack}/datasources", self.base());
        self.send(self.http.put(&url).json(change), &url).await
    }

    /// A stack's TLS certificates: name to the hosts each serves (admin).
    pub async fn certificates(
        &self,
        stack: &str,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, ClientError> {
        let url = format!("{}/v1/stacks/{stack}/certificates", self.base());
        self.send(self.http.get(&url), &url).await
    }

    /// Stores certificate `name` of a stack, replacing one of that name (admin).
    pub async fn put_certificate(
        &self,
        stack: &str,
        name: &str,
        certificate: &crate::types::TlsCertificate,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, ClientError> {
        let url = format!("{}/v1/stacks/{stack}/certificates/{name}", self.base());
        self.send(self.http.put(&url).json(certificate), &url).await
    }

    /// Removes certificate `name` of a stack (admin).
    pub async fn delete_certificate(
        &self,
        stack: &str,
        name: &str,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, ClientError> {
        let url = format!("{}/v1/stacks/{stack}/certificates/{name}", self.base());
        self.send(self.http.delete(&url), &url).await
    }

    /// Runs `count` containers of a service of the serving generation, in place (admin).
    pub async fn scale(
        &self,
        stack: &str,
        service: &str,
        count: u32,
    ) -> Result<ScaleResponse, ClientError> {
        let url = format!("{}/v1/stacks/{stack}/services/{service}/scale", self.base());
        self.send(self.http.post(&url).json(&ScaleRequest { count }), &url)
            .await
    }

    /// The replica's health: its store's backend, revision and members (anyone).
    pub async fn health(&self) -> Result<crate::types::Health, ClientError> {
        let url = format!("{}/v1/health", self.base());
        self.send(self.http.get(&url), &url).await
    }

    /// Every stack (admin).
    pub async fn stacks(&self) -> Result<Vec<Stack>, ClientError> {
        let url = format!("{}/v1/stacks", self.base());
        self.send(self.http.get(&url), &url).await
    }

    /// A stack's generations, oldest first (admin).
    pub async fn generations(&self, stack: &str) -> Result<Vec<Generation>, ClientError> {
        let url = format!("{}/v1/stacks/{stack}/generations", self.base());
        self.send(self.http.get(&url), &url).await
    }

    /// A source archive by its hex digest.
    pub async fn source(&self, digest: &str) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}/v1/sources/{digest}", self.base());
        let response = self.respond(self.http.get(&url), &url).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        Ok(bytes.to_vec())
    }

    /// Reports this server's state of one generation (agent).
    pub async fn report_status(
        &self,
        server: &str,
        stack: &str,
        generation: u64,
        report: &StatusReport,
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/v1/status/{server}/{stack}/{generation}", self.base());
        self.send(self.http.put(&url).json(report), &url).await
    }

    /// An agent's progress on its server's share of a generation.
    pub async fn report_progress(
        &self,
        server: &str,
        stack: &str,
        generation: u64,
        report: &ProgressReport,
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/v1/progress/{server}/{stack}/{generation}", self.base());
        self.send(self.http.put(&url).json(report), &url).await
    }

    /// An agent's list of every ferry container on its server, replacing the last one.
    pub async fn report_containers(
        &self,
        server: &str,
        containers: &[ContainerReport],
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/v1/containers/{server}", self.base());
        self.send(self.http.put(&url).json(containers), &url).await
    }

    /// This server's heartbeat (an agent, for its own server).
    pub async fn heartbeat(
        &self,
        server: &str,
        heartbeat: &crate::heartbeat::Heartbeat,
    ) -> Result<(), ClientError> {
        let url = format!("{}/v1/heartbeat/{server}", self.base());
        let _: serde_json::Value = self.send(self.http.put(&url).json(heartbeat), &url).await?;
        Ok(())
    }

    /// Every server with its last contact and heartbeat (admin).
    pub async fn servers_status(&self) -> Result<Vec<crate::heartbeat::ServerStatus>, ClientError> {
        let url = format!("{}/v1/servers/status", self.base());
        self.send(self.http.get(&url), &url).await
    }

    /// Every server's last container report (admin).
    pub async fn containers(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Vec<ContainerReport>>, ClientError> {
        let url = format!("{}/v1/containers", self.base());
        self.send(self.http.get(&url), &url).await
    }

    /// Asks `server`'s agent to act on a container; waits for its answer (admin).
    pub async fn container_action(
        &self,
        server: &str,
        container: &str,
        kind: &ActionKind,
    ) -> Result<ActionResult, ClientError> {
        let url = format!("{}/v1/containers/{server}/{container}/actions", self.base());
        self.send(self.http.post(&url).json(kind), &url).await
    }

    /// An agent's answer to action `id`.
    pub async fn answer_action(
        &self,
        server: &str,
        id: &str,
        result: &ActionResult,
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/v1/results/{server}/{id}", self.base());
        self.send(self.http.put(&url).json(result), &url).await
    }

    /// The keys under `prefix`, and their revision.
    pub async fn list(&self, prefix: &str) -> Result<ListResponse, ClientError> {
        let url = format!("{}/v1/list", self.base());
        self.send(self.http.get(&url).query(&[("prefix", prefix)]), &url)
            .await
    }

    /// The changes under `prefix` after `after`, batch by batch, until the stream ends.
    pub async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<impl Stream<Item = Result<WatchLine, ClientError>> + use<>, ClientError> {
        self.watch_listed(prefix, after, "").await
    }

    /// [`watch`](Self::watch) resuming a list of store `store` ([`ListResponse::store`]):
    /// a central on another store (migrated since) ends it with
    /// [`ClientError::Compacted`], list again.
    pub async fn watch_listed(
        &self,
        prefix: &str,
        after: Revision,
        store: &str,
    ) -> Result<impl Stream<Item = Result<WatchLine, ClientError>> + use<>, ClientError> {
        let url = format!("{}/v1/watch", self.base());
        let after = after.to_string();
        let mut query = vec![("prefix", prefix), ("after", after.as_str())];
        if !store.is_empty() {
            query.push(("store", store));
        }
        let request = self.http.get(&url).query(&query);
        let response = self.respond(request, &url).await?;
        let mut buffer = Vec::new();
        let stream_url = url.clone();
        let bytes = response
            .bytes_stream()
            .map_err(move |source| ClientError::Transport {
                url: stream_url.clone(),
                source,
            });
        Ok(bytes
            .map(move |chunk| -> Result<Vec<WatchLine>, ClientError> {
                let chunk: bytes::Bytes = chunk?;
                buffer.extend_from_slice(&chunk);
                let mut lines = Vec::new();
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let parsed: WatchLine =
                        serde_json::from_slice(&line).map_err(|e| ClientError::WatchEnded {
                            url: url.clone(),
                            message: format!("unreadable line: {e}"),
                        })?;
                    if parsed.reason == Some(Reason::Compacted) {
                        return Err(ClientError::Compacted { url: url.clone() });
                    }
                    if let Some(message) = parsed.error {
                        return Err(ClientError::WatchEnded {
                            url: url.clone(),
                            message,
                        });
                    }
                    lines.push(parsed);
                }
                Ok(lines)
            })
            .flat_map(|batch| {
                futures_util::stream::iter(match batch {
                    Ok(lines) => lines.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(e) => vec![Err(e)],
                })
            }))
    }
}

fn verifier_for(
    ca: CertificateDer<'static>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))
}

fn pem_encode(der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Accepts central only through a CA with the expected fingerprint.
#[derive(Debug)]
struct PinnedCa {
    expected: String,
    provider: Arc<CryptoProvider>,
    seen: Arc<Mutex<Option<CertificateDer<'static>>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.expected)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "central presented no CA with fingerprint {}: wrong central, or wrong fingerprint",
                    self.expected
                ))
            })?
            .clone()
            .into_owned();
        verifier_for(ca.clone(), &self.provider)?.verify_server_cert(
            end_entity,
            &[],
            server_name,
            ocsp_response,
            now,
        )?;
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(ca);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
