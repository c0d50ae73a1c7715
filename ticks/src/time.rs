//! Time on the feed: [`Timedate`] is a slot start in UTC, [`Interval`] is the slot length.
//!
//! Slots are aligned to the Unix epoch, so every node and every restart agrees on the grid: with a
//! 5 s interval the slots start at :00, :05, :10… of every minute, and a tick's `timedate` is both its
//! time and, with its currency, its identity.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant with millisecond resolution, printed as RFC 3339 with `Z`: whole seconds when it
/// falls on one (`2026-11-24T01:40:05Z`), milliseconds otherwise (only sub-second test intervals
/// produce those).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timedate(i64);

/// Earliest and latest accepted instants: year 1970 to year 9999, so every value prints as a
/// four-digit-year RFC 3339 timestamp.
const MIN_MS: i64 = 0;
const MAX_MS: i64 = 253_402_300_799_999;

/// Why a text is not a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimedateError {
    #[error("{0:?} is neither an RFC 3339 time (2026-11-24T01:40:05Z) nor unix seconds")]
    Unparseable(String),
    #[error("{0:?} is outside the years 1970 to 9999")]
    OutOfRange(String),
}

impl Timedate {
    /// The earliest instant there is: 1970-01-01T00:00:00Z.
    pub const EPOCH: Timedate = Timedate(MIN_MS);

    /// From milliseconds since the Unix epoch; `None` outside the years 1970–9999.
    pub fn from_unix_millis(ms: i64) -> Option<Timedate> {
        (MIN_MS..=MAX_MS).contains(&ms).then_some(Timedate(ms))
    }

    pub fn unix_millis(self) -> i64 {
        self.0
    }

    /// The current wall-clock time.
    pub fn now() -> Timedate {
        Timedate::from_datetime(Utc::now())
    }

    /// Truncates to the millisecond.
    pub fn from_datetime(t: DateTime<Utc>) -> Timedate {
        Timedate(t.timestamp_millis().clamp(MIN_MS, MAX_MS))
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.0)
            .single()
            .expect("range checked on construction")
    }

    /// This time plus a duration, saturating at the end of the supported range.
    pub fn saturating_add(self, d: Duration) -> Timedate {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timedate(self.0.saturating_add(ms).min(MAX_MS))
    }

    /// This time minus a duration, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Timedate {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timedate(self.0.saturating_sub(ms).max(MIN_MS))
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn duration_since(self, earlier: Timedate) -> Duration {
        Duration::from_millis(u64::try_from(self.0 - earlier.0).unwrap_or(0))
    }

    /// Parses a time a user or client wrote: RFC 3339 with any offset, or unix seconds (optionally
    /// with a fraction). Sub-millisecond digits round *up*, so an inclusive `since` never admits a
    /// tick that is earlier than what was asked for.
    pub fn parse_user(s: &str) -> Result<Timedate, TimedateError> {
        let s = s.trim();
        let unparseable = || TimedateError::Unparseable(s.to_string());
        let out_of_range = || TimedateError::OutOfRange(s.to_string());
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
            if secs.is_empty() || frac.contains('.') || (s.contains('.') && frac.is_empty()) {
                return Err(unparseable());
            }
            let secs: i64 = secs.parse().map_err(|_| out_of_range())?;
            let mut ms = secs.checked_mul(1000).ok_or_else(out_of_range)?;
            let frac_ms: String = frac.chars().chain("000".chars()).take(3).collect();
            ms += frac_ms.parse::<i64>().unwrap_or(0);
            if frac.len() > 3 && frac[3..].bytes().any(|b| b != b'0') {
                ms += 1;
            }
            return Timedate::from_unix_millis(ms).ok_or_else(out_of_range);
        }
        let t = DateTime::parse_from_rfc3339(s).map_err(|_| unparseable())?;
        let nanos_below_ms = t.timestamp_subsec_nanos() % 1_000_000;
        let ms = t.timestamp_millis() + i64::from(nanos_below_ms > 0);
        Timedate::from_unix_millis(ms).ok_or_else(out_of_range)
    }
}

