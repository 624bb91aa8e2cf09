//! One HTTP/1.x request head, read strictly: the proxy routes by what this says, so it must
//! never accept a head that a backend could frame differently. Refused: bare CR or LF line
//! ends, folded lines, whitespace before a header's colon, `Content-Length` together with
//! `Transfer-Encoding`, more than one `Content-Length` (even equal ones), any transfer
//! coding but `chunked`, more than one `Host` (or none in HTTP/1.1), and heads beyond the
//! size and count limits. Each refusal says why, for the 400 and the log.
//!
//! The request target is origin-form (`/path?query`), `*` for `OPTIONS`, or absolute-form
//! (`http://host/path`, RFC 9112 §3.2.2). An absolute-form request is routed by its
//! authority and reaches the container in origin-form with that authority as its `Host`: the
//! RFC tells a server to ignore a `Host` that disagrees and use the target's host (§3.2.2),
//! so a disagreeing `Host` is replaced, not refused (nginx does the same). Authority-form
//! (`CONNECT`) and other schemes are refused: ferry is no forward proxy.

use std::ops::Range;

use ferry_api::hostname::{self, HostError};

/// Hard limits on one head.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest head, request line and headers and the blank line.
    pub max_bytes: usize,
    /// Most header lines.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024,
            max_headers: 100,
        }
    }
}

/// The HTTP version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
}

/// How the request's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A head that was read whole. Ranges index the buffer it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Range<usize>,
    /// The request target in origin-form (or `*`): for an absolute-form request, the path
    /// and query after its authority, empty when it has no path (write `/` then).
    pub target: Range<usize>,
    /// The authority of an absolute-form request target (`host[:port]`), which names the
    /// host in place of the `Host` header.
    pub authority: Option<Range<usize>>,
    /// The version.
    pub version: Version,
    /// Each header's name and value (value without surrounding whitespace).
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// The host the request names, in [`ferry_api::hostname::canonical`] form (lower case,
    /// no trailing dot), without a port: the absolute-form authority's, else the `Host`'s.
    pub host: Option<String>,
    /// How its body is framed.
    pub body: Body,
    /// Whether the connection ends after this request.
    pub close: bool,
    /// Whether it asks to switch protocols (WebSocket).
    pub upgrade: bool,
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
}

/// Why a head was not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not all of it has arrived; read more (the limits still hold).
    #[error("the head is not complete yet")]
    Incomplete,
    /// Longer than [`Limits::max_bytes`].
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    /// More header lines than [`Limits::max_headers`].
    #[error("more than {0} header lines")]
    TooManyHeaders(usize),
    /// Not HTTP/1.x as the RFC writes it, or framed ambiguously.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The `Host` header is not a host.
    #[error("malformed request: Host: {0}")]
    Host(HostError),
    /// The authority of an absolute-form target is not a host.
    #[error("malformed request: the request target's authority: {0}")]
    Authority(HostError),
}

/// Reads the head at the start of `buf` under `limits`.
pub fn read(buf: &[u8], limits: &Limits) -> Result<RequestHead, HeadError> {
    let Some(end) = find_end(buf, limits.max_bytes) else {
        // A line end the RFC does not allow is refused now, not after the head timeout.
        let window = &buf[..buf.len().min(limits.max_bytes)];
        for (i, b) in window.iter().enumerate() {
            match b {
                b'\n' if i == 0 || window[i - 1] != b'\r' => {
                    return Err(HeadError::Malformed("a line ends in a bare LF"));
                }
                b'\r' if window.get(i + 1).is_some_and(|n| *n != b'\n') => {
                    return Err(HeadError::Malformed("a bare CR"));
                }
                _ => {}
            }
        }
        return Err(if buf.len() >= limits.max_bytes {
            HeadError::TooLarge(limits.max_bytes)
        } else {
            HeadError::Incomplete
        });
    };
    let head = &buf[..end];
    let mut lines = Lines { buf: head, at: 0 };
    let request = lines
        .next()
        .ok_or(HeadError::Malformed("empty request"))??;
    let (method, target, version) = request_line(head, request)?;
    let (target, authority) = request_target(head, &method, target)?;
    let mut headers = Vec::new();
    for line in lines {
        let line = line?;
        if line.is_empty() {
            break;
        }
        if headers.len() == limits.max_headers {
            return Err(HeadError::TooManyHeaders(limits.max_headers));
        }
        headers.push(header_line(head, line)?);
    }
    let mut parsed = RequestHead {
        method,
        target,
        authority,
        version,
        headers,
        host: None,
        body: Body::None,
        close: version == Version::Http10,
        upgrade: false,
        len: end,
    };
    framing(head, &mut parsed)?;
    Ok(parsed)
}

