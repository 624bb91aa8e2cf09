//! The request and response bodies the API and its clients share.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Revision;

/// `POST /v1/join`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The server's name.
    pub name: String,
    /// Its WireGuard public key, base64.
    pub wireguard_public_key: String,
    /// Where its WireGuard listens, as the other servers reach it.
    pub wireguard_endpoint: std::net::SocketAddr,
    /// Its memory in bytes (`MemTotal`), which placement keeps containers' memory limits
    /// within; None: unknown, no limit enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// What a joined server gets back.
#[derive(Debug, Deserialize, Serialize)]
pub struct JoinResponse {
    /// The server as registered.
    pub server: Server,
    /// Its ContainerNet subnet, e.g. `10.66.3.0/24`.
    pub subnet: String,
    /// Its own credential; shown once.
    pub agent_token: String,
}

/// `GET /v1/list`.
#[derive(Debug, Deserialize, Serialize)]
pub struct ListResponse {
    /// The revision the items are as of; watch from here.
    pub revision: Revision,
    /// The store's identity; a watch that gives it is refused (list again) by a central
    /// on another store, such as one migrated to etcd since.
    #[serde(default)]
    pub store: String,
    /// The keys and values.
    pub items: Vec<Item>,
}

/// One key of a list.
#[derive(Debug, Deserialize, Serialize)]
pub struct Item {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: Value,
    /// Its last change.
    pub mod_revision: Revision,
}

/// One line of `GET /v1/watch`.
#[derive(Debug, Deserialize, Serialize)]
pub struct WatchLine {
    /// Everything up to this revision has been sent; resume from here.
    #[serde(default)]
    pub revision: Revision,
    /// The changes.
    #[serde(default)]
    pub events: Vec<WatchEvent>,
    /// Set on the last line when the watch ends with an error.
    #[serde(default)]
    pub error: Option<String>,
    /// Why, when a client should act on it: see [`Reason`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// An error body: `{"error": "...", "reason": "..."}`, the reason present only when a
/// client should act on it rather than show the message.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    #[serde(default)]
    pub error: String,
    /// What went wrong, for programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// The machine-readable reasons central gives with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The revision a watch asked to start after is no longer in central's history (HTTP
    /// 410 before the stream, or the last line of one): list the prefix again and watch
    /// from the revision the list returns.
    Compacted,
    /// A reason this client does not know (from a newer central).
    #[serde(other)]
    Unknown,
}

/// One change in a watch line.
#[derive(Debug, Deserialize, Serialize)]
pub struct WatchEvent {
    /// Its revision.
    pub revision: Revision,
    /// The key.
    pub key: String,
    /// The new value, or null when deleted.
    pub value: Option<Value>,
}

/// A server as central knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// Unique name.
    pub name: String,
    /// Third octet of its `/24` in the container network.
    pub subnet_index: u8,
    /// Its WireGuard public key (base64); the private key never leaves the server.
    pub wireguard_public_key: String,
    /// Where its WireGuard listens.
    pub wireguard_endpoint: std::net::SocketAddr,
    /// Its memory in bytes, as it said when it joined; None: unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Key rotations asked of it (`ferry servers rotate-key`): while this is above
    /// `key_generation`, its agent makes a new keypair and publishes the public half.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key_requested: u64,
    /// The rotation its current public key answers (0: the key it joined with).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key_generation: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `PUT /v1/servers/{name}/wireguard-key`: an agent's new public key, for the rotation it
/// answers.
#[derive(Debug, Deserialize, Serialize)]
pub struct KeyUpdate {
    /// The new WireGuard public key, base64 of 32 bytes.
    pub wireguard_public_key: String,
    /// The `key_requested` it answers.
    pub generation: u64,
}

