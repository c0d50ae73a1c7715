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
    /// Tells when any *other* connection (this process's writer, or another process) committed.
    /// `None` in memory.
    watcher: Option<Mutex<Watcher>>,
}

/// A connection kept only to ask `PRAGMA data_version`, which changes when any other connection
/// commits, and the WAL-index header that says when it is worth asking.
///
/// Asking costs a read transaction: a shared lock and its release on the `-shm` file (two
/// `fcntl`), a `stat` of the database, and SQLite's VM; an eighth of the CPU of an answer from
/// memory when every history request asks (measured). In WAL mode every commit rewrites the
/// header at the start of the `-shm` file (the WAL-index: its change counter, last frame and
/// salts), and a read transaction sees a commit only once the header says so. So while one read
/// of those bytes finds them as they were when the version was last asked, nothing has been
/// committed since, and the answer is the same. The header is read before asking, so an answer
/// is never tied to a header older than the state it saw. Its two copies are compared, as
/// SQLite's own readers do: a header being rewritten (copies differ) counts as changed. Outside
/// WAL mode, or without the `-shm` file, every call asks. The format is the unix VFS's,
/// documented in SQLite's "WAL-mode File Format"; the header's version field in the SQLite we
/// bundle still reads 3007000, the format WAL mode came with (3.7.0).
struct Watcher {
    conn: Connection,
    shm: Option<std::fs::File>,
    /// The header and the data version asked just after it was read.
    seen: Option<(WalIndexHeader, i64)>,
    /// Times SQLite was asked.
    asked: u64,
}

/// One copy of the WAL-index header: its first 48 bytes.
type WalIndexHeader = [u8; 48];

/// The header's first field, in native byte order: the version of the wal-index format.
const WAL_INDEX_FORMAT: u32 = 3_007_000;

impl Watcher {
    fn open(path: &std::path::Path) -> Result<Watcher, StoreError> {
        let conn = schema::open_reader(path)?;
        let mut watcher = Watcher {
            conn,
            shm: None,
            seen: None,
            asked: 0,
        };
        // The first read transaction in WAL mode creates the `-shm` file if no one had.
        watcher.ask()?;
        let mode: String = watcher
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        if mode.eq_ignore_ascii_case("wal") {
            let mut shm = path.as_os_str().to_owned();
            shm.push("-shm");
            watcher.shm = std::fs::File::open(shm).ok();
        }
        Ok(watcher)
    }

    fn ask(&mut self) -> Result<i64, StoreError> {
        self.asked += 1;
        // Prepared once per connection.
        Ok(self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?)
    }

    /// The header, if both copies read the same (else it is being rewritten) and it is in the
    /// format this check knows.
    fn header(&self) -> Option<WalIndexHeader> {
        use std::os::unix::fs::FileExt;

        let mut both = [0u8; 96];
        self.shm.as_ref()?.read_exact_at(&mut both, 0).ok()?;
        let (first, second) = both.split_at(48);
        let format = u32::from_ne_bytes(first[..4].try_into().expect("4 bytes"));
        (first == second && format == WAL_INDEX_FORMAT).then(|| first.try_into().expect("48 bytes"))
    }

    fn data_version(&mut self) -> Result<i64, StoreError> {
        let header = self.header();
        if let (Some(now), Some((then, version))) = (header, self.seen)
            && now == then
        {
            return Ok(version);
        }
        let version = self.ask()?;
        self.seen = header.map(|header| (header, version));
        Ok(version)
    }
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
        let watcher = Watcher::open(&path)?;
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

    /// Whether the WAL-index header is read (see [`Watcher`]), and how often SQLite was asked.
    #[cfg(test)]
    pub(crate) fn watching(&self) -> Option<(bool, u64)> {
        let watcher = lock(self.watcher.as_ref()?);
        Some((watcher.shm.is_some(), watcher.asked))
    }

    pub(crate) fn version(&self) -> Result<StoreVersion, StoreError> {
        let own_commits = self.own_commits.load(Ordering::Acquire);
        let data_version = match &self.watcher {
            Some(watcher) => lock(watcher).data_version()?,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as the unix VFS writes it: format, then the rest (here a change counter).
    fn header(format: u32, change: u8) -> [u8; 48] {
        let mut header = [0u8; 48];
        header[..4].copy_from_slice(&format.to_ne_bytes());
        header[8] = change;
        header
    }

    /// Only two equal copies in the known format count as a header; anything else (a header
    /// being rewritten, another format, a file too short) makes the watcher ask SQLite.
    #[test]
    fn a_header_counts_only_as_two_equal_copies_in_the_known_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.db");
        drop(schema::open_writer(&path).unwrap());
        let mut watcher = Watcher::open(&path).unwrap();
        assert!(watcher.shm.is_some(), "WAL mode has a -shm file");
        let fake = dir.path().join("fake-shm");
        let read = |watcher: &mut Watcher, bytes: &[u8]| {
            std::fs::write(&fake, bytes).unwrap();
            watcher.shm = Some(std::fs::File::open(&fake).unwrap());
            watcher.header()
        };
        let known = header(WAL_INDEX_FORMAT, 7);
        assert_eq!(read(&mut watcher, &[known, known].concat()), Some(known));
        let rewritten = [header(WAL_INDEX_FORMAT, 8), known].concat();
        assert_eq!(read(&mut watcher, &rewritten), None);
        let other = header(WAL_INDEX_FORMAT + 1, 7);
        assert_eq!(read(&mut watcher, &[other, other].concat()), None);
        assert_eq!(read(&mut watcher, &known), None, "one copy only");
    }
}
