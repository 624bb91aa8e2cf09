//! Bearer tokens: random, shown once, stored only as SHA-256 hashes.
//!
//! Three kinds, least privilege each: the admin token (the operator's CLI), the join token
//! (lets a new server register, nothing else), and one agent token per server (reads what
//! that server needs, reports on its own containers).

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Register a server.
    Join,
    /// Act as the agent of this server.
    Agent {
        /// The server's name.
        server: String,
    },
}

/// A fresh token with a readable prefix (`ferry-admin-...`) so a leaked one is recognisable.
pub fn generate(kind: &str) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "ferry-{kind}-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The store key under which a token's role is kept: its hash, never the token.
pub fn key(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    ferry_api::keys::token(&hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_stored_by_hash() {
        let a = generate("admin").expect("entropy");
        let b = generate("admin").expect("entropy");
        assert_ne!(a, b);
        assert!(a.starts_with("ferry-admin-") && a.len() > 50, "{a}");
        assert!(
            !key(&a).contains(&a[12..]),
            "the key must not contain the token"
        );
        assert_eq!(key(&a), key(&a));
    }
}
