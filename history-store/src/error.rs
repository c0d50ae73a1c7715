//! [`StoreError`]: why the store could not do what was asked.

use std::path::PathBuf;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the store's schema version {found} is newer than this program knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("the disk holding the store is full")]
    DiskFull(#[source] rusqlite::Error),
    #[error("store query failed")]
    Sqlite(#[source] rusqlite::Error),
    #[error("the store holds a row this program cannot read: {0}")]
    Corrupt(String),
    /// A write that would make the store contradict itself (a tick outside the stretch it fills).
    #[error("refused to write: {0}")]
    Invalid(String),
    #[error("store task failed: {0}")]
    Task(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::DiskFull(e),
            _ => StoreError::Sqlite(e),
        }
    }
}