/// The end of the head (after CRLF CRLF), looking no further than `max` bytes.
fn find_end(buf: &[u8], max: usize) -> Option<usize> {
    let window = &buf[..buf.len().min(max)];
    window
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The head's lines as ranges, each without its CRLF; a bare CR or LF is an error.
struct Lines<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Iterator for Lines<'_> {
    type Item = Result<Range<usize>, HeadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.buf.len() {
            return None;
        }
        let start = self.at;
        let rest = &self.buf[start..];
        let cr = rest.iter().position(|b| *b == b'\r' || *b == b'\n')?;
        if rest[cr] == b'\n' || rest.get(cr + 1) != Some(&b'\n') {
            self.at = self.buf.len();
            return Some(Err(HeadError::Malformed("a line ends without CRLF")));
        }
        self.at = start + cr + 2;
        Some(Ok(start..start + cr))
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn request_line(
    head: &[u8],
    line: Range<usize>,
) -> Result<(Range<usize>, Range<usize>, Version), HeadError> {
    let text = &head[line.clone()];
    let mut parts = text.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed(
            "the request line is not METHOD TARGET VERSION",
        ));
    };
    if method.is_empty() || !method.iter().all(|b| is_token(*b)) {
        return Err(HeadError::Malformed("the method is not a token"));
    }
    if target.is_empty() || !target.iter().all(|b| b.is_ascii_graphic()) {
        return Err(HeadError::Malformed(
            "the request target is empty or not printable",
        ));
    }
    let version = match version {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        _ => {
            return Err(HeadError::Malformed(
                "only HTTP/1.0 and HTTP/1.1 heads are read",
            ));
        }
    };
    let m = line.start..line.start + method.len();
    let t = m.end + 1..m.end + 1 + target.len();
    Ok((m, t, version))
}

fn header_line(head: &[u8], line: Range<usize>) -> Result<(Range<usize>, Range<usize>), HeadError> {
    let text = &head[line.clone()];
    if text.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err(HeadError::Malformed("folded header lines are not accepted"));
    }
    let colon = text
        .iter()
        .position(|b| *b == b':')
        .ok_or(HeadError::Malformed("a header line has no colon"))?;
    let name = &text[..colon];
    if name.is_empty() || !name.iter().all(|b| is_token(*b)) {
        return Err(HeadError::Malformed(
            "a header name is empty, not a token, or has whitespace before its colon",
        ));
    }
    let value = &text[colon + 1..];
    if value
        .iter()
        .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
    {
        return Err(HeadError::Malformed(
            "a header value holds a control character",
        ));
    }
    let lead = value
        .iter()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    let trail = value[lead..]
        .iter()
        .rev()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    let start = line.start + colon + 1 + lead;
    let end = line.end - trail;
    Ok((line.start..line.start + colon, start..end.max(start)))
}

