//! A backend's response head: its status and how its body is framed, which is where the
//! proxy learns when the exchange ends and whether the connection can carry another one.
//! Backends are the stack's own containers, so this is lenient where the request reader is
//! strict, but never unbounded.

/// Longest response head accepted from a backend.
pub const MAX_BYTES: usize = 64 * 1024;
/// Most header lines in a response head.
const MAX_HEADERS: usize = 128;

/// How a response's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, or an empty length).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the backend closes.
    UntilClose,
}

/// A response head read whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// How the body is framed.
    pub framing: Framing,
    /// Whether the backend closes the connection after it.
    pub close: bool,
    /// Bytes of the head, blank line included.
    pub len: usize,
}

/// Why a response head was not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Read more.
    #[error("the response head is not complete yet")]
    Incomplete,
    /// Beyond [`MAX_BYTES`].
    #[error("response head larger than {MAX_BYTES} bytes")]
    TooLarge,
    /// Not a response head httparse can read, or framed ambiguously.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// Reads the response head at the start of `buf`, answering a request with method HEAD
/// when `to_head` says so.
pub fn read(buf: &[u8], to_head: bool) -> Result<ResponseHead, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_BYTES => {
            return Err(ResponseError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Err(ResponseError::Incomplete),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ResponseError::Malformed("too many header lines"));
        }
        Err(_) => return Err(ResponseError::Malformed("not an HTTP/1.x response head")),
    };
    let status = response.code.unwrap_or(0);
    let mut close = response.version == Some(0);
    let mut length = None;
    let mut chunked = None;
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(ResponseError::Malformed("unreadable Content-Length"))?;
            if length.is_some_and(|l| l != value) {
                return Err(ResponseError::Malformed("two different Content-Lengths"));
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = header.value.rsplit(|b| *b == b',').next().unwrap_or(&[]);
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && response.version == Some(0) {
                    close = false;
                }
            }
        }
    }
    let framing = if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else {
        match (chunked, length) {
            // RFC 9112 6.3: a transfer coding wins over a length; a final coding other than
            // chunked runs to the close.
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(0)) => Framing::None,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    Ok(ResponseHead {
        status,
        framing,
        close: close || framing == Framing::UntilClose,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_chunks_and_bodiless_statuses() {
        let r = read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false).unwrap();
        assert_eq!(
            (r.status, r.framing, r.close, r.len),
            (200, Framing::Length(5), false, 38)
        );
        let r = read(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.framing, Framing::Chunked);
        let r = read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap();
        assert_eq!(r.framing, Framing::None, "the answer to HEAD has no body");
        let r = read(b"HTTP/1.1 304 Not Modified\r\n\r\n", false).unwrap();
        assert_eq!(r.framing, Framing::None);
        let r = read(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!((r.framing, r.close), (Framing::UntilClose, true));
    }

    #[test]
    fn connection_close_and_http_1_0() {
        let r = read(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(r.close);
        let r = read(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).unwrap();
        assert!(r.close);
        let r = read(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!r.close);
    }

    #[test]
    fn partial_oversized_and_ambiguous_heads() {
        assert_eq!(
            read(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            Err(ResponseError::Incomplete)
        );
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_BYTES + 10, b'a');
        assert_eq!(read(&big, false), Err(ResponseError::TooLarge));
        assert!(matches!(
            read(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            Err(ResponseError::Malformed(_))
        ));
    }
}
