//! ICMP errors about steered flows (RFC 792 destination unreachable, which carries
//! "fragmentation needed" for path MTU discovery, RFC 1191; and time exceeded), turned
//! the way the flow is: an error from the client's side about a packet ferry sent from
//! the published port reaches the backend as if about the packet the backend sent; an
//! error a backend sends about a client's packet reaches the client as if from the
//! published port. As a NAT does (RFC 5508 §4): the quoted header is rewritten with the
//! outer one, and the quoted addresses are covered by the quoted header's checksum,
//! whose change cancels theirs in the ICMP checksum; the quoted ports are not, so the
//! ICMP checksum is fixed for them.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use ferry_ebpf_abi::{FAMILY_IPV4, FLOW_DESTINATION, FLOW_REPLY, FLOW_SOURCE, Flow, FlowKey};

use super::{FERRY_L4_FLOWS, TCP, UDP, ipv4, redirect};

const ICMP: u8 = 1;
const DESTINATION_UNREACHABLE: u8 = 3;
const TIME_EXCEEDED: u8 = 11;
/// The ICMP header before the quoted packet: type, code, checksum, 4 unused (or MTU).
const ICMP_HEADER: usize = 8;

/// An ICMP error quoting a TCP or UDP packet.
struct Quoted {
    l3: usize,
    icmp: usize,
    /// Offset of the quoted IP header.
    inner: usize,
    /// Offset of the quoted TCP or UDP header (only its ports are read).
    inner_l4: usize,
    protocol: u8,
    src: u32,
    dst: u32,
    inner_src: u32,
    inner_dst: u32,
    inner_src_port: u16,
    inner_dst_port: u16,
}

#[inline(always)]
fn parse(ctx: &TcContext, l3: usize) -> Option<Quoted> {
    let (ihl, protocol) = ipv4(ctx, l3)?;
    if protocol != ICMP {
        return None;
    }
    let icmp = l3 + ihl;
    let kind: u8 = ctx.load(icmp).ok()?;
    if kind != DESTINATION_UNREACHABLE && kind != TIME_EXCEEDED {
        return None;
    }
    let inner = icmp + ICMP_HEADER;
    let version_ihl: u8 = ctx.load(inner).ok()?;
    let inner_ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || inner_ihl < 20 {
        return None;
    }
    let inner_protocol: u8 = ctx.load(inner + 9).ok()?;
    if inner_protocol != TCP && inner_protocol != UDP {
        return None;
    }
    let inner_l4 = inner + inner_ihl;
    Some(Quoted {
        l3,
        icmp,
        inner,
        inner_l4,
        protocol: inner_protocol,
        src: ctx.load(l3 + 12).ok()?,
        dst: ctx.load(l3 + 16).ok()?,
        inner_src: ctx.load(inner + 12).ok()?,
        inner_dst: ctx.load(inner + 16).ok()?,
        inner_src_port: ctx.load(inner_l4).ok()?,
        inner_dst_port: ctx.load(inner_l4 + 2).ok()?,
    })
}

/// The tracked entry of the packet `quoted` quotes, seen from its other end.
#[inline(always)]
fn flow_of(quoted: &Quoted) -> Option<Flow> {
    let key = FlowKey {
        src: [quoted.inner_dst, 0, 0, 0],
        dst: [quoted.inner_src, 0, 0, 0],
        src_port: quoted.inner_dst_port,
        dst_port: quoted.inner_src_port,
        protocol: quoted.protocol,
        family: FAMILY_IPV4,
        _pad: 0,
    };
    // SAFETY: plain data, copied out.
    unsafe { FERRY_L4_FLOWS.get(&key) }.copied()
}