impl Timedate {
    /// Appends the RFC 3339 text (what [`Display`](fmt::Display) prints) without allocating.
    /// History answers print thousands of these, so this avoids chrono's general formatter.
    pub fn write_to(self, out: &mut Vec<u8>) {
        let ms = self.0;
        let days = ms.div_euclid(86_400_000);
        let in_day = ms.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        let (h, m, s, milli) = (
            in_day / 3_600_000,
            in_day / 60_000 % 60,
            in_day / 1000 % 60,
            in_day % 1000,
        );
        // Filled in place and appended at once: one capacity check, not one per byte.
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let two = |text: &mut [u8; 24], at: usize, v: i64| {
            text[at] = b'0' + (v / 10) as u8;
            text[at + 1] = b'0' + (v % 10) as u8;
        };
        two(&mut text, 0, year / 100);
        two(&mut text, 2, year % 100);
        two(&mut text, 5, month);
        two(&mut text, 8, day);
        two(&mut text, 11, h);
        two(&mut text, 14, m);
        two(&mut text, 17, s);
        if milli != 0 {
            text[20] = b'0' + (milli / 100) as u8;
            two(&mut text, 21, milli % 100);
            out.extend_from_slice(&text);
        } else {
            text[19] = b'Z';
            out.extend_from_slice(&text[..20]);
        }
    }
}

impl Timedate {
    /// Reads exactly what [`Timedate::write_to`] writes (`2026-11-24T01:40:05Z` or
    /// `2026-11-24T01:40:05.250Z`), and nothing else: `None` for any other text, which then goes
    /// the general way. Every tick on the wire is in this form, and a backfilling client reads
    /// thousands; this reads one without chrono's general parser.
    pub fn parse_printed(s: &str) -> Option<Timedate> {
        let b = s.as_bytes();
        let (&last, b) = b.split_last()?;
        if last != b'Z' || !(b.len() == 19 || b.len() == 23) {
            return None;
        }
        let digits = |at: usize, n: usize| -> Option<i64> {
            b.get(at..at + n)?.iter().try_fold(0i64, |v, &d| {
                d.is_ascii_digit().then(|| v * 10 + i64::from(d - b'0'))
            })
        };
        let punctuation = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
        if punctuation.iter().any(|&(at, c)| b[at] != c) {
            return None;
        }
        let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
        let (h, m, sec) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
        let milli = match b.len() {
            // Printed with milliseconds only when there are some.
            23 if b[19] == b'.' => digits(20, 3).filter(|&ms| ms > 0)?,
            23 => return None,
            _ => 0,
        };
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let month_days = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if !(1..=12).contains(&month) || day < 1 || day > month_days[month as usize - 1] {
            return None;
        }
        // A leap second (`:60`) is left to the general parser.
        if h > 23 || m > 59 || sec > 59 {
            return None;
        }
        let days = days_from_civil(year, month, day);
        Timedate::from_unix_millis(
            days * 86_400_000 + h * 3_600_000 + m * 60_000 + sec * 1000 + milli,
        )
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm; the inverse
/// of [`civil_from_days`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timedate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::with_capacity(24);
        self.write_to(&mut out);
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for Timedate {
    type Err = TimedateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timedate::parse_user(s)
    }
}

impl Serialize for Timedate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timedate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s: &str = Deserialize::deserialize(deserializer)?;
        if let Some(t) = Timedate::parse_printed(s) {
            return Ok(t);
        }
        // On the wire only RFC 3339 is a timedate; unix seconds are a convenience for people.
        if !s.contains('T') {
            return Err(serde::de::Error::custom(TimedateError::Unparseable(
                s.into(),
            )));
        }
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The slot length. At least 100 ms (tests and demos), at most one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interval(u64);

impl Interval {
    pub const MIN: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(86_400);
    /// The product's interval: a tick every 5 s.
    pub const DEFAULT: Interval = Interval(5_000);

