//! [`HistoryStore`]: every tick and every gap of the feed, in one SQLite file.
//!
//! The publisher writes it (a tick is committed before it is published), the history API reads it,
//! and a node that was away fills the stretch it missed from a peer. It is not the vocabulary (that
//! is `ticks`, which the `pricesub` SDK uses without any database) and it does no networking.
//!
//! # Layout
//!
//! - [`HistoryStore`] (here): the async API. Every SQLite call runs on tokio's blocking pool.
//! - `schema`: tables, migrations, WAL and durability settings, how a connection is opened.
//! - `connections`: the writer, the pool of readers, and the watcher behind [`StoreVersion`].
//! - [`version`]: [`StoreVersion`], which changes whenever anything is committed.
//! - [`snapshot`]: [`Snapshot`], every read, inside one read transaction.
//! - `write`: every write: ticks, gaps, a [`Stretch`] filled from a peer, the feed's settings.
//! - `stretch`, `feed_info`: [`Stretch`] and [`FeedInfo`], what those writes take.
//! - `wire_ticks`: [`WireTicks`], ticks read straight into their wire bytes.
//! - [`error`]: [`StoreError`], why the store could not do what was asked.

mod connections;
pub mod error;
mod feed_info;
mod schema;
pub mod snapshot;
mod stretch;
pub mod version;
mod wire_ticks;
mod write;

use std::path::Path;
use std::sync::Arc;

use ticks::{Currency, Gap, GapReason, Interval, Tick, Timedate};

use crate::connections::Connections;
pub use crate::error::StoreError;
pub use crate::feed_info::FeedInfo;
pub use crate::snapshot::{Snapshot, StoreChanges};
pub use crate::stretch::Stretch;
pub use crate::version::StoreVersion;
pub use crate::wire_ticks::WireTicks;

/// The ticks and gaps of the feed, in SQLite. Cheap to clone; the async methods run the blocking
/// SQLite work on tokio's blocking pool.
#[derive(Clone)]
pub struct HistoryStore {
    connections: Arc<Connections>,
}

impl HistoryStore {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<HistoryStore, StoreError> {
        Ok(HistoryStore {
            connections: Arc::new(Connections::open(path.as_ref().to_path_buf())?),
        })
    }

    /// A private store in memory, for tests.
    pub fn open_in_memory() -> Result<HistoryStore, StoreError> {
        Ok(HistoryStore {
            connections: Arc::new(Connections::in_memory()?),
        })
    }

    /// A value that changes whenever anything is committed to the store, by this process or
    /// another: equal versions mean equal contents. Cheap (microseconds, no disk read), so
    /// answers can be cached against it.
    pub fn version(&self) -> Result<StoreVersion, StoreError> {
        self.connections.version()
    }

    /// Runs `f` on a read connection inside one read transaction, blocking: every read through the
    /// [`Snapshot`] sees the same commit.
    pub fn read_blocking<T>(
        &self,
        f: impl FnOnce(&Snapshot<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.connections.read(|conn| {
            // Rolled back on drop: it only ever read.
            let tx = conn.unchecked_transaction()?;
            f(&Snapshot { conn: &tx })
        })
    }

    /// [`HistoryStore::read_blocking`] on tokio's blocking pool: one hand-off for all of it.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Snapshot<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.blocking(move |s| s.read_blocking(f)).await
    }

    /// The newest stored tick of `currency`.
    pub async fn latest(&self, currency: Currency) -> Result<Option<Tick>, StoreError> {
        self.read(move |s| s.newest(currency)).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&HistoryStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Stores a tick; `Ok(false)` if a tick for that currency and slot is already stored (the first
    /// one wins, so replaying a tick is harmless).
    pub async fn insert_tick(&self, tick: Tick) -> Result<bool, StoreError> {
        Ok(self.insert_ticks(vec![tick]).await? == 1)
    }

    /// Stores several ticks in one transaction; returns how many were new.
    pub async fn insert_ticks(&self, ticks: Vec<Tick>) -> Result<usize, StoreError> {
        self.blocking(move |s| s.insert_ticks_blocking(ticks)).await
    }

    /// Bulk insert, blocking: every tick in one transaction, through one prepared statement, so a
    /// caller can stream millions of ticks from an iterator without holding them. Returns how many
    /// were new.
    pub fn insert_ticks_blocking(
        &self,
        ticks: impl IntoIterator<Item = Tick>,
    ) -> Result<usize, StoreError> {
        self.connections.write(|tx| write::insert_ticks(tx, ticks))
    }

    /// Records that `[from, until)` has no tick. Gaps of the same reason that it overlaps or
    /// touches become one. Returns the gap as it now stands in the store (reaching over the gaps
    /// it joined), or `None` for an empty span.
    pub async fn record_gap(&self, gap: Gap) -> Result<Option<Gap>, StoreError> {
        self.blocking(move |s| s.connections.write(|tx| write::record_gap(tx, gap)))
            .await
    }

    /// Records that one slot got no tick.
    pub async fn record_missing_slot(
        &self,
        currency: Currency,
        slot: Timedate,
        interval: Interval,
        reason: GapReason,
    ) -> Result<(), StoreError> {
        self.record_gap(Gap {
            currency,
            from: slot,
            until: slot.next(interval),
            reason,
        })
        .await
        .map(drop)
    }

    /// Makes a stretch of history what another node holds there, in one transaction: inside
    /// `[from, until)` this store's ticks and gaps are replaced by the stretch's (the parts of a
    /// gap reaching outside the stretch stay), so that afterwards both stores answer the same for
    /// it. Returns how many of the stretch's ticks this store did not already hold. A tick outside
    /// the stretch, or a tick or gap of another currency, is refused ([`StoreError::Invalid`]) and
    /// nothing is written.
    pub async fn fill(&self, stretch: Stretch) -> Result<usize, StoreError> {
        self.blocking(move |s| s.connections.write(|tx| write::fill(tx, stretch)))
            .await
    }

    /// Records how the publisher writing this store runs.
    pub async fn set_feed_info(&self, info: FeedInfo) -> Result<(), StoreError> {
        self.blocking(move |s| s.connections.write(|tx| write::set_feed_info(tx, info)))
            .await
    }

    /// How the publisher writing this store runs, if one ever said.
    pub async fn feed_info(&self) -> Result<Option<FeedInfo>, StoreError> {
        self.read(|s| s.feed_info()).await
    }

    /// Raw SQL on the write connection, in a transaction that commits if `f` succeeds: for tests
    /// that must break a store the way a bug, a disk or another program could.
    #[cfg(any(test, feature = "test-faults"))]
    pub fn tamper_blocking<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        self.connections.write(|tx| Ok(f(tx)?))
    }
}

#[cfg(test)]
mod tests;
