//! What a container listens on, read from its network namespace's `/proc/<pid>/net/tcp`
//! and `tcp6`: to tell a developer why a health check found nothing, when the app listens
//! on loopback only (Node 17 and later take `localhost` to mean `::1`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::Engine;

/// The TCP state of a listening socket in /proc/net/tcp.
const LISTEN: &str = "0A";

/// The listening sockets in the text of `/proc/<pid>/net/tcp` (or `tcp6`, `v6`).
pub fn listeners(text: &str, v6: bool) -> Vec<SocketAddr> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != LISTEN {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = if v6 {
                if addr.len() != 32 {
                    return None;
                }
                // Four 32-bit words, each in the host's (little-endian) order.
                let mut bytes = [0u8; 16];
                for (i, word) in bytes.chunks_mut(4).enumerate() {
                    let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                    word.copy_from_slice(&w.to_le_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            } else {
                let w = u32::from_str_radix(addr, 16).ok()?;
                IpAddr::V4(Ipv4Addr::from(w.to_le_bytes()))
            };
            Some(SocketAddr::new(ip, port))
        })
        .collect()
}

/// The loopback addresses container `id` listens on at `port`, when that is all it
/// listens on there: Some(non-empty) means the app cannot be reached from outside.
pub async fn loopback_only(engine: &Engine, id: &str, port: u16) -> Option<Vec<SocketAddr>> {
    let inspect = engine.docker().inspect_container(id, None).await.ok()?;
    let pid = inspect.state?.pid.filter(|p| *p > 0)?;
    let mut found = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
            found.extend(
                listeners(&text, v6)
                    .into_iter()
                    .filter(|a| a.port() == port),
            );
        }
    }
    (!found.is_empty() && found.iter().all(|a| a.ip().is_loopback())).then_some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listeners_of_both_families() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 100 0 0 10 0\n   1: 0100007F:0BB8 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0 20 4 30 10 -1\n   2: 00000000:0FA0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n";
        assert_eq!(
            listeners(tcp, false),
            vec![
                "127.0.0.1:3000".parse::<SocketAddr>().unwrap(),
                "0.0.0.0:4000".parse().unwrap()
            ]
        );
        let tcp6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 4 1\n";
        assert_eq!(
            listeners(tcp6, true),
            vec!["[::1]:3000".parse::<SocketAddr>().unwrap()]
        );
        assert!(listeners("header\n garbage\n", false).is_empty());
    }
}