    /// A whole number of milliseconds between [`Interval::MIN`] and [`Interval::MAX`].
    pub fn new(d: Duration) -> Result<Interval, String> {
        if d < Self::MIN || d > Self::MAX {
            return Err(format!(
                "interval {} is outside 100ms..=24h",
                humantime::format_duration(d)
            ));
        }
        if !d.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(format!(
                "interval {} is not a whole number of milliseconds",
                humantime::format_duration(d)
            ));
        }
        Ok(Interval(d.as_millis() as u64))
    }

    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }

    pub fn as_millis(self) -> i64 {
        self.0 as i64
    }

    /// The start of the slot that contains `t`.
    pub fn slot_of(self, t: Timedate) -> Timedate {
        Timedate(t.0 - t.0.rem_euclid(self.as_millis()))
    }

    /// The first slot start at or after `t`.
    pub fn slot_at_or_after(self, t: Timedate) -> Timedate {
        let start = self.slot_of(t);
        if start == t { start } else { start.next(self) }
    }

    /// Is `t` on the grid?
    pub fn is_slot_start(self, t: Timedate) -> bool {
        t.0.rem_euclid(self.as_millis()) == 0
    }
}

impl Timedate {
    /// The slot after this one on the grid of `interval`.
    pub fn next(self, interval: Interval) -> Timedate {
        Timedate((self.0 + interval.as_millis()).min(MAX_MS))
    }
}

/// One unit, machine-readable and accepted back by `FromStr`: `5s`, `250ms`, `1500ms`, `1m`.
impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ms if ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            ms if ms % 1000 == 0 => write!(f, "{}s", ms / 1000),
            ms => write!(f, "{ms}ms"),
        }
    }
}

impl FromStr for Interval {
    type Err = String;

