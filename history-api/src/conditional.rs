//! What lets a cache in front (a CDN, a reverse proxy, the client's own) keep a `/v1/ticks`
//! answer and ask again cheaply: its entity tag, the `If-None-Match` test, and `Cache-Control`.
//!
//! The entity tag is a hash of the body's bytes, so it is strong (same tag, same bytes) and the
//! same on every replica and after every restart that serves the same bytes: XXH3-64 with seed 0
//! (a published algorithm whose value does not depend on the process or the platform) of the body
//! with each tick object replaced by its own XXH3-64 (8 bytes, little-endian) and the commas
//! between tick objects left out ([`etag`] computes it from a body). Each tick's own hash is kept
//! with the ticks held in memory, so an answer's tag hashes about a seventh of its bytes; a body
//! without ticks is tagged with the XXH3-64 of its bytes.

use std::hash::Hasher as _;

use axum::http::HeaderValue;
use axum::http::header::{HeaderMap, IF_NONE_MATCH};
use ticks::{Interval, Timedate};

/// A closed page never changes: any cache may keep it for a day without asking again.
pub(crate) const CLOSED: HeaderValue = HeaderValue::from_static("public, max-age=86400, immutable");

/// The XXH3-64 of one tick object, as it enters an answer's tag.
pub(crate) fn tick_tag(object: &[u8]) -> [u8; 8] {
    twox_hash::XxHash3_64::oneshot(object).to_le_bytes()
}

/// An answer's entity tag, computed as its body is written: its text as it is, its ticks by their
/// own tags (see the module's documentation).
pub(crate) struct Tagger(twox_hash::XxHash3_64);

impl Default for Tagger {
    fn default() -> Tagger {
        Tagger(twox_hash::XxHash3_64::with_seed(0))
    }
}

impl Tagger {
    pub(crate) fn text(&mut self, text: &[u8]) {
        self.0.write(text);
    }

    /// The tags of consecutive ticks, 8 bytes each ([`tick_tag`]).
    pub(crate) fn ticks(&mut self, tags: &[u8]) {
        self.0.write(tags);
    }

    /// The strong entity tag: `"` sixteen hex digits `"`.
    pub(crate) fn finish(&self) -> HeaderValue {
        let hash = self.0.finish();
        HeaderValue::from_str(&format!("\"{hash:016x}\""))
            .expect("hex digits in quotes are a valid header")
    }
}

/// The entity tag of a body, from its bytes: what [`Tagger`] computes while an answer is written
/// (and the tag of the live page's files, which hold no ticks). Tick objects are the elements of
/// the arrays inside `"ticks":{…}`; they hold no brackets.
pub(crate) fn etag(body: &[u8]) -> HeaderValue {
    const TICKS: &[u8] = b"\"ticks\":{";
    let mut tagger = Tagger::default();
    let Some(at) = body.windows(TICKS.len()).position(|w| w == TICKS) else {
        tagger.text(body);
        return tagger.finish();
    };
    let mut i = at + TICKS.len();
    tagger.text(&body[..i]);
    loop {
        // Text up to the next currency's array, or to the end of the ticks.
        let next = body[i..].iter().position(|&b| b == b'[' || b == b'}');
        let Some(j) = next.map(|n| i + n).filter(|&j| body[j] == b'[') else {
            tagger.text(&body[i..]);
            return tagger.finish();
        };
        tagger.text(&body[i..=j]);
        i = j + 1;
        while body.get(i) == Some(&b'{') {
            let Some(end) = body[i..].iter().position(|&b| b == b'}').map(|n| i + n + 1) else {
                break;
            };
            tagger.ticks(&tick_tag(&body[i..end]));
            i = end + usize::from(body.get(end) == Some(&b','));
        }
    }
}

/// Whether the request's `If-None-Match` lists `etag` (or is `*`): the client holds these bytes.
/// Compared weakly, as RFC 9110 asks for `If-None-Match` (a `W/` prefix is ignored). Entries that
/// are not entity tags are skipped, so a malformed header is as if absent.
pub(crate) fn none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .any(|value| tags(value.as_bytes()).any(|tag| tag == b"*" || tag == ours))
}

/// The entries of one `If-None-Match` field value: `*`, or each entity tag with its quotes and
/// without a `W/` prefix. Commas inside quotes belong to the tag.
fn tags(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        loop {
            let start = rest
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b','))?;
            rest = &rest[start..];
            if rest.starts_with(b"W/") {
                rest = &rest[2..];
            }
            let end = match rest.first() {
                Some(b'"') => rest[1..].iter().position(|&b| b == b'"').map(|i| i + 2),
                Some(b'*') => Some(1),
                _ => None,
            };
            match end {
                // Only a whole entry counts: what follows must end it.
                Some(end) if matches!(rest.get(end), None | Some(b' ' | b'\t' | b',')) => {
                    let (tag, after) = rest.split_at(end);
                    rest = after;
                    return Some(tag);
                }
                // Not an entity tag: skip to the next comma, or give up on an unclosed quote.
                Some(_) | None => {
                    let next = rest.iter().position(|&b| b == b',')?;
                    rest = &rest[next..];
                }
            }
        }
    })
}

