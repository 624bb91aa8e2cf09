//! The revisioned store on both backends, real ones: SQLite on its file and a
//! single-member etcd. One suite: revisions, transactions, the change log, compaction and
//! watches that resume without loss or repetition run on each (`on_sqlite::*`,
//! `on_etcd::*`); durability across a SIGKILL is SQLite's own.
//!
//! Revisions are counted from where a new store starts: 0 on SQLite, 1 on etcd (its
//! first revision is its empty state).

mod etcd_member;

use std::{collections::BTreeSet, process::Command, sync::Arc, time::Duration};

use ferry_central::store::{
    ANNOUNCE_BACKLOG, Backend, Compare, Event, MAX_ANNOUNCED_BYTES, Op, Store, StoreError,
    TxnOutcome, Watch,
    compaction::{Compactor, Window},
    sqlite::SqliteStore,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A store under test and what keeps its backend alive.
struct Subject {
    store: Arc<Backend>,
    kept: Kept,
}

enum Kept {
    Sqlite(tempfile::TempDir),
    Etcd(etcd_member::Etcd),
}

impl Subject {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("central.db")).expect("open store");
        Self {
            store: Arc::new(Backend::Sqlite(store)),
            kept: Kept::Sqlite(dir),
        }
    }

    fn etcd() -> Self {
        let member = etcd_member::Etcd::start();
        let store = member.store().expect("connect to etcd");
        Self {
            store: Arc::new(Backend::Etcd(Box::new(store))),
            kept: Kept::Etcd(member),
        }
    }

    /// The same state through a new store: the file opened again, or a new etcd client.
    fn reopen(self) -> Self {
        drop(self.store);
        let store = match &self.kept {
            Kept::Sqlite(dir) => Backend::Sqlite(
                SqliteStore::open(&dir.path().join("central.db")).expect("reopen store"),
            ),
            Kept::Etcd(member) => {
                Backend::Etcd(Box::new(member.store().expect("connect to etcd again")))
            }
        };
        Self {
            store: Arc::new(store),
            kept: self.kept,
        }
    }
}

