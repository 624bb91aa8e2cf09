//! `ferry servers ...`: the servers that joined, as their agents last told central.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Subcommand;
use ferry_api::heartbeat::{ServerStatus, WireguardStatus};

use crate::{Output, login, table};

#[derive(Subcommand)]
pub enum Command {
    /// Every server: its subnet and WireGuard endpoint, when central last heard from it
    /// ("unreachable since ..." once it missed three heartbeats), its agent's version,
    /// its WireGuard backend and link MTU, its key (how many rotations, and one asked but
    /// not made yet), each peer's last handshake and bytes, its containers, and the path
    /// its `tcp:`/`udp:` ports take (kernel, or the userspace relay and why).
    List(Output),
    /// Remove a server: its subnet is released and its agent's token revoked.
    Remove {
        /// The server's name.
        name: String,
        #[command(flatten)]
        output: Output,
    },
    /// Give a server a new WireGuard keypair: its agent makes it locally (the private key
    /// never leaves the server) and publishes the public half; the other servers switch
    /// on their next sync. Waits until the agent has published it.
    RotateKey {
        /// The server's name.
        name: String,
        /// How long to wait for the agent, seconds; the request stands after that and
        /// is carried out when the agent next runs.
        #[arg(long, default_value_t = 60)]
        wait: u64,
        #[command(flatten)]
        output: Output,
    },
}

