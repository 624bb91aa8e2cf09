//! `ferry-agent`: the privileged daemon on every server.
//!
//! # Layout
//! - [`containers`]: the Docker Engine the agent runs containers through.
//! - [`dataplane`]: load, attach and pin the eBPF programs; the typed API for their maps.
//! - [`discovery`]: central's service records and this server's callers: service addresses
//!   steered per caller generation.
//! - [`dns`]: the DNS server for `cloud66.local` and the forwarder for other names.
//! - [`flags_file`]: the agent's flags from `/etc/ferry/agent.toml`.
//! - [`handoff`]: listening sockets held by a keeper process across agent restarts.
//! - [`ingress`]: external traffic to the containers (so far: the request-head reader).
//! - [`membership`]: joining central; the credentials in the state directory.
//! - [`mesh`]: the WireGuard network between servers (rtnetlink and WireGuard verbs).
//! - [`workloads`]: this server's share of each generation: build, start, check, report.
//! - [`daemon`]: the long-running process: start the data plane, then wait for a signal.
//! - [`down`]: a stop meant as a stop: the keepers and wireguard-go a restart keeps, ended.

pub mod containers;
pub mod daemon;
pub mod dataplane;
pub mod discovery;
pub mod dns;
pub mod down;
pub mod flags_file;
pub mod handoff;
pub mod ingress;
pub mod membership;
pub mod mesh;
pub mod workloads;
