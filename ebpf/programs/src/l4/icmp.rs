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
        set_inner_addr(
            ctx,
            &quoted,
            quoted.inner + 12,
            quoted.inner_src,
            flow.dst[0],
        )?;
        set_inner_port(
            ctx,
            &quoted,
            quoted.inner_l4,
            quoted.inner_src_port,
            flow.dst_port,
        )?;
        if flow.flags & FLOW_SOURCE != 0 {
            // ...to this server's SNAT address and port, which the error now comes from
            // too (the peer's WireGuard only takes this server's addresses from it).
            set_inner_addr(
                ctx,
                &quoted,
                quoted.inner + 16,
                quoted.inner_dst,
                flow.src[0],
            )?;
            set_inner_port(
                ctx,
                &quoted,
                quoted.inner_l4 + 2,
                quoted.inner_dst_port,
                flow.src_port,
            )?;
            set_outer(ctx, &quoted, quoted.l3 + 12, quoted.src, flow.src[0])?;
        }
        set_outer(ctx, &quoted, quoted.l3 + 16, quoted.dst, flow.dst[0])
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
        set_inner_addr(
            ctx,
            &quoted,
            quoted.inner + 16,
            quoted.inner_dst,
            flow.src[0],
        )?;
        set_inner_port(
            ctx,
            &quoted,
            quoted.inner_l4 + 2,
            quoted.inner_dst_port,
            flow.src_port,
        )?;
        set_outer(ctx, &quoted, quoted.l3 + 12, quoted.src, flow.src[0])?;
        if flow.flags & FLOW_DESTINATION != 0 {
            set_inner_addr(
                ctx,
                &quoted,
                quoted.inner + 12,
                quoted.inner_src,
                flow.dst[0],
            )?;
            set_inner_port(
                ctx,
                &quoted,
                quoted.inner_l4,
                quoted.inner_src_port,
                flow.dst_port,
            )?;
            set_outer(ctx, &quoted, quoted.l3 + 16, quoted.dst, flow.dst[0])?;
        }
        Ok(())
    })();
    if translated.is_err() {
        return TC_ACT_SHOT;
    }
    redirect(ctx, l3, flow.ifindex)
}

/// An address of the outer header, with the outer header's checksum.
#[inline(always)]
fn set_outer(
    ctx: &TcContext,
    quoted: &Quoted,
    offset: usize,
    old: u32,
    new: u32,
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.l3_csum_replace(quoted.l3 + 10, u64::from(old), u64::from(new), 4)?;
    ctx.store(offset, &new, 0)
}

/// An address of the quoted header, with the quoted header's checksum; the two changes
/// cancel in the ICMP checksum.
#[inline(always)]
fn set_inner_addr(
    ctx: &TcContext,
    quoted: &Quoted,
    offset: usize,
    old: u32,
    new: u32,
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.l3_csum_replace(quoted.inner + 10, u64::from(old), u64::from(new), 4)?;
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
