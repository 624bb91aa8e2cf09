//! What a service file means, once read: the typed stack and its services.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

/// A stack as its `service.yml` declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackFile {
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Datasources the stack declares (`databases:`).
    pub databases: Vec<Database>,
}

/// One service.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Service {
    /// Directory of the source to build, relative to the stack's source root.
    pub build_root: Option<String>,
    /// Dockerfile, relative to `build_root`.
    pub dockerfile_path: Option<String>,
    /// An image to run instead of building.
    pub image: Option<String>,
    /// The command the container runs.
    pub command: Option<String>,
    /// The build step of a service without a Dockerfile (Cloud 66's `build_command`); the
    /// `build` script of package.json when absent.
    #[serde(default)]
    pub build_command: Option<String>,
    /// Run once per deploy, in a container of the new image with the service's
    /// environment, before the new generation takes traffic (Cloud 66's `deploy_command`;
    /// database migrations are the use). Its failure fails the generation.
    #[serde(default)]
    pub deploy_command: Option<String>,
    /// Published ports.
    pub ports: Vec<Port>,
    /// Host names this service answers on its HTTP ports (exact or `*.` wildcard).
    pub traffic_matches: Vec<String>,
    /// How a new container is judged ready.
    pub health: Health,
    /// Environment of the container.
    pub env_vars: BTreeMap<String, EnvValue>,
    /// Volume mounts.
    pub volumes: Vec<Volume>,
    /// Services that must be running first.
    pub requires: Vec<String>,
    /// Time between TERM and KILL.
    pub stop_grace: Option<Duration>,
    /// Signals and waits before the container is stopped.
    pub pre_stop_sequence: Vec<StopStep>,
    /// Whether a deploy restarts this service's containers (Cloud 66's default: true).
    pub restart_on_deploy: bool,
    /// Whether `<service>.cloud66.local` answers with the caller's generation.
    pub dns_behaviour: DnsBehaviour,
    /// How callers are spread over containers.
    pub load_balancing: LoadBalancing,
    /// Placement limits.
    pub constraints: Constraints,
    /// Free-form labels.
    pub tags: BTreeMap<String, String>,
}

/// One published port, in Cloud 66's sense: a container port and the host ports that
/// reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Port {
    /// Port inside the container.
    pub container: u16,
    /// Host port serving plain HTTP.
    pub http: Option<u16>,
    /// Host port serving HTTPS.
    pub https: Option<u16>,
    /// Host port relayed as raw TCP.
    pub tcp: Option<u16>,
    /// Host port relayed as UDP.
    pub udp: Option<u16>,
}

/// Readiness checking of new containers.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Health {
    /// ferry's default check: the container is running and its first port accepts TCP.
    #[default]
    Default,
    /// No check: a started container is ready.
    None,
    /// An HTTP(S) request that must answer with an accepted status in time.
    Check(HealthCheck),
}

/// An explicit health check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Path requested, e.g. `/healthz`.
    pub endpoint: String,
    /// `http` or `https`.
    pub protocol: String,
    /// How long a new container has to pass.
    pub timeout: Duration,
    /// Accepted status codes, as inclusive ranges.
    pub accept: Vec<(u16, u16)>,
}

/// An environment variable's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvValue {
    /// Used as written.
    Plain(String),
    /// `_env(NAME)`: the stack variable NAME, resolved at deploy.
    Stack(String),
}

/// A volume mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Host path or named volume.
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// One step of a pre-stop sequence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopStep {
    /// Wait this long.
    Wait(Duration),
    /// Send this signal (name without `SIG`).
    Signal(String),
}

/// Versioned or not, for service discovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnsBehaviour {
    /// Callers get the generation that matches their own.
    #[default]
    Versioned,
    /// Everyone gets the newest serving generation.
    NonVersioned,
}

/// Load balancing mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalancing {
    /// Each new connection to the next container.
    #[default]
    RoundRobin,
    /// A caller keeps its container.
    Sticky,
    /// Containers on the caller's server first.
    Closest,
}

/// Placement and resource limits.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Constraints {
    /// At least this many containers of the service (Cloud 66's `min_count`); also how
    /// many a new service starts with when it is more than one per server.
    pub min_count: Option<u32>,
    /// At most this many containers of the service.
    pub max_count: Option<u32>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in thousandths of a CPU.
    pub cpu_millis: Option<u32>,
}

/// A datasource type ferry can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    /// MySQL.
    Mysql,
    /// PostgreSQL.
    Postgresql,
    /// MongoDB.
    Mongodb,
    /// Redis.
    Redis,
}

impl Database {
    /// Every supported datasource, by its service.yml name.
    pub const ALL: [(&str, Database); 4] = [
        ("mysql", Database::Mysql),
        ("postgresql", Database::Postgresql),
        ("mongodb", Database::Mongodb),
        ("redis", Database::Redis),
    ];

    /// The name used in service.yml and in DNS (`mysql.cloud66.local`).
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, d)| *d == self)
            .map_or("", |(n, _)| n)
    }
}