/// Host, body framing, Connection and Upgrade, with the smuggling rules.
fn framing(head: &[u8], parsed: &mut RequestHead) -> Result<(), HeadError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut host: Option<&[u8]> = None;
    for (name, value) in &parsed.headers {
        let (name, value) = (&head[name.clone()], &head[value.clone()]);
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Err(HeadError::Malformed("more than one Content-Length"));
            }
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Malformed("Content-Length is not a number"));
            }
            // At most 19 digits: below u64::MAX.
            let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::Malformed(
                    "Transfer-Encoding other than one plain `chunked`",
                ));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(HeadError::Malformed("more than one Host"));
            }
            host = Some(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    parsed.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    parsed.close = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    parsed.upgrade = true;
                }
            }
        }
    }
    parsed.body = match (length, chunked) {
        (Some(_), true) => {
            return Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (_, true) if parsed.version == Version::Http10 => {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        (_, true) => Body::Chunked,
        (Some(n), false) => Body::Length(n),
        (None, false) => Body::None,
    };
    // A Host is still required beside an absolute-form target (RFC 9112 §3.2), and still
    // read, so a malformed one is refused either way.
    let from_host = match host {
        Some(value) => Some(hostname::from_authority(value).map_err(HeadError::Host)?),
        None if parsed.version == Version::Http11 => {
            return Err(HeadError::Malformed("an HTTP/1.1 request without Host"));
        }
        None => None,
    };
    parsed.host = match &parsed.authority {
        Some(authority) => {
            Some(hostname::from_authority(&head[authority.clone()]).map_err(HeadError::Authority)?)
        }
        None => from_host,
    };
    Ok(())
}

/// The origin-form part of `target` and, for absolute-form, its authority.
fn request_target(
    head: &[u8],
    method: &Range<usize>,
    target: Range<usize>,
) -> Result<(Range<usize>, Option<Range<usize>>), HeadError> {
    let text = &head[target.clone()];
    if text.starts_with(b"/") || (text == b"*" && &head[method.clone()] == b"OPTIONS") {
        return Ok((target, None));
    }
    let scheme = if text.len() > 7 && text[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if text.len() > 8 && text[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return Err(HeadError::Malformed(
            "the request target is not /path, * (OPTIONS) or http://host/path",
        ));
    };
    let rest = &text[scheme..];
    let end = rest
        .iter()
        .position(|b| *b == b'/' || *b == b'?')
        .unwrap_or(rest.len());
    let start = target.start + scheme;
    let authority = start..start + end;
    Ok((authority.end..target.end, Some(authority)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> RequestHead {
        read(raw.as_bytes(), &Limits::default()).unwrap_or_else(|e| panic!("{raw:?}: {e}"))
    }

    fn refused(raw: &str) -> HeadError {
        read(raw.as_bytes(), &Limits::default()).expect_err(raw)
    }

    #[test]
    fn reads_a_keep_alive_request_and_its_host() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: Shop.Example.com:8080\r\nX-A:  v  \r\n\r\nbody";
        let head = ok(raw);
        assert_eq!(&raw[head.method.clone()], "GET");
        assert_eq!(&raw[head.target.clone()], "/a?b=1");
        assert_eq!(head.host.as_deref(), Some("shop.example.com"));
        assert_eq!(&raw[head.headers[1].1.clone()], "v");
        assert_eq!(head.body, Body::None);
        assert!(!head.close);
        assert_eq!(&raw[head.len..], "body");
    }

    #[test]
    fn frames_bodies_and_connections() {
        let head =
            ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nConnection: close\r\n\r\n");
        assert_eq!(head.body, Body::Length(12));
        assert!(head.close);
        let head = ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(head.body, Body::Chunked);
        let head = ok(
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(head.upgrade && !head.close);
        assert!(ok("GET / HTTP/1.0\r\n\r\n").close);
    }

    #[test]
    fn waits_for_the_rest_but_not_past_the_limits() {
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a\r\n"),
            HeadError::Incomplete
        );
        let huge = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "x".repeat(20_000)
        );
        assert_eq!(refused(&huge), HeadError::TooLarge(16 * 1024));
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            HeadError::TooManyHeaders(100)
        );
    }

    #[test]
    fn refuses_what_a_backend_could_frame_differently() {
        for raw in [
            // Content-Length with Transfer-Encoding, both orders.
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            // Duplicate lengths, equal or not, and lists.
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            // Codings other than one plain chunked; chunked twice; in HTTP/1.0.
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            // Whitespace before the colon, folded lines, bare LF or CR.
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
            // Host: none in 1.1, two, or not a host name.
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a:x\r\n\r\n",
            // Not HTTP/1.x, or a broken request line.
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
        ] {
            assert!(
                matches!(
                    refused(raw),
                    HeadError::Malformed(_) | HeadError::Host(_) | HeadError::Authority(_)
                ),
                "accepted: {raw:?}"
            );
        }
    }

    #[test]
    fn every_spelling_of_a_host_names_one_host() {
        for host in [
            "shop.example.test",
            "shop.example.test.",
            "SHOP.Example.Test.",
            "shop.example.test:80",
            "shop.example.test.:8080",
        ] {
            let head = ok(&format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"));
            assert_eq!(head.host.as_deref(), Some("shop.example.test"), "{host}");
        }
    }

    #[test]
    fn an_absolute_form_request_is_routed_by_its_authority_and_sent_in_origin_form() {
        let raw = "GET http://Shop.Example.test./cart?id=7 HTTP/1.1\r\nHost: other.test\r\n\r\n";
        let head = ok(raw);
        assert_eq!(head.host.as_deref(), Some("shop.example.test"));
        assert_eq!(&raw[head.target.clone()], "/cart?id=7");
        assert_eq!(
            head.authority.clone().map(|a| &raw[a]),
            Some("Shop.Example.test.")
        );
        for (raw, target, authority) in [
            (
                "GET HTTP://a.test:8080 HTTP/1.1\r\nHost: a.test\r\n\r\n",
                "",
                "a.test:8080",
            ),
            (
                "GET https://a.test?q=1 HTTP/1.1\r\nHost: a.test\r\n\r\n",
                "?q=1",
                "a.test",
            ),
            ("GET http://a.test/ HTTP/1.0\r\n\r\n", "/", "a.test"),
        ] {
            let head = ok(raw);
            assert_eq!(&raw[head.target.clone()], target, "{raw:?}");
            assert_eq!(head.authority.map(|a| &raw[a]), Some(authority), "{raw:?}");
            assert_eq!(head.host.as_deref(), Some("a.test"), "{raw:?}");
        }
        let head = ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(head.authority, None);
    }

    #[test]
    fn targets_that_are_not_for_a_reverse_proxy_are_refused() {
        for (raw, why) in [
            (
                "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
                "authority-form",
            ),
            (
                "GET ftp://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
                "another scheme",
            ),
            (
                "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
                "* for another method than OPTIONS",
            ),
            ("GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", "no authority"),
            (
                "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
                "an empty authority",
            ),
            (
                "GET http://u:p@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
                "userinfo",
            ),
            (
                "GET http://a.test:x/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
                "a port that is no number",
            ),
            (
                "GET http://a.test/ HTTP/1.1\r\n\r\n",
                "HTTP/1.1 without Host",
            ),
            (
                "GET http://a.test/ HTTP/1.1\r\nHost: a b\r\n\r\n",
                "a broken Host beside it",
            ),
        ] {
            let e = refused(raw);
            assert!(
                matches!(
                    e,
                    HeadError::Malformed(_) | HeadError::Host(_) | HeadError::Authority(_)
                ),
                "{why}: {e:?}"
            );
        }
        assert_eq!(
            refused("GET http://u@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n").to_string(),
            "malformed request: the request target's authority: the authority holds userinfo (user@host), which HTTP does not allow"
        );
    }

    #[test]
    fn a_bare_line_end_is_refused_before_the_head_is_complete() {
        let limits = Limits::default();
        assert!(matches!(
            read(b"GET / HTTP/1.1\nHost: a\n", &limits),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            read(b"GET / HTTP/1.1\rHost: a", &limits),
            Err(HeadError::Malformed(_))
        ));
        assert_eq!(
            read(b"GET / HTTP/1.1\r\nHost: a\r", &limits),
            Err(HeadError::Incomplete)
        );
    }
}
