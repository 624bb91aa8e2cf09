//! Host names as ferry compares them, one rule for every place a name is matched: a
//! request's `Host`, the authority of an absolute-form request, a TLS handshake's SNI, a
//! service's `traffic_matches` and a certificate's names. Two spellings of one name are one
//! name: letters are compared without case (RFC 4343), a fully qualified name's one trailing
//! root dot is dropped (`shop.example.test.` is `shop.example.test`, as nginx and Envoy
//! strip it before matching), and a port is not part of the host (RFC 9110 §7.2).

use std::borrow::Cow;

/// Longest host name kept, in bytes (RFC 1035 §2.3.4 allows 253 in text form; an IPv6
/// literal in brackets stays far below).
pub const MAX_LEN: usize = 253;

/// Why a `Host` value, an authority or an SNI name is not a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Nothing before the port (or an empty value).
    #[error("the host is empty")]
    Empty,
    /// A port that is not a decimal number up to 65535.
    #[error("the port after the host is not a number from 0 to 65535")]
    Port,
    /// A character no host name (or bracketed IPv6 literal) holds.
    #[error("the host holds characters no host name has (letters, digits, '-', '.')")]
    Characters,
    /// A label is empty (`a..b`, `.a`, or more than one trailing dot).
    #[error("the host has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    /// Longer than [`MAX_LEN`].
    #[error("the host is longer than {MAX_LEN} bytes")]
    TooLong,
    /// Userinfo (`user@`) in an authority: RFC 9110 §4.2.4 deprecates it and tells
    /// recipients to treat it as an error, since it is a phishing vector.
    #[error("the authority holds userinfo (user@host), which HTTP does not allow")]
    Userinfo,
}

/// `name` as ferry compares it: lower case, without one trailing dot. Borrows when the
/// name is already in that form (the common case on every request).
pub fn canonical(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// The host of an authority (`host`, `host:port`, `[v6]`, `[v6]:port`) as it appears in a
/// `Host` header, an absolute-form request target or an SNI extension: its
/// [`canonical`] form, without the port.
///
/// # Errors
/// [`HostError`] naming what is wrong: empty, a port that is not a number, userinfo,
/// characters no host has, or too long.
pub fn from_authority(value: &[u8]) -> Result<String, HostError> {
    if value.contains(&b'@') {
        return Err(HostError::Userinfo);
    }
    let host = match value.iter().rposition(|b| *b == b':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some(i) if !value.ends_with(b"]") => {
            let port = &value[i + 1..];
            // Digits only (no sign), empty allowed (RFC 3986 §3.2.3), at most 65535.
            let number = port.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(port)
                    .is_ok_and(|p| p.is_empty() || p.parse::<u16>().is_ok());
            if !number {
                return Err(HostError::Port);
            }
            &value[..i]
        }
        _ => value,
    };
    let bracketed = host.starts_with(b"[") && host.ends_with(b"]");
    let valid = |b: &u8| {
        b.is_ascii_alphanumeric()
            || *b == b'-'
            || *b == b'.'
            || *b == b'_'
            || (bracketed && (*b == b':' || *b == b'[' || *b == b']'))
    };
    if !host.iter().all(valid) {
        return Err(HostError::Characters);
    }
    // Only ASCII got this far.
    let text = std::str::from_utf8(host).map_err(|_| HostError::Characters)?;
    let name = canonical(text);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_LEN {
        return Err(HostError::TooLong);
    }
    if !bracketed && name.split('.').any(str::is_empty) {
        return Err(HostError::EmptyLabel);
    }
    Ok(name.into_owned())
}

/// A host name to match (`traffic_matches`, a certificate's names): DNS labels, optionally
/// starting with `*.`, returned in the form every match compares ([`canonical`]: lower
/// case, one trailing dot dropped), so `Shop.Example.test.` matches `shop.example.test`.
///
/// # Errors
/// A message for the user quoting `text` and showing a valid name.
pub fn pattern(text: &str) -> Result<String, String> {
    let name = canonical(text.trim()).into_owned();
    let labels = name.strip_prefix("*.").unwrap_or(&name);
    let valid = !labels.is_empty()
        && labels.len() <= 253
        && labels.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "expected a host name such as \"app.example.com\" or \"*.example.com\", found {text:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_name_is_one_name() {
        for spelling in [
            "shop.example.test",
            "Shop.Example.TEST",
            "shop.example.test.",
            "SHOP.EXAMPLE.TEST.",
            "shop.example.test:80",
            "shop.example.test.:8080",
            "Shop.Example.Test.:443",
        ] {
            assert_eq!(
                from_authority(spelling.as_bytes()).as_deref(),
                Ok("shop.example.test"),
                "{spelling}"
            );
        }
        assert_eq!(canonical("a.b."), "a.b");
        assert!(matches!(canonical("a.b"), Cow::Borrowed(_)));
        assert_eq!(
            from_authority(b"[::1]:8080").as_deref(),
            Ok("[::1]"),
            "an IPv6 literal keeps its brackets"
        );
        assert_eq!(from_authority(b"10.0.0.1:80").as_deref(), Ok("10.0.0.1"));
    }

    #[test]
    fn what_is_not_a_host_is_refused_and_says_why() {
        assert_eq!(from_authority(b""), Err(HostError::Empty));
        assert_eq!(from_authority(b"."), Err(HostError::Empty));
        assert_eq!(from_authority(b":80"), Err(HostError::Empty));
        assert_eq!(from_authority(b"a:x"), Err(HostError::Port));
        assert_eq!(from_authority(b"a:99999"), Err(HostError::Port));
        assert_eq!(from_authority(b"a:1234567"), Err(HostError::Port));
        assert_eq!(from_authority(b"a b"), Err(HostError::Characters));
        assert_eq!(from_authority(b"a..:80/x"), Err(HostError::Port));
        assert_eq!(from_authority(b"a.."), Err(HostError::EmptyLabel));
        assert_eq!(from_authority(b".a"), Err(HostError::EmptyLabel));
        assert_eq!(from_authority(b"a..b:80"), Err(HostError::EmptyLabel));
        assert_eq!(from_authority(b"a/b"), Err(HostError::Characters));
        assert_eq!(from_authority(b"a::b"), Err(HostError::Port));
        assert_eq!(from_authority(b"user@a"), Err(HostError::Userinfo));
        let long = "a".repeat(254);
        assert_eq!(from_authority(long.as_bytes()), Err(HostError::TooLong));
    }
}
