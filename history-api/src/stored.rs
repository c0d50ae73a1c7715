//! The SQLite path of an answer: a page read from the store in one transaction, so that its
//! ticks, bounds and gaps agree with each other.

use history_store::{HistoryStore, StoreError};
use ticks::{Currency, Gap, Tick, Timedate};

use crate::answer::{Assembled, Run, cut, first_time};
use crate::query::TicksQuery;

/// What SQLite holds for one query: per currency, the first `limit + 1` ticks at or after the
/// start key (the page is a prefix of their merge, and the one extra tells whether, and where, the
/// limit cuts it), the bounds, and the gaps from the start on.
pub(crate) struct StoredPage {
    query: TicksQuery,
    lists: Vec<Vec<Tick>>,
    bounds: Vec<Option<(Timedate, Timedate)>>,
    gaps: Vec<Gap>,
}

impl StoredPage {
    /// Reads the page for `query` on the blocking pool.
    pub(crate) async fn read(
        store: &HistoryStore,
        query: &TicksQuery,
    ) -> Result<StoredPage, StoreError> {
        let query = query.clone();
        store
            .read(move |snapshot| {
                let TicksQuery {
                    start,
                    currencies,
                    limit,
                } = &query;
                let mut lists = Vec::with_capacity(currencies.len());
                let mut bounds = Vec::with_capacity(currencies.len());
                for &currency in currencies {
                    lists.push(match first_time(*start, currency) {
                        Some(from) => snapshot.ticks_since(currency, from, limit + 1)?,
                        None => Vec::new(),
                    });
                    bounds.push(
                        snapshot
                            .bounds(currency)?
                            .map(|(oldest, newest)| (oldest.timedate, newest.timedate)),
                    );
                }
                // Gaps up to any end; the ones past the page's end are dropped when assembled.
                let gaps = snapshot.gaps_overlapping(currencies, start.time, None)?;
                Ok(StoredPage {
                    query,
                    lists,
                    bounds,
                    gaps,
                })
            })
            .await
    }

    /// The page, cut at the query's limit.
    pub(crate) fn assemble(&self) -> Assembled<'_> {
        let keyed: Vec<(Currency, &[Tick])> = self
            .query
            .currencies
            .iter()
            .zip(&self.lists)
            .map(|(&c, list)| (c, list.as_slice()))
            .collect();
        let (taken, next) = cut(&keyed, |t| t.timedate, self.query.limit);
        Assembled {
            runs: keyed
                .iter()
                .zip(&taken)
                .map(|(&(c, list), &n)| (c, Run::Ticks(&list[..n])))
                .collect(),
            bounds: self.bounds.clone(),
            gaps: self
                .gaps
                .iter()
                .filter(|gap| next.is_none_or(|end| gap.from < end.time))
                .copied()
                .collect(),
            next,
        }
    }
}
