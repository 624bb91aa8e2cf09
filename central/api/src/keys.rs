//! Every key of central's store, built and parsed here and nowhere else.
//!
//! Keys are `/`-separated paths whose first segment names what they hold, so that a
//! reader follows exactly one kind of thing by listing and watching its prefix, and the
//! token rules (who may read what) are prefix checks. Generation numbers are written with
//! ten digits, so that the store's key order is their numeric order.
//!
//! | prefix | one key holds | written by | read by |
//! |---|---|---|---|
//! | `servers/<server>` | a server as it joined | central (join, removal) | admin; every agent (its WireGuard peers) |
//! | `subnets/<index>` | which server owns a ContainerNet `/24` | central (join) | central |
//! | `desired/<server>/<stack>/<generation>` | what one server runs of one generation | central (deploy, scale, flip, rollback) | admin; that server's agent only |
//! | `status/<server>/<stack>/<generation>` | that server's report on it | the agent (through the API) | admin; central |
//! | `progress/<server>/<stack>/<generation>` | build and start progress lines | the agent (through the API) | admin (the CLI's deploy output) |
//! | `containers/<server>` | the ferry containers a server runs | the agent (through the API) | central (records) |
//! | `records/<stack>/<service>` | a service's discovery record | central (from container reports) | admin; every agent (DNS, service addresses, ingress) |
//! | `service-addresses/<address>` | which record holds a service address (`10.96.0.0/16`) | central (records) | central |
//! | `actions/<server>/<id>` | an operator action for one container | central (relaying the CLI) | admin; that server's agent only |
//! | `results/<server>/<id>` | the agent's answer to it | the agent (through the API) | central (relaying to the CLI) |
//! | `certificates/<stack>/<name>` | a TLS certificate and its key | central (the CLI) | admin; every agent (the ingress terminates TLS for every stack) |
//! | `stacks/<stack>` | a stack | central | admin |
//! | `generations/<stack>/<generation>` | one deploy of it | central | admin |
//! | `variables/<stack>`, `datasources/<stack>` | its environment and datasources | central (the CLI) | admin; resolved into assignments |
//! | `auth/tokens/<sha256>`, `auth/agents/<server>` | credentials, by digest | central | nobody through the API |
//! | `heartbeats/<server>` | a server's last heartbeat and when it arrived, on etcd only (any replica may have taken it; one central keeps them in memory) | central (from the agent's heartbeat) | admin (`servers status`) |
//! | `sources/<sha256>/<n>` | chunk `n` of an uploaded source archive, on etcd only (replicas share sources through the store; SQLite keeps them as files) | central (deploy) | central (serving `GET /v1/sources`); nobody through the list API |
//! | `auth/store-id` | this store's identity: a random id written by `init` (once per store) and anew by `migrate`, so a revision from another store's history is never resumed here | central | nobody through the API (lists carry it) |
//!
//! Agents read only what their server needs: the other servers, every record and
//! certificate (each server serves every stack), and their own assignments and actions;
//! another server's assignments, every report and every credential stay out of their reach.

use std::net::Ipv4Addr;

/// The base address of ContainerNet: server `n` gets `10.66.n.0/24`.
pub const CONTAINER_NET: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 0);

/// Servers as they joined.
pub const SERVERS: &str = "servers/";
/// Subnet ownership.
pub const SUBNETS: &str = "subnets/";
/// Assignments, by server.
pub const DESIRED: &str = "desired/";
/// Servers' reports, by server.
pub const STATUS: &str = "status/";
/// Servers' progress lines, by server.
pub const PROGRESS: &str = "progress/";
/// Servers' container lists.
pub const CONTAINERS: &str = "containers/";
/// Discovery records.
pub const RECORDS: &str = "records/";
/// Service addresses taken, by address.
pub const SERVICE_ADDRESSES: &str = "service-addresses/";
/// Stacks' variables.
pub const VARIABLES: &str = "variables/";
/// Stacks' datasources.
pub const DATASOURCES: &str = "datasources/";
/// Operator actions, by server.
pub const ACTIONS: &str = "actions/";
/// Answers to actions, by server.
pub const RESULTS: &str = "results/";
/// TLS certificates, by stack.
pub const CERTIFICATES: &str = "certificates/";
/// Stacks.
pub const STACKS: &str = "stacks/";
/// Generations, by stack.
pub const GENERATIONS: &str = "generations/";
/// Credentials; never served.
pub const AUTH: &str = "auth/";
/// Heartbeats, by server (etcd backend).
pub const HEARTBEATS: &str = "heartbeats/";
/// Source archives in chunks (etcd backend); served whole by `GET /v1/sources`, never
/// listed.
pub const SOURCES: &str = "sources/";
/// The store's identity (a random id): written with the first tokens by `ferry-central
/// init`, so a second init over the same etcd is refused, and anew by `migrate`, so a
/// follower that listed another store lists again rather than resume a revision of a
/// different history.
pub const STORE_ID: &str = "auth/store-id";

/// `servers/<name>`.
pub fn server(name: &str) -> String {
    format!("{SERVERS}{name}")
}

/// The server a `servers/<name>` key names.
pub fn server_of(key: &str) -> Option<&str> {
    key.strip_prefix(SERVERS)
}

/// `subnets/<index>`.
pub fn subnet(index: u8) -> String {
    format!("{SUBNETS}{index}")
}

/// The index a `subnets/<index>` key names.
pub fn subnet_of(key: &str) -> Option<u8> {
    key.strip_prefix(SUBNETS)?.parse().ok()
}

/// `/<stack>/<generation>`: how the keys of one generation on any server end.
pub fn generation_suffix(stack: &str, generation: u64) -> String {
    format!("/{stack}/{generation:010}")
}