/// Runs each named test on both backends: `on_sqlite::NAME` and `on_etcd::NAME`.
macro_rules! on_each_backend {
    (sync: $($name:ident),* ; async: $($async_name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[test]
                fn $name() -> super::TestResult {
                    super::$name(super::Subject::sqlite())
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $async_name() -> super::TestResult {
                    super::$async_name(super::Subject::sqlite()).await
                }
            )*
        }
        mod on_etcd {
            $(
                #[test]
                fn $name() -> super::TestResult {
                    super::$name(super::Subject::etcd())
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $async_name() -> super::TestResult {
                    super::$async_name(super::Subject::etcd()).await
                }
            )*
        }
    };
}

on_each_backend!(
    sync:
        every_write_bumps_one_revision_and_keys_remember_theirs,
        a_failed_compare_writes_nothing,
        bad_writes_are_refused_and_change_nothing,
        the_revision_and_state_survive_a_reopen,
        changes_are_filtered_by_prefix_and_a_batch_never_splits_a_revision,
        the_log_stays_within_the_window_over_an_hour_of_reports;
    async:
        a_watch_sees_every_change_once_across_a_reconnect,
        a_watch_that_falls_behind_or_meets_a_large_commit_still_sees_every_change_once,
);

fn every_write_bumps_one_revision_and_keys_remember_theirs(subject: Subject) -> TestResult {
    let store = &subject.store;
    let r0 = store.revision()?;
    assert_eq!(store.put("stacks/shop", b"v1")?, r0 + 1);
    assert_eq!(store.put("stacks/blog", b"v1")?, r0 + 2);
    assert_eq!(store.put("stacks/shop", b"v2")?, r0 + 3);
    let shop = store.get("stacks/shop")?.expect("present");
    assert_eq!(
        (
            shop.value.as_slice(),
            shop.create_revision,
            shop.mod_revision
        ),
        (&b"v2"[..], r0 + 1, r0 + 3)
    );

    let (all, at) = store.list("stacks/")?;
    assert_eq!(at, r0 + 3);
    assert_eq!(
        all.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        ["stacks/blog", "stacks/shop"]
    );
    assert!(store.list("stacks/x")?.0.is_empty());

    // A multi-key transaction is one revision.
    let outcome = store.txn(
        &[],
        &[
            Op::Put("a".into(), b"1".to_vec()),
            Op::Delete("stacks/blog".into()),
        ],
    )?;
    assert_eq!(outcome, TxnOutcome::Committed(r0 + 4));
    assert_eq!(store.get("stacks/blog")?, None);
    // Deleting what is not there changes nothing, so no revision is spent.
    assert_eq!(
        store.txn(&[], &[Op::Delete("nothing".into())])?,
        TxnOutcome::Committed(r0 + 4)
    );
    Ok(())
}

fn a_failed_compare_writes_nothing(subject: Subject) -> TestResult {
    let store = &subject.store;
    let written = store.put("serving/shop", b"1")?;
    let stale = Compare::ModRevision("serving/shop".into(), 0);
    let write = [
        Op::Put("serving/shop".into(), b"2".to_vec()),
        Op::Put("other".into(), b"x".to_vec()),
    ];
    assert_eq!(store.txn(&[stale], &write)?, TxnOutcome::Failed(written));
    assert_eq!(store.get("serving/shop")?.expect("kept").value, b"1");
    assert_eq!(store.get("other")?, None);
    assert_eq!(store.revision()?, written);
    let fresh = Compare::ModRevision("serving/shop".into(), written);
    assert_eq!(
        store.txn(&[fresh], &write)?,
        TxnOutcome::Committed(written + 1)
    );
    Ok(())
}

fn bad_writes_are_refused_and_change_nothing(subject: Subject) -> TestResult {
    let store = &subject.store;
    let r0 = store.revision()?;
    let err = store.put("", b"x").unwrap_err();
    assert!(matches!(err, StoreError::BadKey { .. }), "{err}");
    let err = store
        .put("big", &vec![0; ferry_central::store::MAX_VALUE + 1])
        .unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
    assert_eq!(store.revision()?, r0);
    Ok(())
}

fn the_revision_and_state_survive_a_reopen(subject: Subject) -> TestResult {
    let r0 = subject.store.revision()?;
    subject.store.put("k", b"v")?;
    subject.store.put("k", b"w")?;
    let subject = subject.reopen();
    let store = &subject.store;
    assert_eq!(store.revision()?, r0 + 2);
    assert_eq!(store.get("k")?.expect("kept").value, b"w");
    assert_eq!(store.put("k", b"x")?, r0 + 3);
    Ok(())
}

fn changes_are_filtered_by_prefix_and_a_batch_never_splits_a_revision(
    subject: Subject,
) -> TestResult {
    let store = &subject.store;
    let r0 = store.revision()?;
    store.put("servers/a", b"1")?; // r0 + 1
    store.txn(
        &[],
        &[
            Op::Put("servers/b".into(), b"1".to_vec()),
            Op::Put("servers/c".into(), b"1".to_vec()),
            Op::Put("stacks/x".into(), b"1".to_vec()),
        ],
    )?; // r0 + 2
    store.put("servers/a", b"2")?; // r0 + 3
    let batch = store.changes("servers/", r0, 2)?;
    // The limit of 2 falls inside revision r0 + 2, which comes whole.
    assert_eq!(
        batch
            .iter()
            .map(|e| (e.revision - r0, e.key.as_str()))
            .collect::<Vec<_>>(),
        [(1, "servers/a"), (2, "servers/b"), (2, "servers/c")]
    );
    let rest = store.changes("servers/", r0 + 2, 2)?;
    assert_eq!(
        rest,
        vec![Event {
            revision: r0 + 3,
            key: "servers/a".into(),
            value: Some(b"2".to_vec())
        }]
    );
    assert!(
        store.changes("servers/", r0 + 3, 10)?.is_empty(),
        "nothing after the last"
    );

    store.compact(r0 + 2)?;
    let err = store.changes("servers/", r0 + 1, 10).unwrap_err();
    assert!(err.to_string().contains("list again"), "{err}");
    assert_eq!(store.changes("servers/", r0 + 2, 10)?.len(), 1);
    assert_eq!(
        store.revision()?,
        r0 + 3,
        "compaction never lowers the revision"
    );
    Ok(())
}

async fn a_watch_sees_every_change_once_across_a_reconnect(subject: Subject) -> TestResult {
    let store = subject.store.clone();
    let r0 = store.revision()?;
    let writer = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            for i in 0..300 {
                store.put(&format!("containers/{}", i % 7), format!("{i}").as_bytes())?;
                store.put("unrelated", b"x")?;
            }
            Ok(())
        })
    };
    let mut seen = Vec::new();
    let mut watch = Watch::new(store.clone(), "containers/", r0);
    while seen.len() < 150 {
        seen.extend(tokio::time::timeout(Duration::from_secs(10), watch.next()).await??);
    }
    // The client goes away and comes back with the revision it had reached.
    let resume_at = watch.revision();
    drop(watch);
    let mut watch = Watch::new(store.clone(), "containers/", resume_at);
    while seen.len() < 300 {
        seen.extend(tokio::time::timeout(Duration::from_secs(10), watch.next()).await??);
    }
    writer.await??;
    let values: Vec<String> = seen
        .iter()
        .map(|e| String::from_utf8_lossy(e.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    let expected: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    assert_eq!(values, expected, "every change, in order, once");
    let revisions: BTreeSet<u64> = seen.iter().map(|e| e.revision).collect();
    assert_eq!(revisions.len(), 300);
    Ok(())
}

/// A watch that has caught up follows announced commits; one that falls more than the
/// backlog behind, or meets a commit too large to announce, reads the log instead: every
/// change once, in order, either way, and the path taken is the one named.
async fn a_watch_that_falls_behind_or_meets_a_large_commit_still_sees_every_change_once(
    subject: Subject,
) -> TestResult {
    use futures_util::FutureExt as _;

    let store = subject.store.clone();
    let r0 = store.revision()?;
    let mut watch = Watch::new(store.clone(), "desired/", r0);
    // One poll: the log is read (nothing yet) and the watch waits on announced commits.
    assert!(watch.next().now_or_never().is_none());
    assert_eq!(watch.log_reads(), 1);

    // Far more commits than the backlog while the watcher reads nothing: it lags, and
    // reads the log again.
    let total = ANNOUNCE_BACKLOG * 3;
    for i in 0..total {
        store.put(&format!("desired/{}", i % 5), format!("{i}").as_bytes())?;
    }
    let mut seen = Vec::new();
    while seen.len() < total {
        seen.extend(tokio::time::timeout(Duration::from_secs(10), watch.next()).await??);
    }
    let after_lag = watch.log_reads();
    assert!(after_lag > 1, "the lag was read from the log");

    // Caught up: a small commit comes announced, with no read of the log.
    assert!(watch.next().now_or_never().is_none());
    let waiting = watch.log_reads();
    store.put("desired/small", b"x")?;
    seen.extend(tokio::time::timeout(Duration::from_secs(10), watch.next()).await??);
    assert_eq!(
        watch.log_reads(),
        waiting,
        "announced, not read from the log"
    );

    // A commit too large to announce, elsewhere: passed over, the log is not read.
    store.put("sources/big", &vec![b'x'; MAX_ANNOUNCED_BYTES + 1])?;
    store.put("desired/after-elsewhere", b"x")?;
    seen.extend(tokio::time::timeout(Duration::from_secs(10), watch.next()).await??);
    assert_eq!(
        watch.log_reads(),
        waiting,
        "a large commit under another prefix costs no log read"
    );

    // A commit too large to announce, under the prefix, comes from the log.
    store.put("desired/big", &vec![b'x'; MAX_ANNOUNCED_BYTES + 1])?;
    seen.extend(tokio::time::timeout(Duration::from_secs(10), watch.next()).await??);
    assert_eq!(
        watch.log_reads(),
        waiting + 1,
        "the large commit was read from the log"
    );

    let revisions: Vec<u64> = seen.iter().map(|e| e.revision - r0).collect();
    // Revision total + 2 is the large commit elsewhere, not under the prefix.
    let expected: Vec<u64> = (1..=(total as u64 + 4))
        .filter(|r| *r != total as u64 + 2)
        .collect();
    assert_eq!(
        revisions, expected,
        "every change under the prefix, in order, once"
    );
    assert_eq!(
        seen[total + 2].value.as_ref().map(Vec::len),
        Some(MAX_ANNOUNCED_BYTES + 1)
    );
    Ok(())
}

/// etcd over TLS with client certificates (`--client-cert-auth`): a store that shows a
/// certificate the cluster's CA signed reads and writes; one without is refused at once,
/// with the members named.
#[test]
fn an_etcd_store_reaches_a_cluster_over_tls_with_its_client_certificate() -> TestResult {
    use ferry_central::store::etcd::{EtcdConfig, EtcdStore, EtcdTls};

    let dir = tempfile::tempdir()?;
    // One CA; its certificate for 127.0.0.1 serves as the member's and the client's.
    let pki = ferry_central::pki::create(&["127.0.0.1".to_string()])?;
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    std::fs::write(&ca, &pki.ca_cert_pem)?;
    std::fs::write(&cert, &pki.server_cert_pem)?;
    std::fs::write(&key, &pki.server_key_pem)?;
    let member = etcd_member::Etcd::start_tls(etcd_member::MemberTls {
        ca: &ca,
        cert: &cert,
        key: &key,
    });
    let with_certificate = EtcdConfig::parse(
        &member.url,
        Some(EtcdTls {
            ca: ca.clone(),
            identity: Some((cert.clone(), key.clone())),
        }),
    )?;
    assert!(with_certificate.endpoints[0].starts_with("https://"));
    let store = EtcdStore::connect(&with_certificate)?;
    let written = store.put("k", b"v")?;
    assert_eq!(store.get("k")?.map(|kv| kv.mod_revision), Some(written));

    let without = EtcdConfig::parse(&member.url, Some(EtcdTls { ca, identity: None }))?;
    let err = EtcdStore::connect(&without)
        .err()
        .ok_or("a client without a certificate was let in")?;
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    Ok(())
}

/// The child process of `an_acknowledged_write_survives_sigkill`: writes until killed,
/// printing each acknowledged revision. Not a test of its own.
#[test]
#[ignore = "run only as the child of an_acknowledged_write_survives_sigkill"]
fn durability_writer_child() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::var("FERRY_STORE_CHILD")?;
    let store = SqliteStore::open(std::path::Path::new(&path))?;
    for i in 0.. {
        let rev = store.put(&format!("k/{}", i % 10), format!("{i}").as_bytes())?;
        println!("acked {rev}");
    }
    Ok(())
}

