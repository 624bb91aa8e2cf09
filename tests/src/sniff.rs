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
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
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
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
        return false;
    }
    let ip = &frame[14..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 || ip.len() < header_len + 8 {
        return false;
    }
    let udp = &ip[header_len..];
    let src = u16::from_be_bytes([udp[0], udp[1]]);
    let dst = u16::from_be_bytes([udp[2], udp[3]]);
    src == port || dst == port
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