/// `desired/<server>/`: one server's assignments.
pub fn desired_of(server: &str) -> String {
    format!("{DESIRED}{server}/")
}

/// `desired/<server>/<stack>/<generation>`.
pub fn desired(server: &str, stack: &str, generation: u64) -> String {
    format!("{DESIRED}{server}{}", generation_suffix(stack, generation))
}

/// `status/<server>/<stack>/<generation>`.
pub fn status(server: &str, stack: &str, generation: u64) -> String {
    format!("{STATUS}{server}{}", generation_suffix(stack, generation))
}

/// `progress/<server>/<stack>/<generation>`.
pub fn progress(server: &str, stack: &str, generation: u64) -> String {
    format!("{PROGRESS}{server}{}", generation_suffix(stack, generation))
}

/// The (server, stack, generation) of a `desired/`, `status/` or `progress/` key under
/// `prefix`.
pub fn per_server_generation<'a>(prefix: &str, key: &'a str) -> Option<(&'a str, &'a str, u64)> {
    let mut parts = key.strip_prefix(prefix)?.split('/');
    let server = parts.next()?;
    let stack = parts.next()?;
    let generation = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some((server, stack, generation))
}

/// `containers/<server>`.
pub fn containers(server: &str) -> String {
    format!("{CONTAINERS}{server}")
}

/// The server a `containers/<server>` key names.
pub fn containers_of(key: &str) -> Option<&str> {
    key.strip_prefix(CONTAINERS)
}

/// `records/<stack>/`: one stack's records.
pub fn records_of(stack: &str) -> String {
    format!("{RECORDS}{stack}/")
}

/// `records/<stack>/<service>`.
pub fn record(stack: &str, service: &str) -> String {
    format!("{RECORDS}{stack}/{service}")
}

/// The (stack, service) a `records/<stack>/<service>` key names.
pub fn record_of(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(RECORDS)?.split_once('/')
}

/// `service-addresses/<address>`.
pub fn service_address(address: Ipv4Addr) -> String {
    format!("{SERVICE_ADDRESSES}{address}")
}

/// `actions/<server>/`: one server's actions.
pub fn actions_of(server: &str) -> String {
    format!("{ACTIONS}{server}/")
}

/// `actions/<server>/<id>`.
pub fn action(server: &str, id: &str) -> String {
    format!("{ACTIONS}{server}/{id}")
}

/// `results/<server>/<id>`.
pub fn result(server: &str, id: &str) -> String {
    format!("{RESULTS}{server}/{id}")
}

/// `certificates/<stack>/`: one stack's certificates.
pub fn certificates_of(stack: &str) -> String {
    format!("{CERTIFICATES}{stack}/")
}

/// `certificates/<stack>/<name>`.
pub fn certificate(stack: &str, name: &str) -> String {
    format!("{}{name}", certificates_of(stack))
}

/// `heartbeats/<server>`.
pub fn heartbeat(server: &str) -> String {
    format!("{HEARTBEATS}{server}")
}

/// `sources/<digest>/`: one archive's chunks.
pub fn source_chunks(digest: &str) -> String {
    format!("{SOURCES}{digest}/")
}

/// `sources/<digest>/<n>`: chunk `n` (six digits, so key order is chunk order).
pub fn source_chunk(digest: &str, n: usize) -> String {
    format!("{}{n:06}", source_chunks(digest))
}

/// `stacks/<stack>`.
pub fn stack(name: &str) -> String {
    format!("{STACKS}{name}")
}

/// `generations/<stack>/`: one stack's generations.
pub fn generations_of(stack: &str) -> String {
    format!("{GENERATIONS}{stack}/")
}

/// `generations/<stack>/<generation>`.
pub fn generation(stack: &str, number: u64) -> String {
    format!("{GENERATIONS}{stack}/{number:010}")
}

/// `variables/<stack>`.
pub fn variables(stack: &str) -> String {
    format!("{VARIABLES}{stack}")
}

/// `datasources/<stack>`.
pub fn datasources(stack: &str) -> String {
    format!("{DATASOURCES}{stack}")
}

/// `auth/tokens/<sha256 hex>`.
pub fn token(digest_hex: &str) -> String {
    format!("{AUTH}tokens/{digest_hex}")
}

/// `auth/agents/<server>`: the digest of that server's agent token.
pub fn agent_token(server: &str) -> String {
    format!("{AUTH}agents/{server}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_into_what_built_them() {
        assert_eq!(
            per_server_generation(DESIRED, &desired("one", "shop", 12)),
            Some(("one", "shop", 12))
        );
        assert_eq!(desired("one", "shop", 12), "desired/one/shop/0000000012");
        assert_eq!(
            per_server_generation(STATUS, &status("a", "b", 3)),
            Some(("a", "b", 3))
        );
        assert_eq!(per_server_generation(DESIRED, "desired/one/shop"), None);
        assert_eq!(per_server_generation(DESIRED, "desired/one/shop/x"), None);
        assert_eq!(per_server_generation(DESIRED, "desired/a/b/1/extra"), None);
        assert_eq!(record_of(&record("shop", "web")), Some(("shop", "web")));
        assert_eq!(subnet_of(&subnet(7)), Some(7));
        assert_eq!(server_of(&server("one")), Some("one"));
        assert_eq!(containers_of(&containers("one")), Some("one"));
        assert!(desired("one", "s", 1).starts_with(&desired_of("one")));
        assert!(action("one", "x").starts_with(&actions_of("one")));
        assert!(generation("s", 2).starts_with(&generations_of("s")));
        // Ten digits: key order is numeric order.
        assert!(generation("s", 9) < generation("s", 10));
    }
}