#[test]
fn an_acknowledged_write_survives_sigkill() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("central.db");
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "durability_writer_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FERRY_STORE_CHILD", &path)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(700));
    child.kill()?; // SIGKILL: no destructor, no orderly close
    let output = child.wait_with_output()?;
    let acked = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("acked ")?.trim().parse::<u64>().ok())
        .max()
        .ok_or("the writer acknowledged nothing")?;
    let store = SqliteStore::open(&path)?;
    let revision = store.revision()?;
    // Every acknowledged write is there; at most the one in flight beyond it.
    assert!(
        revision == acked || revision == acked + 1,
        "acked {acked}, found {revision}"
    );
    let (keys, _) = store.list("k/")?;
    assert!(!keys.is_empty());
    Ok(())
}

/// An hour of reports (ten servers, each every ten seconds: one revision a second) against
/// a compactor looking once a minute, driven by revisions and a simulated clock: the log
/// never holds much more than the window, where without compaction it would hold all 3600.
fn the_log_stays_within_the_window_over_an_hour_of_reports(subject: Subject) -> TestResult {
    let store = &subject.store;
    let r0 = store.revision()?;
    let window = Window {
        revisions: 300,
        age: Duration::from_secs(5 * 60),
    };
    let mut compactor = Compactor::new(window);
    let mut compacted = r0;
    let mut largest = 0;
    for second in 1..=3600u64 {
        let server = second % 10;
        store.put(
            &ferry_api::keys::containers(&format!("server-{server}")),
            format!("{{\"reported_at\":{second}}}").as_bytes(),
        )?;
        if second % 60 == 0 {
            let now = Duration::from_secs(second);
            if let Some(upto) = compactor.due(now, store.revision()?) {
                store.compact(upto)?;
                compacted = upto;
            }
        }
        if second % 60 == 59 {
            // The log just before a compaction: at its largest.
            largest = largest.max(store.changes("", compacted, 100_000)?.len());
        }
    }
    assert_eq!(store.revision()?, r0 + 3600);
    // The window (300 revisions, which is also five minutes' worth) and one minute of
    // reports made since the last look.
    assert!(
        (300..=360).contains(&largest),
        "the log grew to {largest} entries"
    );
    let kept = store.changes("", compacted, 100_000)?;
    assert_eq!(kept.len(), 300);
    // A follower 300 revisions behind resumes; one further behind lists again.
    assert!(store.changes("", r0 + 3300, 1).is_ok());
    assert!(matches!(
        store.changes("", r0 + 3299, 1),
        Err(StoreError::Compacted { .. })
    ));
    Ok(())
}
