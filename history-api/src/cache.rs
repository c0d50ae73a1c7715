//! [`AnswerCache`]: recent answers, each valid while the store's version is unchanged.
//!
//! Clients that reconnect together ask the same question (everything since the same last tick),
//! and a question about the past has the same answer until the next tick is stored; SQLite's
//! `data_version` says when that happened, whichever process wrote it. Bounded: small answers
//! only, few of them. Each answer is kept with its entity tag, so a repeated question costs no
//! hashing either.

use std::collections::HashMap;
use std::sync::Mutex;

use history_store::StoreVersion;
use ticks::Currency;

use crate::answer::Answer;
use crate::cursor::PageKey;
use crate::query::TicksQuery;

const CACHE_ENTRIES: usize = 64;
const CACHE_MAX_BYTES: usize = 256 * 1024;

type CacheKey = (PageKey, Vec<Currency>, usize);

fn key(query: &TicksQuery) -> CacheKey {
    (query.start, query.currencies.clone(), query.limit)
}

#[derive(Default)]
pub(crate) struct AnswerCache {
    entries: Mutex<HashMap<CacheKey, (StoreVersion, Answer)>>,
}

impl AnswerCache {
    /// The answer to `query` computed at `version`, if kept. Kept in its pieces: they go out in
    /// one write as they are (see `wire`), so joining them would only copy.
    pub(crate) fn get(&self, query: &TicksQuery, version: StoreVersion) -> Option<Answer> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (_, answer) = entries.get(&key(query)).filter(|(v, _)| *v == version)?;
        Some(answer.clone())
    }

    /// Keeps the answer to `query` computed at `version`, unless it is large.
    pub(crate) fn put(&self, query: &TicksQuery, version: StoreVersion, answer: Answer) {
        if answer.len > CACHE_MAX_BYTES {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Entries of another version are dead, and would keep the copy of the tail their answers
        // share memory with: drop them at once. When full, drop all rather than track age.
        if entries.values().next().is_some_and(|(v, _)| *v != version) {
            entries.retain(|_, (v, _)| *v == version);
        }
        if entries.len() >= CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(key(query), (version, answer));
    }
}