/// What `POST /v1/stacks/{stack}/deploy` made.
#[derive(Debug, Deserialize, Serialize)]
pub struct DeployResponse {
    /// The stack.
    pub stack: String,
    /// The new generation's number.
    pub generation: u64,
    /// `sha256:` of the uploaded source archive.
    pub source: String,
    /// Warnings about service.yml, located.
    pub warnings: Vec<String>,
}

/// Largest source archive a deploy may upload.
pub const MAX_SOURCE_BYTES: u64 = 100 * 1024 * 1024;

/// A stack's pointers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stack {
    /// The stack's name.
    pub name: String,
    /// The newest generation made (0: none yet).
    pub latest: u64,
    /// The generation that serves, if any.
    pub serving: Option<u64>,
    /// The generation that served before it, for `rollback`.
    pub previous: Option<u64>,
}

/// Where a generation is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Images build, containers start and are checked.
    Deploying,
    /// Every container passed its health check; ready to serve.
    Healthy,
    /// A check failed; this generation never serves.
    Failed {
        /// What failed, for the operator.
        reason: String,
    },
    /// New connections and requests go here.
    Serving,
    /// Served before; drained. Rollback can serve it again.
    Retired,
}

/// One deploy of a stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// Its stack.
    pub stack: String,
    /// N.
    pub number: u64,
    /// The services as service.yml declared them.
    pub services: std::collections::BTreeMap<String, crate::servicefile::Service>,
    /// SHA-256 of the uploaded source, hex.
    pub source_digest: String,
    /// Where it is.
    pub phase: Phase,
}

/// What one server must run for one generation: `desired/<server>/<stack>/<N>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The stack.
    pub stack: String,
    /// The generation.
    pub generation: u64,
    /// `GET /v1/sources/<digest>` fetches the source.
    pub source_digest: String,
    /// The services this server runs containers of, with their specs.
    pub services: std::collections::BTreeMap<String, crate::servicefile::Service>,
    /// How many containers of each service run here, numbered `0..count` (their
    /// `ferry.index` label); see [`Assignment::count`].
    #[serde(default)]
    pub counts: std::collections::BTreeMap<String, u32>,
    /// How long, in milliseconds, a container that a scale-down removed keeps answering
    /// what it was sent before it leaves rotation and stops.
    #[serde(default)]
    pub drain_ms: u64,
    /// Whether the containers should run, or be drained and stopped.
    #[serde(default)]
    pub state: Desired,
    /// Services (with `restart_on_deploy: false` and an unchanged spec) whose running
    /// container is kept instead of replaced: the generation that started it.
    #[serde(default)]
    pub carried: std::collections::BTreeMap<String, u64>,
    /// Services whose `deploy_command` this server runs for the generation: each on one
    /// server only (the first, by name, of those that run it), so it runs once per deploy.
    #[serde(default)]
    pub deploy_commands: std::collections::BTreeSet<String>,
    /// The npm registry this stack's builds use, from its variables.
    #[serde(default, skip_serializing_if = "NpmRegistry::is_empty")]
    pub npm: NpmRegistry,
}

impl Assignment {
    /// How many containers of `service` run here: its count, else one if the service is
    /// assigned at all (assignments written before counts ran one per server).
    pub fn count(&self, service: &str) -> u32 {
        match self.counts.get(service) {
            Some(n) => *n,
            None => u32::from(self.services.contains_key(service)),
        }
    }
}

/// The npm registry a stack's builds install from: the stack variables `NPM_REGISTRY` (a
/// mirror or a private registry; npm's own without it) and `NPM_TOKEN` (for private
/// packages), as Heroku's Node builds read them. Reaches only the agents that build the
/// stack; the token never enters an image (see the agent's build).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NpmRegistry {
    /// The registry's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// The token that reads its private packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl NpmRegistry {
    /// The stack variable naming the registry.
    pub const REGISTRY_VARIABLE: &str = "NPM_REGISTRY";
    /// The stack variable holding the token.
    pub const TOKEN_VARIABLE: &str = "NPM_TOKEN";

    /// Whether neither is set.
    pub fn is_empty(&self) -> bool {
        self.registry.is_none() && self.token.is_none()
    }
}

