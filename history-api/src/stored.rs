//! The SQLite path of an answer: a page read from the store in one transaction, so that its
//! ticks, bounds and gaps agree with each other.

use history_store::{HistoryStore, StoreError, WireTicks};
use ticks::{Currency, Gap, Timedate};

use crate::answer::{Assembled, HeldTicks, Piece, cut, first_time};
use crate::query::TicksQuery;

/// What SQLite holds for one query: the first `limit + 1` ticks of the merged order from the
/// start key, per currency, read as their wire bytes (the page is the first `limit` of them, and
/// the one extra tells whether, and where, the limit cuts it), the bounds, and the gaps from the
/// start on.
pub(crate) struct StoredPage {
    query: TicksQuery,
    lists: Vec<HeldTicks>,
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
                let starts: Vec<(Currency, Timedate)> = currencies
                    .iter()
                    .filter_map(|&c| first_time(*start, c).map(|from| (c, from)))
                    .collect();
                let mut merged = snapshot.merged_wire_ticks(&starts, limit + 1)?.into_iter();
                // A currency past the end of time has no list in the merge, and no ticks.
                let lists = currencies
                    .iter()
                    .map(|&c| {
                        let listed = starts.iter().any(|&(s, _)| s == c);
                        HeldTicks::new(if listed {
                            merged.next().unwrap_or_default()
                        } else {
                            WireTicks::default()
                        })
                    })
                    .collect();
                let mut bounds = Vec::with_capacity(currencies.len());
                for &currency in currencies {
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
        let keyed: Vec<(Currency, &[Timedate])> = self
            .query
            .currencies
            .iter()
            .zip(&self.lists)
            .map(|(&c, list)| (c, list.times()))
            .collect();
        let (taken, next) = cut(&keyed, |t| *t, self.query.limit);
        Assembled {
            runs: keyed
                .iter()
                .zip(&self.lists)
                .zip(&taken)
                .map(|((&(c, _), ticks), &n)| (c, vec![Piece { ticks, from: 0, n }]))
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
