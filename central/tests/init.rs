//! `ferry-central init`, run as the operator runs it.

use std::{os::unix::fs::PermissionsExt as _, process::Command};

use ferry_central::{
    config::Config,
    pki::fingerprint,
    store::{Store, sqlite::SqliteStore},
    tokens::{self, Role},
};

fn init(dir: &std::path::Path, url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferry-central"))
        .args(["init", "--data-dir"])
        .arg(dir)
        .args(["--url", url, "--listen", "127.0.0.1:0"])
        .output()
        .expect("run ferry-central")
}

fn token_after<'a>(stdout: &'a str, marker: &str) -> &'a str {
    stdout
        .split_whitespace()
        .skip_while(|w| *w != marker)
        .nth(1)
        .unwrap_or_default()
}

#[test]
fn init_makes_a_complete_private_data_directory_and_prints_how_to_join() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("central");
    let out = init(&dir, "https://central.test:7443");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);

    let admin = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("ferry-admin-")
                .map(|t| format!("ferry-admin-{t}"))
        })
        .expect("admin token printed");
    let join = token_after(&stdout, "--token");
    let printed_fingerprint = token_after(&stdout, "--ca-fingerprint");
    assert!(join.starts_with("ferry-join-"), "{stdout}");
    assert!(
        stdout.contains("--central https://central.test:7443"),
        "{stdout}"
    );

    // The fingerprint is the CA's, as an agent computes it from what central presents.
    let ca_pem = std::fs::read_to_string(dir.join("tls/ca.pem")).expect("ca.pem");
    let der = pem_body(&ca_pem);
    assert_eq!(printed_fingerprint, fingerprint(&der));

    // Private keys and the directory are the owner's alone.
    for (path, mode) in [
        ("", 0o700),
        ("tls/ca-key.pem", 0o600),
        ("tls/server-key.pem", 0o600),
        ("central.toml", 0o600),
    ] {
        let found = std::fs::metadata(dir.join(path))
            .expect(path)
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(found, mode, "{path}");
    }
    let config = Config::load(&dir).expect("config");
    assert_eq!(config.url, "https://central.test:7443");

    // Tokens are stored hashed, with their roles; the tokens themselves are nowhere on disk.
    let store = SqliteStore::open(&dir.join("state.db")).expect("state");
    let role = |t: &str| -> Role {
        serde_json::from_slice(
            &store
                .get(&tokens::key(t))
                .expect("get")
                .expect("stored")
                .value,
        )
        .expect("role")
    };
    assert_eq!(role(&admin), Role::Admin);
    assert_eq!(role(join), Role::Join);
    let db = std::fs::read(dir.join("state.db")).expect("read db");
    let wal = std::fs::read(dir.join("state.db-wal")).unwrap_or_default();
    for secret in [admin.as_str(), join] {
        let needle = secret.as_bytes();
        assert!(
            !db.windows(needle.len()).any(|w| w == needle)
                && !wal.windows(needle.len()).any(|w| w == needle)
        );
    }
}

#[test]
fn init_refuses_to_overwrite_and_bad_urls_change_nothing() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("central");
    assert!(init(&dir, "https://central.test").status.success());
    let before = std::fs::read(dir.join("tls/ca.pem")).expect("ca");

    let again = init(&dir, "https://central.test");
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("already exists and is not empty"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(dir.join("tls/ca.pem")).expect("ca"),
        before,
        "nothing changed"
    );

    let elsewhere = parent.path().join("other");
    for url in [
        "http://central.test",
        "central.test",
        "https://",
        "https://h:port",
        "https://h/path",
    ] {
        let out = init(&elsewhere, url);
        assert!(!out.status.success(), "{url} accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("expected https://HOST[:PORT]"),
            "{url}"
        );
        assert!(!elsewhere.exists(), "{url} left a directory behind");
    }
    // No staging directory is left behind either.
    let leftovers: Vec<_> = std::fs::read_dir(parent.path())
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("central")]);
}

fn pem_body(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("base64 PEM")
}

/// Replicas, as the README sets them up: one `--url` with every replica's URL. The join
/// command printed names them all, and the one certificate is valid for each host.
#[test]
fn init_for_replicas_names_every_replica_in_the_join_command_and_the_certificate() {
    use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};

    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("central");
    let urls = "https://central-1.test:7443,https://central-2.test:7443";
    let out = init(&dir, urls);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(token_after(&stdout, "--central"), urls, "{stdout}");
    let cert = CertificateDer::from_pem_file(dir.join("tls/server.pem")).expect("certificate");
    let cert = webpki::EndEntityCert::try_from(&cert).expect("parses");
    for host in ["central-1.test", "central-2.test"] {
        let name = ServerName::try_from(host).expect("a name");
        cert.verify_is_valid_for_subject_name(&name)
            .unwrap_or_else(|e| panic!("the certificate does not name {host}: {e:?}"));
    }
}
