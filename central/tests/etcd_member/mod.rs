//! A real single-member etcd (Debian's `etcd-server`, installed by `./x setup`) for the
//! store and deploy suites: its own data directory in memory and loopback ports, stopped
//! on drop.

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ferry_central::store::{
    StoreError,
    etcd::{EtcdConfig, EtcdStore},
};

/// A running etcd member.
pub struct Etcd {
    child: Child,
    /// `etcd://127.0.0.1:PORT`.
    pub url: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// TLS for a member: PEM files of the CA, and of its certificate and key (which must name
/// 127.0.0.1). Clients must show a certificate the CA signed.
pub struct MemberTls<'a> {
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

impl Etcd {
    /// Starts one member and waits until a client is served.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// [`start`](Self::start), serving clients over TLS with client certificates.
    pub fn start_tls(tls: MemberTls<'_>) -> Self {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<MemberTls<'_>>) -> Self {
        // In memory: etcd syncs its log on every commit, which a disk makes slow.
        let dir = tempfile::tempdir_in("/dev/shm").expect("a directory in /dev/shm");
        let (client, peer) = (free_port(), free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut command = Command::new("etcd");
        if let Some(tls) = &tls {
            command
                .arg("--cert-file")
                .arg(tls.cert)
                .arg("--key-file")
                .arg(tls.key)
                .arg("--trusted-ca-file")
                .arg(tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", "store-test", "--data-dir"])
            .arg(dir.path())
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("store-test={peer_url}")])
            .args(["--log-level", "error", "--logger", "zap"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd (Debian's etcd-server; `./x setup` installs it)");
        let etcd = Self {
            child,
            url: format!("etcd://127.0.0.1:{client}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        etcd
    }

    /// A store client of this member.
    pub fn store(&self) -> Result<EtcdStore, StoreError> {
        EtcdStore::connect(&EtcdConfig::parse(&self.url, None)?)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
