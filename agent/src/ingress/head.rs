//! One HTTP/1.x request head, read strictly: the proxy routes by what this says, so it must
//! never accept a head that a backend could frame differently. Refused: bare CR or LF line
//! ends, folded lines, whitespace before a header's colon, `Content-Length` together with
//! `Transfer-Encoding`, more than one `Content-Length` (even equal ones), any transfer
//! coding but `chunked`, more than one `Host` (or none in HTTP/1.1), and heads beyond the
//! size and count limits. Each refusal says why, for the 400 and the log.

use std::ops::Range;

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
    /// The request target.
    pub target: Range<usize>,
    /// The version.
    pub version: Version,
    /// Each header's name and value (value without surrounding whitespace).
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// The host the request names, lowercased, without a port.
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
    parsed.host = match host {
        Some(value) => Some(host_name(value)?),
        None if parsed.version == Version::Http11 => {
            return Err(HeadError::Malformed("an HTTP/1.1 request without Host"));
        }
        None => None,
    };
    Ok(())
}

/// The host of a Host value, lowercased, without its port.
fn host_name(value: &[u8]) -> Result<String, HeadError> {
    let name = match value.iter().rposition(|b| *b == b':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some(i) if !value.ends_with(b"]") => {
            if !value[i + 1..].iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Malformed("the Host port is not a number"));
            }
            &value[..i]
        }
        _ => value,
    };
    let valid = !name.is_empty()
        && name.len() <= 255
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(b));
    if !valid {
        return Err(HeadError::Malformed("the Host is not a host name"));
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
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
                matches!(refused(raw), HeadError::Malformed(_)),
                "accepted: {raw:?}"
            );
        }
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
