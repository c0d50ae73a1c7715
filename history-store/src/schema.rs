//! The schema, its migrations, and how a connection is opened.
//!
//! Schema (version 2), chosen for the one query that matters, "ticks of currency C from time T,
//! oldest first", and for size (a year of 5 s ticks in two currencies is 12.6 million rows):
//!
//! - `ticks(currency, ts, price)`: `WITHOUT ROWID`, primary key `(currency, ts)`, so the table *is*
//!   the index and a range scan reads consecutive pages. `currency` is the ISO 4217 number (2 bytes),
//!   `ts` the slot start in ms, `price` the exact decimal text. About 25 bytes per tick on disk.
//! - `gaps(currency, start_ts, end_ts, reason)`: slots `[start_ts, end_ts)` that got no tick.
//! - `feed_info(key, value)`: how the publisher writing the file runs (interval, demo).
//!
//! - `store_changes(rewrites, gap_writes)`: counts kept by SQLite triggers. `rewrites` grows by
//!   one for every tick deleted or changed and for every tick stored before a newer tick of its
//!   currency: every change to the ticks that is not an append. `gap_writes` grows with every gap
//!   written. Readers that keep encoded ticks and gaps in memory (the history API) know from them
//!   that what they hold is still exactly what the store holds. Not a numbered migration but
//!   created at open when missing (see [`COMPATIBLE`]).
//!
//! Durability: WAL with `synchronous=FULL`. A tick is committed (fsynced) before it is published, so
//! a published tick survives a killed process and a power cut; the cost is one fsync per slot.
//! Several processes may open the file (the publisher writes, a separate `history-api` reads): WAL
//! lets readers run beside the writer and a busy timeout absorbs the short write locks.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::StoreError;

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: ticks and gaps.
    "CREATE TABLE ticks (
         currency INTEGER NOT NULL,
         ts       INTEGER NOT NULL,
         price    TEXT    NOT NULL,
         PRIMARY KEY (currency, ts)
     ) WITHOUT ROWID;
     CREATE TABLE gaps (
         currency INTEGER NOT NULL,
         start_ts INTEGER NOT NULL,
         end_ts   INTEGER NOT NULL,
         reason   TEXT    NOT NULL,
         PRIMARY KEY (currency, start_ts)
     ) WITHOUT ROWID;",
    // 2: what the publisher writes with (interval, demo), so a separate history server reports
    // the feed as it is, not as its own flags say.
    "CREATE TABLE feed_info (
         key   TEXT PRIMARY KEY,
         value TEXT NOT NULL
     ) WITHOUT ROWID;",
];

/// Additions an older binary runs with unchanged, created at open when missing instead of as a
/// numbered migration, which would make every older binary refuse the file (`TooNew`) for nothing:
/// it never reads the table, and as the triggers are SQLite's they keep counting for its writes
/// too (and for any other program's), so the count stays true across a downgrade and back.
const COMPATIBLE: &str = "
    CREATE TABLE IF NOT EXISTS store_changes (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        rewrites   INTEGER NOT NULL,
        gap_writes INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO store_changes (id, rewrites, gap_writes) VALUES (1, 0, 0);
    CREATE TRIGGER IF NOT EXISTS ticks_deleted AFTER DELETE ON ticks BEGIN
        UPDATE store_changes SET rewrites = rewrites + 1 WHERE id = 1;
    END;
    CREATE TRIGGER IF NOT EXISTS ticks_changed AFTER UPDATE ON ticks BEGIN
        UPDATE store_changes SET rewrites = rewrites + 1 WHERE id = 1;
    END;
    CREATE TRIGGER IF NOT EXISTS ticks_stored_before_newer AFTER INSERT ON ticks
    WHEN EXISTS (SELECT 1 FROM ticks WHERE currency = NEW.currency AND ts > NEW.ts) BEGIN
        UPDATE store_changes SET rewrites = rewrites + 1 WHERE id = 1;
    END;
    CREATE TRIGGER IF NOT EXISTS gaps_inserted AFTER INSERT ON gaps BEGIN
        UPDATE store_changes SET gap_writes = gap_writes + 1 WHERE id = 1;
    END;
    CREATE TRIGGER IF NOT EXISTS gaps_changed AFTER UPDATE ON gaps BEGIN
        UPDATE store_changes SET gap_writes = gap_writes + 1 WHERE id = 1;
    END;
    CREATE TRIGGER IF NOT EXISTS gaps_deleted AFTER DELETE ON gaps BEGIN
        UPDATE store_changes SET gap_writes = gap_writes + 1 WHERE id = 1;
    END;";

/// The names [`COMPATIBLE`] creates, to tell whether a file has them all.
const COMPATIBLE_NAMES: [&str; 7] = [
    "store_changes",
    "ticks_deleted",
    "ticks_changed",
    "ticks_stored_before_newer",
    "gaps_inserted",
    "gaps_changed",
    "gaps_deleted",
];

/// Opens (creating if needed) the file at `path` for writing, in WAL mode, with its schema
/// brought up to date.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    // journal_mode is persistent in the file; setting it needs no lock if already WAL.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_err)?;
    migrate(&conn)?;
    Ok(conn)
}

/// A read-only connection to the file at `path`.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    Ok(conn)
}

/// A private database in memory with the current schema.
pub(crate) fn open_in_memory() -> Result<Connection, StoreError> {
    let conn = Connection::open_in_memory()?;
    migrate(&conn)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        // Each migration and its version bump commit together, so a crash mid-way re-runs it whole.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
    }
    // Only when something is missing: opening an up-to-date file takes no write lock.
    let present: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name IN (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        COMPATIBLE_NAMES,
        |r| r.get(0),
    )?;
    if present < COMPATIBLE_NAMES.len() as i64 {
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {COMPATIBLE} COMMIT;"))
            .inspect_err(|_| {
                let _ = conn.execute_batch("ROLLBACK");
            })?;
    }
    Ok(())
}