impl std::fmt::Debug for NpmRegistry {
    // The token stays out of every log line an assignment is printed in.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpmRegistry")
            .field("registry", &self.registry)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// What a server does with a generation's containers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Desired {
    /// Build, start, check and keep them running.
    #[default]
    Run,
    /// Let requests in flight finish for `drain_ms`, then run each service's
    /// `pre_stop_sequence`, stop with its `stop_grace`, and remove them.
    Stop {
        /// How long the containers keep running after they stopped getting new work.
        drain_ms: u64,
    },
}

/// One ferry container as its server's agent sees it: `containers/<server>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerReport {
    /// Docker's id.
    pub id: String,
    /// The stack.
    pub stack: String,
    /// The service.
    pub service: String,
    /// The generation it was started for.
    pub generation: u64,
    /// The generations this server runs it for now (more than its own when it was
    /// carried into later ones; none while it drains).
    #[serde(default)]
    pub serves: Vec<u64>,
    /// Its address on the container network.
    pub address: Option<std::net::Ipv4Addr>,
    /// Where it is in its life, as this server's agent sees it.
    pub state: ContainerState,
    /// Its cgroup v2 id (the directory's inode), which the data plane keys callers by.
    #[serde(default)]
    pub cgroup_id: Option<u64>,
}

/// A container's state in a report; on the wire, its lower-case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Started, its health check not passed yet: nothing leads to it.
    Starting,
    /// Passed its health check: in rotation.
    Running,
    /// Taken out by a scale-down: out of rotation, stops after the drain.
    Draining,
    /// Running but failing its health check: out of rotation.
    Unhealthy,
    /// Not running.
    Stopped,
}

impl ContainerState {
    /// The name on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Draining => "draining",
            Self::Unhealthy => "unhealthy",
            Self::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Most containers one server reports; a longer report is refused.
pub const MAX_CONTAINERS_PER_SERVER: usize = 4096;

/// A server's report on one generation: `PUT /v1/status/<server>/<stack>/<N>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Every container of the generation on this server passed its health check.
    pub healthy: bool,
    /// What failed, with the container and the tail of its log; empty when healthy.
    pub detail: String,
}

/// What a server's agent has to show of its work on one generation (build output, a
/// deploy_command's output), as `ferry deploy` prints it: `PUT /v1/progress/<server>/
/// <stack>/<N>`, kept at `progress/<server>/<stack>/<N>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressReport {
    /// The newest lines, oldest first: at most [`ProgressReport::MAX_LINES`], each at most
    /// [`ProgressReport::MAX_LINE`] bytes.
    pub lines: Vec<String>,
    /// How many lines there have been in all; the first of `lines` is line
    /// `total - lines.len()`, so a reader knows which it has printed.
    pub total: u64,
}

impl ProgressReport {
    /// Most lines one report keeps.
    pub const MAX_LINES: usize = 100;
    /// Longest line kept, in bytes.
    pub const MAX_LINE: usize = 1000;

    /// Whether the report keeps its bounds, and its count is consistent.
    pub fn is_bounded(&self) -> bool {
        self.lines.len() <= Self::MAX_LINES
            && self.lines.iter().all(|l| l.len() <= Self::MAX_LINE)
            && self.total >= self.lines.len() as u64
    }
}

/// A change to a stack's variables: `PUT /v1/stacks/<stack>/variables`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariablesChange {
    /// Variables to set (added or replaced).
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    /// Variables to remove.
    #[serde(default)]
    pub unset: Vec<String>,
}

/// A change to where a stack's datasources are: `PUT /v1/stacks/<stack>/datasources`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasourcesChange {
    /// Datasources to set (`redis` -> its addresses), added or replaced.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, Vec<std::net::Ipv4Addr>>,
    /// Datasources to remove.
    #[serde(default)]
    pub unset: Vec<String>,
}

