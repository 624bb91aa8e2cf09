//! The etcd v3 backend: central's state in an etcd cluster, for users who outgrow one
//! machine.
//!
//! ferry's revision is etcd's: a put or a transaction that changes something is one etcd
//! revision, a compare is an etcd compare on `mod_revision`, and the change log is etcd's
//! history, read with a watch from a revision. Compaction is etcd's; a read of compacted
//! history ends with [`StoreError::Compacted`], as on SQLite, so a watcher lists again.
//!
//! Commits made by any client of the cluster (other central replicas included) are
//! announced to this process's watchers through one etcd watch of every key, so the
//! in-memory fan-out works the same on both backends.
//!
//! [`Store`] is synchronous (SQLite answers in microseconds); each call here runs on the
//! backend's own small runtime and the caller waits for it, bounded by [`CALL_TIMEOUT`].

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable as _};
use etcd_client::{
    Certificate, Client, CompactionOptions, Compare as EtcdCompare, CompareOp, ConnectOptions,
    EventType, GetOptions, Identity, TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::{
    ANNOUNCE_BACKLOG, Commit, Compare, Event, KeyValue, MAX_ANNOUNCED_BYTES, MemberHealth, Op,
    Revision, Store, StoreError, TxnOutcome, check_write,
};

/// Longest one store call may take, reconnects to another member included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for one member's status in [`EtcdStore::members`].
pub const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

/// The URL scheme of an etcd store: `etcd://HOST:PORT,HOST:PORT,...`.
pub const SCHEME: &str = "etcd://";

/// Where the etcd cluster is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://HOST:PORT`, or `https://` with [`EtcdTls`]).
    pub endpoints: Vec<String>,
    /// TLS to the members; None for plain connections.
    pub tls: Option<EtcdTls>,
}

/// TLS to the etcd members: the CA that signed their certificates and, where the cluster
/// asks for client certificates (`--client-cert-auth`), this replica's certificate and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM file of the CA.
    pub ca: PathBuf,
    /// PEM files of the client certificate and its key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Why an etcd store URL or its TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EtcdConfigError {
    #[error(
        "{url:?} is not an etcd store: write etcd://HOST:PORT[,HOST:PORT...] (the members' \
         client addresses)"
    )]
    NotEtcd { url: String },
    #[error("{url:?} names no member: write etcd://HOST:PORT[,HOST:PORT...]")]
    NoMembers { url: String },
    #[error("{member:?} in {url:?} is not HOST:PORT")]
    BadMember { url: String, member: String },
    #[error("an etcd client certificate needs its key, and a key its certificate: give both")]
    HalfIdentity,
    #[error("an etcd client certificate is for TLS: give the members' CA too")]
    IdentityWithoutCa,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl EtcdConfig {
    /// Parses `etcd://HOST:PORT,HOST:PORT,...`; with `tls`, the members are reached over
    /// HTTPS.
    ///
    /// Errors: [`EtcdConfigError`] naming the URL and the part that is wrong.
    pub fn parse(url: &str, tls: Option<EtcdTls>) -> Result<Self, EtcdConfigError> {
        let members = url
            .strip_prefix(SCHEME)
            .ok_or_else(|| EtcdConfigError::NotEtcd { url: url.into() })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoints = Vec::new();
        for member in members.split(',').filter(|m| !m.is_empty()) {
            let port_ok = member
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok || member.contains('/') {
                return Err(EtcdConfigError::BadMember {
                    url: url.into(),
                    member: member.into(),
                });
            }
            endpoints.push(format!("{scheme}://{member}"));
        }
        if endpoints.is_empty() {
            return Err(EtcdConfigError::NoMembers { url: url.into() });
        }
        Ok(Self { endpoints, tls })
    }

    fn connect_options(&self) -> Result<ConnectOptions, EtcdConfigError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            // A member gone silent is noticed within 15 s. Not more often: etcd answers
            // pings closer than its --grpc-keepalive-min-time (5 s by default) by closing
            // the connection, and with it every watch on it.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let Some(tls) = &self.tls else {
            return Ok(options);
        };
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| EtcdConfigError::Read {
                path: path.into(),
                source,
            })
        };
        let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(options.with_tls(config))
    }
}

/// Central's state in an etcd cluster.
pub struct EtcdStore {
    client: Client,
    /// Runs every call and the commit watch; shut down without waiting on drop.
    runtime: Option<tokio::runtime::Runtime>,
    announce: broadcast::Sender<Arc<Commit>>,
    endpoints: String,
    /// How to reach a member (TLS), for asking each one directly.
    options: ConnectOptions,
}

/// Whether an etcd call may succeed if made again: a member down, unreachable or between
/// leaders (gRPC `Unavailable`, or the connection itself).
pub fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::Unavailable,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// The backoff every retried etcd call follows, within [`CALL_TIMEOUT`] in all.
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_total_delay(Some(CALL_TIMEOUT))
        .without_max_times()
}

fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |source| StoreError::Etcd { op, source }
}

/// An etcd revision as ferry's (etcd's are never negative).
fn revision(r: i64) -> Revision {
    Revision::try_from(r).unwrap_or(0)
}

/// A ferry revision as etcd's.
fn etcd_revision(r: Revision) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: revision(kv.create_revision()),
        mod_revision: revision(kv.mod_revision()),
    }
}

fn event(e: &etcd_client::Event) -> Option<Event> {
    let kv = e.kv()?;
    Some(Event {
        revision: revision(kv.mod_revision()),
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: match e.event_type() {
            EventType::Put => Some(kv.value().to_vec()),
            EventType::Delete => None,
        },
    })
}

/// Every key: etcd's range from the empty key to the end.
fn all_keys() -> WatchOptions {
    WatchOptions::new().with_all_keys()
}

impl EtcdStore {
    /// Connects to the cluster and starts announcing its commits.
    ///
    /// Errors: [`StoreError::Connect`] when no member answers within [`CALL_TIMEOUT`].
    pub fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let endpoints = config.endpoints.join(",");
        let connect_error = |source| StoreError::Connect {
            endpoints: endpoints.clone(),
            source,
        };
        let options = config
            .connect_options()
            .map_err(|e| connect_error(Box::new(e)))?;
        let kept_options = options.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ferry-etcd")
            .enable_all()
            .build()
            .map_err(|e| connect_error(Box::new(e)))?;
        let members = config.endpoints.clone();
        // Not `block_on`: a caller on a runtime of its own (central's) must not nest one.
        let (done, connected) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let connect = async move {
                let client = Client::connect(members, Some(options)).await?;
                // Connecting is lazy: one read proves a member answers, made again while
                // the balancer picks a member that is down.
                (|| async { client.clone().get("\0", None).await })
                    .retry(backoff())
                    .when(is_transient)
                    .await?;
                Ok::<_, etcd_client::Error>(client)
            };
            let outcome = tokio::time::timeout(CALL_TIMEOUT, connect).await;
            let _ = done.send(outcome);
        });
        let client = match connected.recv() {
            Ok(Ok(Ok(client))) => Ok(client),
            Ok(Ok(Err(e))) => Err(connect_error(Box::new(e))),
            Ok(Err(_)) => Err(connect_error(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no member answered within {CALL_TIMEOUT:?} (with TLS: does the CA \
                     match, and does the cluster want a client certificate?)"
                ),
            )))),
            Err(_) => Err(StoreError::Closed),
        };
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                // Dropped, a runtime would wait for its threads, which an async caller
                // must not.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        let (announce, _) = broadcast::channel(ANNOUNCE_BACKLOG);
        let store = Self {
            client,
            runtime: Some(runtime),
            announce,
            endpoints,
            options: kept_options,
        };
        let from = store.revision()? + 1;
        store.spawn(announce_commits(
            store.client.clone(),
            store.announce.clone(),
            from,
        ));
        Ok(store)
    }

    /// The members' client URLs, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Every member the cluster lists, each asked for its status directly (bounded by
    /// [`MEMBER_TIMEOUT`]): healthy or why not, and which one leads.
    ///
    /// Errors: the member list cannot be read (no majority answers).
    pub fn members(&self) -> Result<Vec<MemberHealth>, StoreError> {
        let options = self.options.clone();
        self.call("list members", move |mut client| {
            let options = options.clone();
            async move {
                let listed = client.member_list().await.map_err(etcd("list members"))?;
                let mut members = Vec::new();
                for member in listed.members() {
                    let url = member.client_urls().first().cloned().unwrap_or_default();
                    let status = tokio::time::timeout(MEMBER_TIMEOUT, async {
                        let mut one =
                            Client::connect([url.as_str()], Some(options.clone())).await?;
                        one.status().await
                    })
                    .await;
                    let (healthy, leader, problem) = match status {
                        Ok(Ok(status)) => (true, status.leader() == member.id(), None),
                        Ok(Err(e)) => (false, false, Some(e.to_string())),
                        Err(_) => (
                            false,
                            false,
                            Some(format!("no answer within {MEMBER_TIMEOUT:?}")),
                        ),
                    };
                    members.push(MemberHealth {
                        name: member.name().into(),
                        url,
                        healthy,
                        leader,
                        problem,
                    });
                }
                Ok(members)
            }
        })
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Some(runtime) = &self.runtime {
            runtime.spawn(task);
        }
    }

    /// Runs `attempt` with a clone of the client on the backend's runtime and waits for
    /// it. An attempt that meets a member that is down or has no leader is made again,
    /// with backoff, until [`CALL_TIMEOUT`]: the client's balancer may pick a dead member
    /// first. A write retried this way may land twice (etcd can lose the answer to a
    /// proposal it committed during a leader change): a put writes the same value again,
    /// and a compare that already succeeded fails the second time, which callers read as a
    /// race and settle by reading again.
    fn call<T, F, Fut>(&self, op: &'static str, attempt: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let client = self.client.clone();
        self.spawn(async move {
            let retried = (|| attempt(client.clone()))
                .retry(backoff())
                .when(StoreError::is_transient)
                .notify(|e, after| debug!(op, ?after, "etcd: {e}; trying again"));
            let outcome = match tokio::time::timeout(CALL_TIMEOUT, retried).await {
                Ok(outcome) => outcome,
                Err(_) => Err(StoreError::Timeout {
                    op,
                    after: CALL_TIMEOUT,
                }),
            };
            let _ = done.send(outcome);
        });
        result.recv().unwrap_or(Err(StoreError::Closed))
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime waits for its threads, which an async caller must not.
            runtime.shutdown_background();
        }
    }
}