/// Runs one `ferry servers` command.
pub async fn run(command: Command) -> Result<()> {
    let client = login::client()?;
    match command {
        Command::List(output) => {
            let servers = client.servers_status().await?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&servers)?);
            } else {
                print!("{}", render(&servers, now_unix()));
            }
            Ok(())
        }
        Command::Remove { name, output } => {
            let removed = client.remove_server(&name).await?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&removed)?);
            } else {
                println!(
                    "removed {}: subnet 10.66.{}.0/24 released, its agent token revoked",
                    removed.name, removed.subnet_index
                );
            }
            Ok(())
        }
        Command::RotateKey { name, wait, output } => {
            let asked = client.rotate_key(&name).await?;
            let rotation = asked.key_requested;
            if !output.json {
                println!("asked {name} for key rotation {rotation}; waiting for its agent");
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
            loop {
                let now = client
                    .servers()
                    .await?
                    .into_iter()
                    .find(|s| s.name == name)
                    .ok_or_else(|| anyhow::anyhow!("server {name} was removed meanwhile"))?;
                if now.key_generation >= rotation {
                    if output.json {
                        println!("{}", serde_json::to_string_pretty(&now)?);
                    } else {
                        println!(
                            "{name} now has WireGuard key {} (rotation {}); the other servers \
                             switch to it on their next sync",
                            now.wireguard_public_key, now.key_generation
                        );
                    }
                    return Ok(());
                }
                if std::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "{name}'s agent has not published a new key within {wait} s; the request \
                         stands and is carried out when the agent runs (`ferry servers list` \
                         shows when central last heard from it)"
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The table of `servers` as of `now` (Unix seconds).
fn render(servers: &[ServerStatus], now: u64) -> String {
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            let beat = s.heartbeat.as_ref();
            let contact = match s.last_contact_unix {
                None => "not since central started".to_string(),
                Some(at) if s.unreachable_at(now) => {
                    format!("unreachable since {} ({} ago)", clock(at), ago(now, at))
                }
                Some(at) => format!("{} ago", ago(now, at)),
            };
            vec![
                s.server.name.clone(),
                format!("10.66.{}.0/24", s.server.subnet_index),
                s.server.wireguard_endpoint.to_string(),
                contact,
                beat.map_or("-".into(), |b| b.version.clone()),
                beat.and_then(|b| b.wireguard.as_ref())
                    .map_or("-".into(), |w| match w.mtu {
                        Some(mtu) => format!("{} MTU {mtu}", w.backend),
                        None => w.backend.clone(),
                    }),
                key(&s.server),
                beat.and_then(|b| b.wireguard.as_ref())
                    .map_or("-".into(), |w| peers(w, servers, now)),
                beat.and_then(|b| b.containers_running)
                    .map_or("-".into(), |n| n.to_string()),
                beat.and_then(|b| b.l4_path.clone())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table::render(
        &[
            "NAME",
            "SUBNET",
            "ENDPOINT",
            "LAST CONTACT",
            "VERSION",
            "WIREGUARD",
            "KEY",
            "PEERS",
            "CONTAINERS",
            "L4",
        ],
        &rows,
    )
}

/// `initial`, `rotation 2`, or `rotation 2, rotation 3 asked` while the agent has not
/// published the key `ferry servers rotate-key` asked for.
fn key(server: &ferry_api::types::Server) -> String {
    let now = match server.key_generation {
        0 => "initial".to_string(),
        n => format!("rotation {n}"),
    };
    if server.key_requested > server.key_generation {
        format!("{now}, rotation {} asked", server.key_requested)
    } else {
        now
    }
}

/// `two: handshake 5s ago, 1.2 KiB in, 3.4 KiB out; three: no handshake`.
fn peers(wireguard: &WireguardStatus, servers: &[ServerStatus], now: u64) -> String {
    if wireguard.peers.is_empty() {
        return "none".into();
    }
    wireguard
        .peers
        .iter()
        .map(|p| {
            let name = servers
                .iter()
                .find(|s| s.server.wireguard_public_key == p.public_key)
                .map_or_else(
                    || format!("{}…", &p.public_key[..p.public_key.len().min(8)]),
                    |s| s.server.name.clone(),
                );
            match p.last_handshake_unix {
                Some(at) => format!(
                    "{name}: handshake {} ago, {} in, {} out",
                    ago(now, at),
                    bytes(p.rx_bytes),
                    bytes(p.tx_bytes)
                ),
                None => format!("{name}: no handshake"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `3s`, `4m12s`, `2h5m`.
fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

/// `20:01:02 UTC` (the date too when not today).
fn clock(unix: u64) -> String {
    let (h, m, s) = (unix / 3600 % 24, unix / 60 % 60, unix % 60);
    let days_ago = now_unix() / 86_400 - unix / 86_400;
    match days_ago {
        0 => format!("{h:02}:{m:02}:{s:02} UTC"),
        n => format!("{h:02}:{m:02}:{s:02} UTC, {n} days ago"),
    }
}

/// `512 B`, `1.2 KiB`, `3.4 MiB`, `5.6 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use ferry_api::{
        heartbeat::{Heartbeat, PeerStatus},
        types::Server,
    };

    use super::*;

    fn status(
        name: &str,
        key: &str,
        contact: Option<u64>,
        beat: Option<Heartbeat>,
    ) -> ServerStatus {
        ServerStatus {
            server: Server {
                name: name.into(),
                subnet_index: 1,
                wireguard_public_key: key.into(),
                wireguard_endpoint: "192.0.2.1:51820".parse().expect("addr"),
                memory_bytes: None,
                key_requested: 0,
                key_generation: 0,
            },
            last_contact_unix: contact,
            heartbeat: beat,
        }
    }

    #[test]
    fn a_row_says_when_central_heard_from_the_server_and_how_its_mesh_is() {
        let now = 1_000_000;
        let beat = Heartbeat {
            version: "0.1.0".into(),
            interval_secs: 10,
            wireguard: Some(WireguardStatus {
                backend: "userspace".into(),
                mtu: Some(1340),
                peers: vec![
                    PeerStatus {
                        public_key: "KEYTWO".into(),
                        last_handshake_unix: Some(now - 5),
                        rx_bytes: 1300,
                        tx_bytes: 200,
                    },
                    PeerStatus {
                        public_key: "KEYTHREE".into(),
                        last_handshake_unix: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    },
                ],
            }),
            containers_running: Some(3),
            l4_path: Some("relay (no container bridge yet)".into()),
        };
        let mut servers = [
            status("one", "KEYONE", Some(now - 4), Some(beat.clone())),
            status("two", "KEYTWO", Some(now - 95), Some(beat)),
            status("three", "KEYTHREE", None, None),
        ];
        // Two was rotated once and asked for a second rotation its agent has not made.
        servers[1].server.key_generation = 1;
        servers[1].server.key_requested = 2;
        let table = render(&servers, now);
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_default()
                .to_string()
        };
        assert!(row("one").contains("4s ago"), "{table}");
        assert!(
            row("one")
                .contains("two: handshake 5s ago, 1.3 KiB in, 200 B out; three: no handshake"),
            "{table}"
        );
        assert!(
            row("one").contains("userspace MTU 1340 ")
                && row("one").contains(" initial ")
                && row("one").contains(" 3"),
            "{table}"
        );
        assert!(
            row("two").contains(" rotation 1, rotation 2 asked "),
            "{table}"
        );
        assert!(
            row("one").contains("relay (no container bridge yet)"),
            "{table}"
        );
        assert!(
            row("two").contains("unreachable since") && row("two").contains("(1m35s ago)"),
            "{table}"
        );
        assert!(
            row("three").contains("not since central started"),
            "{table}"
        );
    }
}
