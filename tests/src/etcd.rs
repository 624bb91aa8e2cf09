//! A real etcd cluster on loopback (Debian's `etcd-server`, 3.4): members with their own
//! data directories in memory and free ports, for central's etcd backend. Members can be
//! killed with SIGKILL; the cluster stops on drop.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// One member's process and addresses.
struct Member {
    name: String,
    child: Option<Child>,
    client: u16,
}

/// A running cluster.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: PathBuf,
    http: reqwest::Client,
}

/// What one member says of itself (`/v3/maintenance/status`).
#[derive(Debug)]
pub struct MemberStatus {
    /// Its raft id.
    pub id: String,
    /// The leader's raft id, as it sees it.
    pub leader: String,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdCluster {
    /// Starts `size` members named `<tag>-0..` and waits until every one reports a leader.
    pub async fn start(tag: &str, size: usize) -> Result<Self> {
        // etcd's plain-HTTP gateway is asked through reqwest, which wants a provider chosen.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = PathBuf::from("/dev/shm").join(format!("ferry-etcd-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let names: Vec<String> = (0..size).map(|i| format!("{tag}-{i}")).collect();
        let initial: Vec<String> = names
            .iter()
            .zip(&ports)
            .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        for (name, (client, peer)) in names.iter().zip(&ports) {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new("etcd")
                .args(["--name", name, "--data-dir"])
                .arg(dir.join(name))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-token", &format!("ferry-{tag}")])
                .args(["--initial-cluster-state", "new"])
                .args(["--log-level", "error", "--logger", "zap"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting etcd (Debian's etcd-server; `./x setup` installs it)")?;
            members.push(Member {
                name: name.clone(),
                child: Some(child),
                client: *client,
            });
        }
        let cluster = Self {
            members,
            dir,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..size {
            loop {
                match cluster.status(i).await {
                    Ok(status) if status.leader != "0" && !status.leader.is_empty() => break,
                    result => {
                        if Instant::now() > deadline {
                            bail!(
                                "etcd member {} had no leader within 60 s: {result:?}",
                                cluster.members[i].name
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        Ok(cluster)
    }

    /// `etcd://127.0.0.1:P,...`: the store URL central takes.
    pub fn url(&self) -> String {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        format!("etcd://{}", members.join(","))
    }

    /// Member `i`'s client URL (`http://127.0.0.1:PORT`, its HTTP/JSON gateway too).
    pub fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client)
    }

    /// How many members the cluster has.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Member `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Member `i`'s name.
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// What member `i` says of itself.
    pub async fn status(&self, i: usize) -> Result<MemberStatus> {
        let url = format!(
            "http://127.0.0.1:{}/v3/maintenance/status",
            self.members[i].client
        );
        let body: serde_json::Value = self
            .http
            .post(&url)
            .body("{}")
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .with_context(|| format!("asking {url}"))?
            .json()
            .await
            .with_context(|| format!("{url}'s answer"))?;
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Ok(MemberStatus {
            id: text(&body["header"]["member_id"]),
            leader: text(&body["leader"]),
        })
    }

    /// The index of the member that leads now, as the first live member sees it.
    pub async fn leader(&self) -> Result<usize> {
        for (i, member) in self.members.iter().enumerate() {
            if member.child.is_none() {
                continue;
            }
            let status = self.status(i).await?;
            for j in 0..self.members.len() {
                if self.members[j].child.is_some() && self.status(j).await?.id == status.leader {
                    return Ok(j);
                }
            }
        }
        bail!("no live etcd member names a live leader")
    }

    /// Kills member `i` with SIGKILL: no shutdown, no leadership handed over.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill().context("killing an etcd member")?;
            let _ = child.wait();
        }
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
