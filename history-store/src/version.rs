//! [`StoreVersion`]: a value that changes whenever anything is committed to the store.

/// What [`HistoryStore::version`](crate::HistoryStore::version) returns: equal versions of one
/// store mean equal contents, so an answer computed at a version can be reused while the version
/// stays the same. Comparable only between readings of the same `HistoryStore` handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreVersion {
    /// Commits made through this handle's own writer.
    pub(crate) own_commits: u64,
    /// SQLite's `PRAGMA data_version` on a connection kept for asking it: it changes when any
    /// other connection commits, this process's writer or another process's. 0 in memory.
    pub(crate) data_version: i64,
}
