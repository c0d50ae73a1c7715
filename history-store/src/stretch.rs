//! [`Stretch`]: a piece of one currency's history as another node holds it.

use ticks::{Currency, Gap, Tick, Timedate};

/// A stretch `[from, until)` of one currency's history as another node holds it: every tick and
/// every gap it has there, which [`HistoryStore::fill`](crate::HistoryStore::fill) writes over
/// what this store holds for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stretch {
    pub currency: Currency,
    pub from: Timedate,
    pub until: Timedate,
    /// All of them inside `[from, until)` and of `currency`.
    pub ticks: Vec<Tick>,
    /// Of `currency`; the parts outside `[from, until)` are ignored.
    pub gaps: Vec<Gap>,
}
