//! The embedded backend: one SQLite file in WAL mode, synced on every commit.
//!
//! Keys are stored as BLOBs so that byte order is key order and a prefix is a range.
//! The current revision lives in `meta`, not in the log, so compaction never lowers it.

use std::{
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};

use super::{
    ANNOUNCE_BACKLOG, Commit, Compare, Event, KeyValue, MAX_ANNOUNCED_BYTES, Op, Revision, Store,
    StoreError, TxnOutcome, check_write,
};

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS kv (
        key BLOB PRIMARY KEY,
        value BLOB NOT NULL,
        create_rev INTEGER NOT NULL,
        mod_rev INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS log (
        rev INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        key BLOB NOT NULL,
        value BLOB,
        PRIMARY KEY (rev, idx)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS meta (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0);
";

/// The SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    announce: tokio::sync::broadcast::Sender<Arc<Commit>>,
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { op, source }
}

impl SqliteStore {
    /// Opens (creating if needed) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_error)?;
        // WAL lets readers run beside the writer; FULL syncs the WAL on every commit, so a
        // revision the store has returned survives a crash or power loss.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_error)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_error)?;
        conn.execute_batch(SCHEMA).map_err(open_error)?;
        let (announce, _) = tokio::sync::broadcast::channel(ANNOUNCE_BACKLOG);
        Ok(Self {
            conn: Mutex::new(conn),
            announce,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (its own
        // transaction rolls back), so a poisoned lock is still safe to use.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn meta(conn: &Connection, name: &str) -> rusqlite::Result<Revision> {
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |row| {
        row.get::<_, i64>(0)
    })
    .map(|v| v as Revision)
}

/// The exclusive upper bound of the keys starting with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn key_string(bytes: Vec<u8>) -> String {
    // Keys only enter through &str, so they are UTF-8; lossy only guards a hand-edited file.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl Store for SqliteStore {
    fn revision(&self) -> Result<Revision, StoreError> {
        meta(&self.conn(), "revision").map_err(sql("read the revision"))
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.conn()
            .query_row(
                "SELECT value, create_rev, mod_rev FROM kv WHERE key = ?1",
                [key.as_bytes()],
                |row| {
                    Ok(KeyValue {
                        key: key.to_string(),
                        value: row.get(0)?,
                        create_revision: row.get::<_, i64>(1)? as Revision,
                        mod_revision: row.get::<_, i64>(2)? as Revision,
                    })
                },
            )
            .optional()
            .map_err(sql("get"))
    }

    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let mut conn = self.conn();
        // One read transaction: the keys and the revision are of the same moment.
        let tx = conn.transaction().map_err(sql("begin list"))?;
        let revision = meta(&tx, "revision").map_err(sql("list"))?;
        let end = prefix_end(prefix.as_bytes());
        let mut stmt = tx
            .prepare_cached(
                "SELECT key, value, create_rev, mod_rev FROM kv
                 WHERE key >= ?1 AND (?2 IS NULL OR key < ?2) ORDER BY key",
            )
            .map_err(sql("list"))?;
        let rows = stmt
            .query_map(params![prefix.as_bytes(), end], |row| {
                Ok(KeyValue {
                    key: key_string(row.get(0)?),
                    value: row.get(1)?,
                    create_revision: row.get::<_, i64>(2)? as Revision,
                    mod_revision: row.get::<_, i64>(3)? as Revision,
                })
            })
            .map_err(sql("list"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("list"))?;
        drop(stmt);
        tx.commit().map_err(sql("end list"))?;
        Ok((rows, revision))
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        for op in ops {
            check_write(op)?;
        }
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin txn"))?;
        let current = meta(&tx, "revision").map_err(sql("txn"))?;
        for compare in compares {
            let Compare::ModRevision(key, expected) = compare;
            let actual: Revision = tx
                .query_row(
                    "SELECT mod_rev FROM kv WHERE key = ?1",
                    [key.as_bytes()],
                    |row| row.get::<_, i64>(0),
                )
                .optional()
                .map_err(sql("compare"))?
                .map_or(0, |r| r as Revision);
            if actual != *expected {
                return Ok(TxnOutcome::Failed(current));
            }
        }
        let revision = current + 1;
        let rev = revision as i64;
        let mut changed = 0i64;
        let mut events = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put(key, value) => {
                    tx.execute(
                        "INSERT INTO kv (key, value, create_rev, mod_rev) VALUES (?1, ?2, ?3, ?3)
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev",
                        params![key.as_bytes(), value, rev],
                    )
                    .map_err(sql("put"))?;
                    tx.execute(
                        "INSERT INTO log (rev, idx, key, value) VALUES (?1, ?2, ?3, ?4)",
                        params![rev, changed, key.as_bytes(), value],
                    )
                    .map_err(sql("log put"))?;
                    changed += 1;
                    events.push(Event {
                        revision,
                        key: key.clone(),
                        value: Some(value.clone()),
                    });
                }
                Op::Delete(key) => {
                    let removed = tx
                        .execute("DELETE FROM kv WHERE key = ?1", [key.as_bytes()])
                        .map_err(sql("delete"))?;
                    if removed > 0 {
                        tx.execute(
                            "INSERT INTO log (rev, idx, key, value) VALUES (?1, ?2, ?3, NULL)",
                            params![rev, changed, key.as_bytes()],
                        )
                        .map_err(sql("log delete"))?;
                        changed += 1;
                        events.push(Event {
                            revision,
                            key: key.clone(),
                            value: None,
                        });
                    }
                }
            }
        }
        if changed == 0 {
            // Nothing changed (only deletes of absent keys): no new revision.
            return Ok(TxnOutcome::Committed(current));
        }
        tx.execute("UPDATE meta SET value = ?1 WHERE name = 'revision'", [rev])
            .map_err(sql("bump revision"))?;
        tx.commit().map_err(sql("commit"))?;
        let size: usize = events
            .iter()
            .map(|e| e.key.len() + e.value.as_ref().map_or(0, Vec::len))
            .sum();
        let keys = events.iter().map(|e| e.key.clone()).collect();
        let events = (size <= MAX_ANNOUNCED_BYTES).then_some(events);
        // Announced before the lock is released, so commits reach watchers in revision
        // order; with no watcher the send fails, which is fine.
        let _ = self.announce.send(Arc::new(Commit {
            revision,
            events,
            keys,
        }));
        drop(conn);
        Ok(TxnOutcome::Committed(revision))
    }

    fn changes(
        &self,
        prefix: &str,
        after: Revision,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("begin changes"))?;
        let compacted = meta(&tx, "compacted").map_err(sql("changes"))?;
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: compacted,
            });
        }
        let end = prefix_end(prefix.as_bytes());
        let filter = "rev > ?1 AND key >= ?2 AND (?3 IS NULL OR key < ?3)";
        // The revision of the limit-th matching change; a batch never ends inside a
        // revision, so resuming after its last revision loses nothing.
        let last: Option<i64> = tx
            .query_row(
                &format!("SELECT rev FROM log WHERE {filter} ORDER BY rev, idx LIMIT 1 OFFSET ?4"),
                params![
                    after as i64,
                    prefix.as_bytes(),
                    end,
                    limit.saturating_sub(1) as i64
                ],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql("changes"))?;
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT rev, key, value FROM log WHERE {filter} AND (?4 IS NULL OR rev <= ?4) ORDER BY rev, idx"
            ))
            .map_err(sql("changes"))?;
        let events = stmt
            .query_map(params![after as i64, prefix.as_bytes(), end, last], |row| {
                Ok(Event {
                    revision: row.get::<_, i64>(0)? as Revision,
                    key: key_string(row.get(1)?),
                    value: row.get(2)?,
                })
            })
            .map_err(sql("changes"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("changes"))?;
        drop(stmt);
        tx.commit().map_err(sql("end changes"))?;
        Ok(events)
    }

    fn compact(&self, upto: Revision) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin compact"))?;
        let upto = upto.min(meta(&tx, "revision").map_err(sql("compact"))?) as i64;
        tx.execute("DELETE FROM log WHERE rev <= ?1", [upto])
            .map_err(sql("compact"))?;
        tx.execute(
            "UPDATE meta SET value = max(value, ?1) WHERE name = 'compacted'",
            [upto],
        )
        .map_err(sql("compact"))?;
        tx.commit().map_err(sql("commit compact"))
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Commit>> {
        self.announce.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