/// `Cache-Control` of an answer that reaches the live edge: until the next slot starts, when the
/// next tick may be stored and change it. Whole seconds, rounded down, so never past that moment.
pub(crate) fn open(interval: Interval, now: Timedate) -> HeaderValue {
    let next = interval.slot_of(now).next(interval);
    let seconds = (next.unix_millis() - now.unix_millis()).clamp(0, interval.as_millis()) / 1000;
    HeaderValue::from_str(&format!("public, max-age={seconds}")).expect("digits are a valid header")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(IF_NONE_MATCH, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn matches_any_listed_tag_and_skips_garbage() {
        let tag = etag(b"{}");
        let ours = tag.to_str().unwrap().to_string();
        assert_eq!(ours.len(), 18);
        assert!(ours.starts_with('"') && ours.ends_with('"'));
        let matching: [&str; 7] = [
            &ours,
            &format!("W/{ours}"),
            &format!("\"x\", {ours}"),
            &format!("\"a,b\",{ours} ,\"c\""),
            &format!("garbage, {ours}"),
            "*",
            &format!(" \t{ours}\t"),
        ];
        for value in matching {
            assert!(none_match(&headers(&[value.as_bytes()]), &tag), "{value}");
        }
        // Two fields count as one list.
        assert!(none_match(&headers(&[b"\"x\"", ours.as_bytes()]), &tag));
        let other = ours.replace(|c: char| c.is_ascii_hexdigit(), "0");
        let unquoted = ours.trim_matches('"').to_string();
        let trailing = format!("{ours}x");
        let not_matching: [&[u8]; 9] = [
            b"",
            other.as_bytes(),
            unquoted.as_bytes(),
            b"\"unclosed",
            b",,,",
            b"W/",
            b"**",
            &[0xff, 0xfe],
            trailing.as_bytes(),
        ];
        for value in not_matching {
            assert!(
                !none_match(&headers(&[value]), &tag),
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        assert!(!none_match(&HeaderMap::new(), &tag));
    }

    #[test]
    fn the_tag_is_the_same_everywhere() {
        // XXH3-64 of these bytes with seed 0: a different process, platform or version of this
        // server must give the same tag for the same bytes.
        assert_eq!(etag(b"").to_str().unwrap(), "\"2d06800538d394c2\"");
        assert_ne!(etag(b"a"), etag(b"b"));
    }

    /// A page's tag covers every byte outside its tick objects and every tick object, and does
    /// not depend on how the ticks were cut into pieces (the tests of the tail and the blocks
    /// compare it across them).
    #[test]
    fn a_tag_changes_with_any_tick_or_text() {
        let page = |usd: &str, eur: &str, tail: &str| {
            format!(
                r#"{{"since":"x","currencies":["USD","EUR"],"ticks":{{"USD":[{usd}],"EUR":[{eur}]}},"gaps":[]{tail}}}"#
            )
        };
        let a = r#"{"timedate":"2026-11-24T01:40:05Z","price":97001.5}"#;
        let b = r#"{"timedate":"2026-11-24T01:40:10Z","price":97001.5}"#;
        let c = r#"{"timedate":"2026-11-24T01:40:10Z","price":97001.6}"#;
        let tags = [
            page(&format!("{a},{b}"), a, ""),
            page(&format!("{a},{c}"), a, ""),
            page(a, &format!("{a},{b}"), ""),
            page(&format!("{a},{b}"), "", ""),
            page(&format!("{a},{b}"), a, r#","demo":true"#),
            page("", "", ""),
        ]
        .map(|body| etag(body.as_bytes()));
        for (i, x) in tags.iter().enumerate() {
            for y in &tags[i + 1..] {
                assert_ne!(x, y);
            }
        }
        // The same body, the same tag; and a body without ticks is the XXH3 of its bytes.
        assert_eq!(
            etag(page(a, b, "").as_bytes()),
            etag(page(a, b, "").as_bytes())
        );
        let mut whole = Tagger::default();
        whole.text(br#"{"status":"ok"}"#);
        assert_eq!(etag(br#"{"status":"ok"}"#), whole.finish());
    }

    #[test]
    fn an_open_answer_is_kept_until_the_next_slot() {
        let five = Interval::DEFAULT;
        let at = |ms| Timedate::from_unix_millis(ms).unwrap();
        assert_eq!(open(five, at(10_000)), "public, max-age=5");
        assert_eq!(open(five, at(10_001)), "public, max-age=4");
        assert_eq!(open(five, at(14_999)), "public, max-age=0");
        let quarter: Interval = "250ms".parse().unwrap();
        assert_eq!(open(quarter, at(10_000)), "public, max-age=0");
    }
}
