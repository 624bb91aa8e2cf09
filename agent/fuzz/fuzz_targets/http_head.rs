//! Any bytes as the start of a request on an ingress connection: a head whose ranges lie
//! inside what was read and inside the limits, or a refusal; never a panic.
#![no_main]

use ferry_agent::ingress::head::{Body, Limits, Version, read};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bytes: 4096,
        max_headers: 32,
    };
    if let Ok(head) = read(data, &limits) {
        assert!(head.len <= data.len() && head.len <= limits.max_bytes);
        assert!(head.headers.len() <= limits.max_headers);
        for (name, value) in &head.headers {
            assert!(name.end <= head.len && value.end <= head.len);
        }
        assert!(head.target.end <= head.len);
        if let Some(authority) = &head.authority {
            assert!(authority.end <= head.target.start);
            assert!(head.host.is_some());
        }
        if let Some(host) = &head.host {
            // One spelling per name: what routing compares.
            assert_eq!(host.as_str(), &*ferry_api::hostname::canonical(host));
        }
        if head.version == Version::Http11 {
            assert!(head.host.is_some());
        }
        if head.version == Version::Http10 {
            assert_ne!(head.body, Body::Chunked);
        }
    }
});