impl Store for EtcdStore {
    fn revision(&self) -> Result<Revision, StoreError> {
        self.call("read the revision", |mut client| async move {
            let response = client
                .get("\0", Some(GetOptions::new().with_count_only()))
                .await
                .map_err(etcd("read the revision"))?;
            Ok(response.header().map_or(0, |h| revision(h.revision())))
        })
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.call("get", move |mut client| {
            let key = key.clone();
            async move {
                let response = client.get(key, None).await.map_err(etcd("get"))?;
                Ok(response.kvs().first().map(key_value))
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let prefix = prefix.to_string();
        self.call("list", move |mut client| {
            let prefix = prefix.clone();
            async move {
                let options = match prefix.is_empty() {
                    true => GetOptions::new().with_all_keys(),
                    false => GetOptions::new().with_prefix(),
                };
                let response = client
                    .get(prefix, Some(options))
                    .await
                    .map_err(etcd("list"))?;
                let at = response.header().map_or(0, |h| revision(h.revision()));
                Ok((response.kvs().iter().map(key_value).collect(), at))
            }
        })
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        for op in ops {
            check_write(op)?;
        }
        let (compares, ops) = (compares.to_vec(), ops.to_vec());
        self.call("commit a transaction", move |mut client| {
            let txn = transaction(&compares, &ops);
            async move {
                let response = client
                    .txn(txn)
                    .await
                    .map_err(etcd("commit a transaction"))?;
                let at = response.header().map_or(0, |h| revision(h.revision()));
                Ok(match response.succeeded() {
                    true => TxnOutcome::Committed(at),
                    false => TxnOutcome::Failed(at),
                })
            }
        })
    }

    fn changes(
        &self,
        prefix: &str,
        after: Revision,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let now = self.revision()?;
        // Revision 1 is a new cluster's empty state: the first with an event is 2.
        if after.max(1) >= now {
            return Ok(Vec::new());
        }
        let prefix = prefix.to_string();
        self.call("read history", move |client| {
            history(client, prefix.clone(), after, now, limit)
        })
    }

    fn compact(&self, upto: Revision) -> Result<(), StoreError> {
        // etcd keeps the revision it compacts at and drops those before it; ferry's
        // compaction drops `upto` too, so the first kept is the one after (never past now).
        let keep_from = (upto + 1).min(self.revision()?);
        self.call("compact", move |mut client| async move {
            match client
                .compact(
                    etcd_revision(keep_from),
                    Some(CompactionOptions::new().with_physical()),
                )
                .await
            {
                Ok(_) => Ok(()),
                // Another replica got there first: the history is as short as asked.
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.message().contains("compacted") =>
                {
                    Ok(())
                }
                Err(source) => Err(StoreError::Etcd {
                    op: "compact",
                    source,
                }),
            }
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Commit>> {
        self.announce.subscribe()
    }
}

/// `compares` and `ops` as one etcd transaction.
fn transaction(compares: &[Compare], ops: &[Op]) -> Txn {
    let when: Vec<EtcdCompare> = compares
        .iter()
        .map(|Compare::ModRevision(key, rev)| {
            EtcdCompare::mod_revision(key.as_str(), CompareOp::Equal, etcd_revision(*rev))
        })
        .collect();
    let then: Vec<TxnOp> = ops
        .iter()
        .map(|op| match op {
            Op::Put(key, value) => TxnOp::put(key.as_str(), value.clone(), None),
            Op::Delete(key) => TxnOp::delete(key.as_str(), None),
        })
        .collect();
    Txn::new().when(when).and_then(then)
}

/// The changes to keys under `prefix` after revision `after` up to `now`, at most `limit`
/// of them, never splitting a revision. etcd keeps history as watchable events only, so
/// this watches every key from `after + 1` (every revision has at least one event, so
/// revision `now` arrives and ends the read) and keeps those under `prefix`.
async fn history(
    mut client: Client,
    prefix: String,
    after: Revision,
    now: Revision,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let start = after.max(1) + 1;
    let mut stream = client
        .watch(
            "",
            Some(all_keys().with_start_revision(etcd_revision(start))),
        )
        .await
        .map_err(etcd("read history"))?;
    let mut found: Vec<Event> = Vec::new();
    loop {
        let Some(response) = stream.message().await.map_err(etcd("read history"))? else {
            return Err(StoreError::Closed);
        };
        if response.compact_revision() > 0 {
            return Err(StoreError::Compacted {
                requested: start,
                oldest: revision(response.compact_revision()),
            });
        }
        if response.canceled() {
            return Err(StoreError::Canceled {
                reason: response.cancel_reason().to_string(),
            });
        }
        for e in response.events().iter().filter_map(event) {
            let full =
                found.len() >= limit && found.last().is_some_and(|l| l.revision < e.revision);
            // Whole revisions only: stop at the first event of the next one.
            if full || e.revision > now {
                return Ok(found);
            }
            if e.key.starts_with(&prefix) {
                found.push(e);
            }
        }
        // A revision's events come in one response (no `fragment` asked for): once `now`
        // is in, everything up to it is.
        if response
            .events()
            .last()
            .and_then(|e| e.kv())
            .is_some_and(|kv| revision(kv.mod_revision()) >= now)
        {
            return Ok(found);
        }
    }
}

/// Announces every commit in the cluster from revision `from` on, in order, whoever made
/// it; restarts its watch after a failure from the revision after the last announced. A
/// gap it cannot read (compacted meanwhile) is announced as a commit without events, so
/// each watcher reads the history itself and learns it must list again.
async fn announce_commits(
    client: Client,
    announce: broadcast::Sender<Arc<Commit>>,
    from: Revision,
) {
    let mut next = from;
    loop {
        match follow_commits(client.clone(), &announce, &mut next).await {
            Ok(()) => debug!(next, "etcd commit watch ended; watching again"),
            Err(e) => warn!(next, "etcd commit watch: {e}; watching again"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn follow_commits(
    mut client: Client,
    announce: &broadcast::Sender<Arc<Commit>>,
    next: &mut Revision,
) -> Result<(), StoreError> {
    let mut stream = client
        .watch(
            "",
            Some(all_keys().with_start_revision(etcd_revision(*next))),
        )
        .await
        .map_err(etcd("watch commits"))?;
    while let Some(response) = stream.message().await.map_err(etcd("watch commits"))? {
        if response.compact_revision() > 0 {
            let compacted = revision(response.compact_revision());
            let _ = announce.send(Arc::new(Commit {
                revision: compacted,
                events: None,
                keys: Vec::new(),
            }));
            *next = compacted;
            return Ok(());
        }
        if response.canceled() {
            return Ok(());
        }
        let mut events = response.events().iter().filter_map(event).peekable();
        while let Some(first) = events.next() {
            let rev = first.revision;
            let mut commit = vec![first];
            while let Some(e) = events.next_if(|e| e.revision == rev) {
                commit.push(e);
            }
            let size: usize = commit
                .iter()
                .map(|e| e.value.as_ref().map_or(0, Vec::len))
                .sum();
            let keys = commit.iter().map(|e| e.key.clone()).collect();
            let _ = announce.send(Arc::new(Commit {
                revision: rev,
                events: (size <= MAX_ANNOUNCED_BYTES).then_some(commit),
                keys,
            }));
            *next = rev + 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_url_lists_its_members_and_bad_ones_say_how_to_write_them() {
        let config =
            EtcdConfig::parse("etcd://127.0.0.1:2379,10.0.0.2:2379", None).expect("two members");
        assert_eq!(
            config.endpoints,
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        let tls = EtcdTls {
            ca: "ca.pem".into(),
            identity: None,
        };
        let secure = EtcdConfig::parse("etcd://etcd-1:2379", Some(tls)).expect("one member");
        assert_eq!(secure.endpoints, ["https://etcd-1:2379"]);
        for (url, says) in [
            ("http://127.0.0.1:2379", "is not an etcd store"),
            ("etcd://", "names no member"),
            ("etcd://127.0.0.1", "is not HOST:PORT"),
            ("etcd://127.0.0.1:2379/x", "is not HOST:PORT"),
            ("etcd://:2379", "is not HOST:PORT"),
            ("etcd://a:99999", "is not HOST:PORT"),
        ] {
            let err = EtcdConfig::parse(url, None).expect_err(url).to_string();
            assert!(err.contains(says), "{url}: {err}");
            assert!(
                err.contains("HOST:PORT"),
                "{url}: says how to write it: {err}"
            );
        }
    }
}