    /// `5s`, `250ms`, `1m`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration such as 5s or 250ms ({e})"))?;
        Interval::new(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timedate {
        s.parse().unwrap()
    }

    #[test]
    fn prints_whole_seconds_in_utc_with_z() {
        assert_eq!(
            t("2026-11-24T01:40:05Z").to_string(),
            "2026-11-24T01:40:05Z"
        );
        assert_eq!(
            t("2026-11-24T02:40:05+01:00").to_string(),
            "2026-11-24T01:40:05Z"
        );
        assert_eq!(
            t("2026-11-24T01:40:05.250Z").to_string(),
            "2026-11-24T01:40:05.250Z"
        );
        assert_eq!(t("1764027605").to_string(), "2025-11-24T23:40:05Z");
        assert_eq!(t("1764027605.25").to_string(), "2025-11-24T23:40:05.250Z");
    }

    #[test]
    fn the_fast_writer_agrees_with_chrono_across_the_range() {
        let mut next = crate::xorshift(0x2545_f491_4f6c_dd1d);
        let mut ms_values = vec![
            0,
            1,
            999,
            1000,
            86_399_999,
            951_782_400_000,
            4_107_542_400_000,
            MAX_MS,
        ];
        for _ in 0..20_000 {
            ms_values.push((next() % (MAX_MS as u64)) as i64);
        }
        for ms in ms_values {
            let t = Timedate::from_unix_millis(ms).unwrap();
            let format = if ms % 1000 == 0 {
                chrono::SecondsFormat::Secs
            } else {
                chrono::SecondsFormat::Millis
            };
            assert_eq!(
                t.to_string(),
                t.to_datetime().to_rfc3339_opts(format, true),
                "{ms}"
            );
        }
    }

    /// The short reader takes back every printed time, and for any other text either declines
    /// or agrees with the general parser.
    #[test]
    fn the_fast_reader_reads_what_prints_and_agrees_with_chrono_on_the_rest() {
        let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut texts: Vec<String> = [
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "2000-02-29T12:00:00Z",
            "2100-02-29T12:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-10T00:00:00Z",
            "2024-01-00T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T23:60:00Z",
            "2016-12-31T23:59:60Z",
            "2024-01-01T00:00:00.000Z",
            "2024-01-01T00:00:00.5Z",
            "2024-01-01T00:00:00,500Z",
            "2024-01-01t00:00:00Z",
            "2024-01-01T00:00:00z",
            "2024-01-01T00:00:00+00:00",
            "2024-01-01 00:00:00Z",
            "+024-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "",
            "Z",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for _ in 0..50_000 {
            let t = Timedate::from_unix_millis((next() % MAX_MS as u64) as i64).unwrap();
            let text = t.to_string();
            assert_eq!(Timedate::parse_printed(&text), Some(t), "{text}");
            // The same text with one byte changed to a digit or a separator.
            let mut bytes = text.into_bytes();
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = b"0123456789-:T.Z"[(next() % 15) as usize];
            texts.push(String::from_utf8(bytes).unwrap());
        }
        for text in &texts {
            if let Some(t) = Timedate::parse_printed(text) {
                assert_eq!(Ok(t), Timedate::parse_user(text), "{text}");
                assert_eq!(t.to_string(), *text);
            }
        }
        assert!(Timedate::parse_printed("2016-12-31T23:59:60Z").is_none());
        assert!(Timedate::parse_printed("2024-01-01T00:00:00.000Z").is_none());
    }

    #[test]
    fn inclusive_since_rounds_up_below_a_millisecond() {
        assert_eq!(
            t("2026-11-24T01:40:05.0001Z").to_string(),
            "2026-11-24T01:40:05.001Z"
        );
        assert_eq!(t("1764027605.0001").to_string(), "2025-11-24T23:40:05.001Z");
        assert_eq!(t("1764027605.000").to_string(), "2025-11-24T23:40:05Z");
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for bad in [
            "",
            "garbage",
            "2026-13-01T00:00:00Z",
            "2026-11-24",
            "1.2.3",
            "12.",
            ".5",
            "-5",
            "2026-11-24 01:40:05",
        ] {
            assert!(
                matches!(
                    Timedate::parse_user(bad),
                    Err(TimedateError::Unparseable(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Timedate::parse_user("99999999999999999999"),
            Err(TimedateError::OutOfRange(_))
        ));
        assert!(matches!(
            Timedate::parse_user("1969-12-31T23:59:59Z"),
            Err(TimedateError::OutOfRange(_))
        ));
    }

    #[test]
    fn wire_form_is_rfc3339_only() {
        let td: Timedate = serde_json::from_str("\"2026-11-24T01:40:05Z\"").unwrap();
        assert_eq!(
            serde_json::to_string(&td).unwrap(),
            "\"2026-11-24T01:40:05Z\""
        );
        assert!(serde_json::from_str::<Timedate>("\"1764027605\"").is_err());
    }

    #[test]
    fn slots_align_to_the_wall_clock() {
        let i = Interval::DEFAULT;
        assert_eq!(
            i.slot_of(t("2026-11-24T01:40:07.999Z")),
            t("2026-11-24T01:40:05Z")
        );
        assert_eq!(
            i.slot_of(t("2026-11-24T01:40:05Z")),
            t("2026-11-24T01:40:05Z")
        );
        assert_eq!(
            i.slot_at_or_after(t("2026-11-24T01:40:05Z")),
            t("2026-11-24T01:40:05Z")
        );
        assert_eq!(
            i.slot_at_or_after(t("2026-11-24T01:40:05.001Z")),
            t("2026-11-24T01:40:10Z")
        );
        assert!(i.is_slot_start(t("2026-11-24T01:40:00Z")));
        assert!(!i.is_slot_start(t("2026-11-24T01:40:01Z")));
        let fast: Interval = "250ms".parse().unwrap();
        assert_eq!(
            fast.slot_of(t("2026-11-24T01:40:05.600Z")),
            t("2026-11-24T01:40:05.500Z")
        );
    }

    #[test]
    fn intervals_print_in_one_unit_and_parse_back() {
        for (text, ms) in [
            ("5s", 5000),
            ("250ms", 250),
            ("1500ms", 1500),
            ("1m", 60_000),
            ("2h", 7_200_000),
        ] {
            let i = Interval::new(Duration::from_millis(ms)).unwrap();
            assert_eq!(i.to_string(), text);
            assert_eq!(text.parse::<Interval>().unwrap(), i);
        }
    }

    #[test]
    fn interval_bounds() {
        assert_eq!("5s".parse::<Interval>().unwrap(), Interval::DEFAULT);
        assert_eq!("100ms".parse::<Interval>().unwrap().as_millis(), 100);
        assert!("99ms".parse::<Interval>().is_err());
        assert!("2days".parse::<Interval>().is_err());
        assert!("fast".parse::<Interval>().is_err());
        assert!(Interval::new(Duration::from_micros(100_500)).is_err());
    }
}