/// On an external interface: an error about a packet ferry sent to a client from a
/// published port goes to the backend that sent it.
pub(super) fn toward_backend(ctx: &TcContext, l3: usize) -> i32 {
    let Some(quoted) = parse(ctx, l3) else {
        return TC_ACT_OK;
    };
    // The quoted packet went backend -> client; its tracked direction is client -> us.
    let Some(flow) = flow_of(&quoted) else {
        return TC_ACT_OK;
    };
    if flow.flags & FLOW_REPLY != 0 {
        return TC_ACT_OK;
    }
    let translated = (|| -> Result<(), i64> {
        // The backend sent from its own address and port...
        set_end(ctx, &quoted, Sender, flow.dst[0], flow.dst_port)?;
        if flow.flags & FLOW_SOURCE != 0 {
            // ...to this server's SNAT address and port, which the error now comes from
            // too (the peer's WireGuard only takes this server's addresses from it).
            set_end(ctx, &quoted, Receiver, flow.src[0], flow.src_port)?;
        }
        Ok(())
    })();
    if translated.is_err() {
        return TC_ACT_SHOT;
    }
    redirect(ctx, l3, flow.ifindex)
}

/// On the container bridge or the WireGuard link: an error a backend sends about a
/// client's packet goes to the client, from the published address and port.
pub(super) fn toward_client(ctx: &TcContext, l3: usize) -> i32 {
    let Some(quoted) = parse(ctx, l3) else {
        return TC_ACT_OK;
    };
    // The quoted packet went client (or SNAT) -> backend; its tracked direction is the
    // backend's reply.
    let Some(flow) = flow_of(&quoted) else {
        return TC_ACT_OK;
    };
    if flow.flags & FLOW_REPLY == 0 {
        return TC_ACT_OK;
    }
    let translated = (|| -> Result<(), i64> {
        set_end(ctx, &quoted, Receiver, flow.src[0], flow.src_port)?;
        if flow.flags & FLOW_DESTINATION != 0 {
            set_end(ctx, &quoted, Sender, flow.dst[0], flow.dst_port)?;
        }
        Ok(())
    })();
    if translated.is_err() {
        return TC_ACT_SHOT;
    }
    redirect(ctx, l3, flow.ifindex)
}

/// One end of the quoted packet: its sender, to whom the error goes back (the outer
/// destination), or its receiver, whose side sends the error (the outer source).
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Sender,
    Receiver,
}
use End::{Receiver, Sender};

/// Moves one end of the quoted packet to `addr` and `port` (network order), and the outer
/// header's address on that side with it.
#[inline(always)]
fn set_end(ctx: &TcContext, quoted: &Quoted, end: End, addr: u32, port: u16) -> Result<(), i64> {
    let (inner_addr, inner_port, outer, old_addr, old_port, old_outer) = match end {
        Sender => (
            quoted.inner + 12,
            quoted.inner_l4,
            quoted.l3 + 16,
            quoted.inner_src,
            quoted.inner_src_port,
            quoted.dst,
        ),
        Receiver => (
            quoted.inner + 16,
            quoted.inner_l4 + 2,
            quoted.l3 + 12,
            quoted.inner_dst,
            quoted.inner_dst_port,
            quoted.src,
        ),
    };
    set_addr(ctx, quoted.inner + 10, inner_addr, old_addr, addr)?;
    set_inner_port(ctx, quoted, inner_port, old_port, port)?;
    set_addr(ctx, quoted.l3 + 10, outer, old_outer, addr)
}

/// An address of the IP header whose checksum is at `checksum` (the outer header's, or the
/// quoted one's, whose change cancels the address's in the ICMP checksum).
#[inline(always)]
fn set_addr(
    ctx: &TcContext,
    checksum: usize,
    offset: usize,
    old: u32,
    new: u32,
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.l3_csum_replace(checksum, u64::from(old), u64::from(new), 4)?;
    ctx.store(offset, &new, 0)
}

/// A port of the quoted TCP or UDP header, with the ICMP checksum. The quoted segment's own
/// checksum (within the 8 quoted bytes for UDP) is left as it is: no receiver checks it.
#[inline(always)]
fn set_inner_port(
    ctx: &TcContext,
    quoted: &Quoted,
    offset: usize,
    old: u16,
    new: u16,
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(quoted.icmp + 2, u64::from(old), u64::from(new), 2)?;
    ctx.store(offset, &new, 0)
}
