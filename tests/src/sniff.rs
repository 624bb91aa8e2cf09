//! Capturing frames on an interface with an AF_PACKET socket, to see what really crosses a
//! link.

use std::{
    ffi::CString,
    io,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Result, ensure};

/// What crossed the link while the capture ran.
#[derive(Default, Debug)]
pub struct Capture {
    /// Every frame seen.
    pub frames: usize,
    /// IPv4 UDP frames from or to the given port.
    pub udp_port_frames: usize,
    /// Frames containing the marker bytes anywhere.
    pub marker_frames: usize,
}

/// Captures on `socket` until `stop` is set.
pub fn capture(socket: &PacketSocket, udp_port: u16, marker: &[u8], stop: &AtomicBool) -> Capture {
    let mut capture = Capture::default();
    each_frame(socket, stop, |frame| {
        capture.frames += 1;
        if frame.windows(marker.len()).any(|w| w == marker) {
            capture.marker_frames += 1;
        }
        if is_udp_port(frame, udp_port) {
            capture.udp_port_frames += 1;
        }
    });
    capture
}

/// Hands every frame `socket` receives to `look` until `stop` is set.
pub fn each_frame(socket: &PacketSocket, stop: &AtomicBool, mut look: impl FnMut(&[u8])) {
    let mut frame = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        if let Some(n) = socket.recv(&mut frame) {
            look(&frame[..n]);
        }
    }
}

/// An Ethernet frame carrying an IPv4 fragment (more fragments follow, or an offset).
pub fn is_ipv4_fragment(frame: &[u8]) -> bool {
    // The flags and fragment offset: bytes 6-7 of the IPv4 header; DF (0x4000) is not one.
    frame.len() >= 34
        && frame[12..14] == [0x08, 0x00]
        && u16::from_be_bytes([frame[20], frame[21]]) & 0x3fff != 0
}

/// An AF_PACKET socket bound to one interface; it sees every frame from the moment it is
/// bound, wherever the capture loop later runs.
pub struct PacketSocket(i32);

impl PacketSocket {
    /// Binds to `interface` of the calling thread's network namespace.
    pub fn bind(interface: &str) -> Result<Self> {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // Protocol 0 at socket(2): nothing is received until bind(2) names the interface
        // and the protocol (packet(7)). A socket made with ETH_P_ALL takes frames of every
        // interface until it is bound, and the capture read them: a server's own health
        // checks on its container bridge, counted as container addresses on the underlay.
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        ensure!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        let socket = Self(fd);
        let name = CString::new(interface)?;
        // SAFETY: name is NUL-terminated.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(index != 0, "no interface {interface}");
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            rc == 0,
            "bind to {interface}: {}",
            io::Error::last_os_error()
        );
        // A receive timeout lets the loop notice `stop`.
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: timeout is a valid timeval of the given size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        ensure!(rc == 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
        Ok(socket)
    }