/// What the operator asks of one container; its server's agent carries it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionKind {
    /// The last `lines` lines of its log (at most [`MAX_LOG_LINES`]).
    Logs {
        /// How many.
        lines: u32,
        /// Only lines written at or after this Unix time, in seconds (to follow a log).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<i64>,
        /// Each line starts with Docker's RFC 3339 timestamp and a space.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        timestamps: bool,
    },
    /// Run a command in it, without a terminal; its output and exit code come back.
    Exec {
        /// The program and its arguments.
        command: Vec<String>,
    },
    /// Stop it (SIGTERM, then SIGKILL after its stop_grace); it stays until the next deploy.
    Stop,
    /// Restart it in place.
    Restart,
}

/// Most log lines one `logs` action returns.
pub const MAX_LOG_LINES: u32 = 10_000;
/// Most bytes of output an action returns; the rest is cut, and says so.
pub const MAX_ACTION_OUTPUT: usize = 512 * 1024;

/// An action waiting for its agent: `actions/<server>/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Unique among the server's pending actions.
    pub id: String,
    /// The container's full id.
    pub container: String,
    /// What to do.
    pub kind: ActionKind,
}

/// What came of an action: `PUT /v1/results/<server>/<id>` from the agent, and the answer
/// to the operator's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionResult {
    /// Whether it did what was asked (for exec: the command exited 0).
    pub ok: bool,
    /// Log lines, command output, or what went wrong.
    pub output: String,
}

/// `POST /v1/stacks/<stack>/services/<service>/scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// How many containers of the service run in all, spread over the servers (within
    /// service.yml's `constraints.min_count` and `max_count`); 0 stops it.
    pub count: u32,
}

/// What a scale changed: the serving generation, in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleResponse {
    /// The stack.
    pub stack: String,
    /// The serving generation, now running `count` containers of the service.
    pub generation: u64,
    /// The service.
    pub service: String,
    /// Its containers in all.
    pub count: u32,
    /// Its containers per server (servers with none are left out).
    pub placement: std::collections::BTreeMap<String, u32>,
}

/// A TLS certificate the stack's HTTPS ports serve for the host names it lists (the
/// client's SNI picks it): `certificates/<stack>/<name>`. Automatic certificates (ACME)
/// will write the same entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsCertificate {
    /// Host names it serves: exact, or `*.` wildcards of one label.
    pub hosts: Vec<String>,
    /// The certificate chain, PEM, leaf first.
    pub chain_pem: String,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl TlsCertificate {
    /// The chain and key as rustls serves them; Err says which part is wrong (the chain or
    /// key is not PEM, or the key does not fit the certificate).
    pub fn certified_key(&self) -> Result<rustls::sign::CertifiedKey, String> {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("the certificate chain is not PEM: {e}"))?;
        if chain.is_empty() {
            return Err("the certificate file holds no certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("the key is not a PEM private key: {e}"))?;
        rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
            .map_err(|e| format!("the key does not fit the certificate: {e}"))
    }
}

/// `GET /v1/health`: what a probe or an operator reads of one central replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The store's current revision.
    pub revision: Revision,
    /// The store behind this replica.
    pub store: StoreHealth,
}

/// The state store as one replica sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// `sqlite` or `etcd`.
    pub backend: String,
    /// The current revision.
    pub revision: Revision,
    /// The etcd members, as the cluster lists them (empty for SQLite).
    #[serde(default)]
    pub members: Vec<MemberHealth>,
}

/// One etcd member as a replica sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberHealth {
    /// Its name (etcd's `--name`).
    pub name: String,
    /// Its first client URL.
    pub url: String,
    /// Whether it answered a status request in time.
    pub healthy: bool,
    /// Whether it is the raft leader.
    pub leader: bool,
    /// Why it is not healthy, as its client said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}
