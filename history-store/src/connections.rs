//! The connections behind one store handle: one writer, a pool of readers, and a watcher that
//! tells the store's [`StoreVersion`].

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, Transaction};

use crate::error::StoreError;
use crate::schema;
use crate::version::StoreVersion;

/// Read connections kept open for reuse; more are opened under load and closed after.
const MAX_IDLE_READERS: usize = 8;

pub(crate) struct Connections {
    writer: Mutex<Connection>,
    /// `None` for an in-memory store, whose only connection is the writer.
    path: Option<PathBuf>,
    idle_readers: Mutex<Vec<Connection>>,
    /// Commits made through `writer`.
    own_commits: AtomicU64,
    /// A connection kept only to ask `PRAGMA data_version`, which changes when any *other*
    /// connection (this process's writer, or another process) commits. `None` in memory.
    watcher: Option<Mutex<Connection>>,
}

/// A poisoned lock only means another thread panicked while holding it; SQLite's own state is
/// still consistent (a transaction left open rolls back when its guard drops).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Connections {
    pub(crate) fn open(path: PathBuf) -> Result<Connections, StoreError> {
        let writer = schema::open_writer(&path)?;
        let watcher = schema::open_reader(&path)?;
        Ok(Connections {
            writer: Mutex::new(writer),
            path: Some(path),
            idle_readers: Mutex::new(Vec::new()),
            own_commits: AtomicU64::new(0),
            watcher: Some(Mutex::new(watcher)),
        })
    }

    pub(crate) fn in_memory() -> Result<Connections, StoreError> {
        Ok(Connections {
            writer: Mutex::new(schema::open_in_memory()?),
            path: None,
            idle_readers: Mutex::new(Vec::new()),
            own_commits: AtomicU64::new(0),
            watcher: None,
        })
    }

    pub(crate) fn version(&self) -> Result<StoreVersion, StoreError> {
        let own_commits = self.own_commits.load(Ordering::Acquire);
        let data_version = match &self.watcher {
            // Prepared once per connection: this runs on every history request.
            Some(watcher) => lock(watcher)
                .prepare_cached("PRAGMA data_version")?
                .query_row([], |r| r.get(0))?,
            None => 0,
        };
        Ok(StoreVersion {
            own_commits,
            data_version,
        })
    }

    /// Runs `f` on the write connection inside a transaction that commits if `f` succeeds.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        self.own_commits.fetch_add(1, Ordering::Release);
        Ok(out)
    }

    /// Runs `f` on a read connection (the writer, for an in-memory store).
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(path) = &self.path else {
            return f(&lock(&self.writer));
        };
        let idle = lock(&self.idle_readers).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => schema::open_reader(path)?,
        };
        let out = f(&conn);
        // A connection still inside a transaction (a rollback that failed) would serve an old
        // snapshot to whoever took it next: close it instead.
        if conn.is_autocommit() {
            let mut idle = lock(&self.idle_readers);
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
        out
    }
}
