//! Ingress: external HTTP(S) and L4 traffic to the containers of the serving generation
//! (issue 5). Built so far: the request-head reader every proxied request passes first, and
//! the follower of chunked request bodies.
//!
//! # Layout
//! - `head`: reading one HTTP/1.x request head with hard limits, refusing anything a
//!   backend could read differently (request smuggling).
//! - `chunked`: where a chunked body ends, refusing any framing but the RFC's exact one.

pub mod chunked;
pub mod head;
