//! Following a chunked request body as it streams through the proxy: where it ends, and a
//! refusal, before anything is forwarded that a backend could frame differently, when the
//! framing is not exactly RFC 9112's (hex sizes without signs or spaces, CRLF everywhere,
//! bounded extensions and trailers).

/// Longest chunk-size line (size and extensions) or trailer line.
pub const MAX_LINE: usize = 4096;
/// Most hex digits in a chunk size (a u64).
const MAX_DIGITS: usize = 16;

/// Why a chunked body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body: {0}")]
pub struct ChunkError(&'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a chunk size: its value so far and how many digits.
    Size {
        value: u64,
        digits: usize,
        line: usize,
    },
    /// After `;`: an extension, up to CR.
    Extension { value: u64, line: usize },
    /// A CR was read after a size line; LF must follow.
    SizeLf { value: u64 },
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// After a chunk's data: CR must follow.
    DataCr,
    /// ... then LF.
    DataLf,
    /// After the last chunk: a trailer line of this length so far.
    Trailer { line: usize },
    /// A CR was read in the trailers; LF must follow. `empty`: it ends the body.
    TrailerLf { empty: bool },
    /// The body is complete.
    Done,
}

/// A chunked body's framing, fed as bytes arrive.
#[derive(Clone, Debug)]
pub struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: State::Size {
                value: 0,
                digits: 0,
                line: 0,
            },
        }
    }
}

impl Chunked {
    /// Whether the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Follows `bytes`; returns how many belong to the body (all, unless it ended inside
    /// them: the rest is the next request).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < bytes.len() && self.state != State::Done {
            if let State::Data(left) = self.state {
                // Data is skipped in bulk, not byte by byte.
                let take = left.min((bytes.len() - at) as u64);
                at += take as usize;
                self.state = match left - take {
                    0 => State::DataCr,
                    more => State::Data(more),
                };
                continue;
            }
            self.state = self.step(bytes[at])?;
            at += 1;
        }
        Ok(at)
    }

    fn step(&self, b: u8) -> Result<State, ChunkError> {
        let line_limit = |line: usize| {
            if line >= MAX_LINE {
                Err(ChunkError("a line longer than 4096 bytes"))
            } else {
                Ok(line + 1)
            }
        };
        Ok(match self.state {
            State::Size {
                value,
                digits,
                line,
            } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits == MAX_DIGITS {
                        return Err(ChunkError("a chunk size beyond 16 hex digits"));
                    }
                    let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                    State::Size {
                        value: value << 4 | digit,
                        digits: digits + 1,
                        line: line_limit(line)?,
                    }
                }
                _ if digits == 0 => return Err(ChunkError("a chunk size that is not hex")),
                b';' => State::Extension {
                    value,
                    line: line_limit(line)?,
                },
                b'\r' => State::SizeLf { value },
                _ => return Err(ChunkError("a chunk size followed by something else")),
            },
            State::Extension { value, line } => match b {
                b'\r' => State::SizeLf { value },
                b'\n' => return Err(ChunkError("a bare LF")),
                0x20..=0x7e | b'\t' => State::Extension {
                    value,
                    line: line_limit(line)?,
                },
                _ => return Err(ChunkError("a control character in a chunk extension")),
            },
            State::SizeLf { value } => match (b, value) {
                (b'\n', 0) => State::Trailer { line: 0 },
                (b'\n', n) => State::Data(n),
                _ => return Err(ChunkError("a CR without LF")),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(ChunkError("chunk data longer than its size")),
            },
            State::DataLf => match b {
                b'\n' => State::Size {
                    value: 0,
                    digits: 0,
                    line: 0,
                },
                _ => return Err(ChunkError("a CR without LF")),
            },
            State::Trailer { line } => match b {
                b'\r' => State::TrailerLf { empty: line == 0 },
                b'\n' => return Err(ChunkError("a bare LF")),
                0x20..=0x7e | b'\t' => State::Trailer {
                    line: line_limit(line)?,
                },
                _ => return Err(ChunkError("a control character in a trailer")),
            },
            State::TrailerLf { empty } => match (b, empty) {
                (b'\n', true) => State::Done,
                (b'\n', false) => State::Trailer { line: 0 },
                _ => return Err(ChunkError("a CR without LF")),
            },
            // `feed` reads data in bulk and stops at the end.
            State::Data(_) | State::Done => self.state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<usize, ChunkError> {
        let mut c = Chunked::default();
        let n = c.feed(body)?;
        assert!(c.is_done(), "not done after {body:?}");
        Ok(n)
    }

    #[test]
    fn follows_a_body_in_any_pieces_and_stops_at_its_end() {
        let body = b"4;name=v\r\nWiki\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        let end = body.len() - "GET /next".len();
        assert_eq!(whole(body), Ok(end));
        for split in 1..end {
            let mut c = Chunked::default();
            let first = c.feed(&body[..split]).expect("first piece");
            assert_eq!(first, split);
            assert!(!c.is_done());
            assert_eq!(c.feed(&body[split..]), Ok(end - split));
            assert!(c.is_done());
        }
    }

    #[test]
    fn refuses_every_ambiguous_framing() {
        for body in [
            &b"-1\r\n"[..],
            b" 4\r\nWiki\r\n",
            b"4 \r\nWiki\r\n",
            b"0x4\r\nWiki\r\n",
            b"4\nWiki\r\n",
            b"4\r\nWikiX\r\n",
            b"4\r\nWiki\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"4;a\x01\r\n",
            b"0\r\nX: 1\n\r\n",
            b";\r\n",
        ] {
            let mut c = Chunked::default();
            assert!(c.feed(body).is_err(), "accepted {body:?}");
        }
        let mut long = b"4;".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE));
        assert!(Chunked::default().feed(&long).is_err());
    }
}