    /// The next frame into `buf`, its length; None after 100 ms without one.
    pub fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        usize::try_from(n).ok().filter(|n| *n > 0)
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: the fd is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// An Ethernet frame carrying IPv4 UDP from or to `port`.
pub fn is_udp_port(frame: &[u8], port: u16) -> bool {
    is_transport_port(frame, 17, port)
}

/// An Ethernet frame carrying IPv4 TCP from or to `port`.
pub fn is_tcp_port(frame: &[u8], port: u16) -> bool {
    is_transport_port(frame, 6, port)
}

fn is_transport_port(frame: &[u8], protocol: u8, port: u16) -> bool {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
        return false;
    }
    let ip = &frame[14..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != protocol || ip.len() < header_len + 8 {
        return false;
    }
    let ports = &ip[header_len..];
    let src = u16::from_be_bytes([ports[0], ports[1]]);
    let dst = u16::from_be_bytes([ports[2], ports[3]]);
    src == port || dst == port
}

/// What an underlay capture found between servers.
#[derive(Debug, Default)]
pub struct Underlay {
    /// IPv4 frames between two servers' addresses.
    pub between_servers: usize,
    /// Of those, UDP to or from WireGuard's port.
    pub wireguard: usize,
    /// Of those, TCP to or from central's port (its TLS, when central is on a server).
    pub control: usize,
    /// Of those, IPv4 fragments: the tunnel's packets were bigger than the underlay's MTU.
    pub fragments: usize,
    /// Frames naming a ContainerNet address in an IPv4 header at their start (in clear).
    pub container_addresses: usize,
    /// Frames holding the marker (the payload) in clear.
    pub clear_payload: usize,
    /// The first few frames naming a ContainerNet address: `src > dst proto N, LEN bytes`.
    pub container_samples: Vec<String>,
}

impl Underlay {
    /// An error unless at least `least` frames crossed between the servers, all of them
    /// WireGuard (or central's TLS), none fragmented, none with a container's address or
    /// the payload in clear.
    pub fn check(&self, least: usize) -> Result<()> {
        ensure!(
            self.fragments == 0,
            "the tunnel's packets were fragmented on the underlay (its MTU is too large): \
             {self:?}"
        );
        ensure!(
            self.between_servers >= least && self.wireguard + self.control == self.between_servers,
            "only WireGuard (and central's TLS) may cross between servers: {self:?}"
        );
        ensure!(
            self.container_addresses == 0 && self.clear_payload == 0,
            "container addresses or bytes crossed the underlay in clear: {self:?}"
        );
        Ok(())
    }
}

/// Captures on `socket` until `stop` is set: frames between `servers` by kind, given
/// WireGuard's UDP port and central's TCP port (if central is on a server), and frames
/// holding `marker`.
pub fn watch_underlay(
    socket: &PacketSocket,
    servers: &[std::net::Ipv4Addr],
    (wireguard_port, control_port): (u16, Option<u16>),
    marker: &[u8],
    stop: &AtomicBool,
) -> Underlay {
    let mut seen = Underlay::default();
    each_frame(socket, stop, |frame| {
        if frame.windows(marker.len()).any(|w| w == marker) {
            seen.clear_payload += 1;
        }
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
            return;
        }
        let ip = &frame[14..];
        let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        if [src, dst].iter().any(|a| a.octets()[..2] == [10, 66]) {
            seen.container_addresses += 1;
            if seen.container_samples.len() < 5 {
                let ports = if ip.len() >= 24 && (ip[9] == 6 || ip[9] == 17) {
                    let at = usize::from(ip[0] & 0x0f) * 4;
                    ip.get(at..at + 4)
                        .map(|p| {
                            format!(
                                " ports {}>{}",
                                u16::from_be_bytes([p[0], p[1]]),
                                u16::from_be_bytes([p[2], p[3]])
                            )
                        })
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                seen.container_samples.push(format!(
                    "{src} > {dst} proto {}{ports}, {} bytes",
                    ip[9],
                    frame.len()
                ));
            }
        }
        if servers.contains(&src) && servers.contains(&dst) {
            seen.between_servers += 1;
            if is_ipv4_fragment(frame) {
                seen.fragments += 1;
            }
            if is_udp_port(frame, wireguard_port) {
                seen.wireguard += 1;
            } else if control_port.is_some_and(|port| is_tcp_port(frame, port)) {
                seen.control += 1;
            }
        }
    });
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_udp_to_the_port_only() {
        let mut frame = vec![0u8; 14 + 20 + 8];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45; // IPv4, 20-byte header
        frame[14 + 9] = 17; // UDP
        frame[34..36].copy_from_slice(&40000u16.to_be_bytes());
        frame[36..38].copy_from_slice(&51820u16.to_be_bytes());
        assert!(is_udp_port(&frame, 51820));
        assert!(!is_udp_port(&frame, 53));
        frame[14 + 9] = 6; // TCP
        assert!(!is_udp_port(&frame, 51820));
        assert!(!is_udp_port(&frame[..20], 51820));
    }

    #[test]
    fn tells_a_fragment_from_a_whole_packet_with_dont_fragment() {
        let mut frame = vec![0u8; 14 + 20 + 8];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[20] = 0x40; // DF alone: a whole packet
        assert!(!is_ipv4_fragment(&frame));
        frame[20] = 0x20; // MF: the first fragment
        assert!(is_ipv4_fragment(&frame));
        frame[20..22].copy_from_slice(&0x00b9u16.to_be_bytes()); // an offset: a later one
        assert!(is_ipv4_fragment(&frame));
        frame[12..14].copy_from_slice(&[0x86, 0xdd]); // not IPv4
        assert!(!is_ipv4_fragment(&frame));
    }
}
