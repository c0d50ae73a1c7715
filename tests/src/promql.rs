//! The metric names a PromQL expression reads, and the series a `/metrics` scrape exports: what
//! keeps a dashboard or an alert rule from naming a metric that does not exist (it would show
//! "No data", or never fire, without any error).
//!
//! Not a PromQL parser: enough of the lexical structure to tell a metric name from a function,
//! an aggregation, a keyword, a label, a string, a number, a duration or a Grafana variable.

use std::collections::BTreeSet;

/// Words that are PromQL syntax, not metric names, where they are not followed by `(`.
const KEYWORDS: [&str; 14] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
];

/// The metric names `expr` selects. Label matchers (`{…}`), ranges and subqueries (`[…]`),
/// grouping label lists (`by (…)`, `on (…)`, …), strings, numbers and durations, Grafana
/// variables (`$job`, `${x}`, `$__rate_interval`), functions and aggregations are left out.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // The identifier before the current one, to skip the label list of a grouping clause.
    let mut previous: Option<String> = None;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i = skip_string(&chars, i);
                previous = None;
            }
            '{' => {
                i = skip_past(&chars, i, '}');
                previous = None;
            }
            '[' => {
                i = skip_past(&chars, i, ']');
                previous = None;
            }
            '#' => {
                // A comment, to the end of the line.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_past(&chars, i, '}');
                } else {
                    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
                previous = None;
            }
            '(' if previous.as_deref().is_some_and(|p| {
                [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&p)
            }) =>
            {
                i = skip_past(&chars, i, ')');
                previous = None;
            }
            c if c.is_ascii_digit() || (c == '.' && next_is_digit(&chars, i)) => {
                // A number, or a duration (5m, 1h30m): digits, a fraction, an exponent, units.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    let exponent_sign = matches!(chars[i], 'e' | 'E')
                        && matches!(chars.get(i + 1), Some('+' | '-'));
                    i += if exponent_sign { 2 } else { 1 };
                }
                previous = None;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                // `sum(…)`, and `sum by (…) (…)`: an aggregation's grouping may come first.
                let following: String = chars[next..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .collect();
                let is_call = chars.get(next) == Some(&'(')
                    || (word != "by"
                        && word != "without"
                        && ["by", "without"].contains(&following.as_str()));
                let is_keyword = KEYWORDS.contains(&word.to_ascii_lowercase().as_str());
                if !is_call && !is_keyword {
                    names.insert(word.clone());
                }
                previous = Some(word);
            }
            c if c.is_whitespace() => i += 1,
            _ => {
                i += 1;
                previous = None;
            }
        }
    }
    names
}

fn next_is_digit(chars: &[char], i: usize) -> bool {
    chars.get(i + 1).is_some_and(char::is_ascii_digit)
}

/// The index past the string starting at `start` (its quote), escapes included.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' && quote != '`' {
            2
        } else {
            1
        };
    }
    i + 1
}

/// The index past the first `close` after `start`, skipping strings on the way.
fn skip_past(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() && chars[i] != close {
        i = if matches!(chars[i], '"' | '\'' | '`') {
            skip_string(chars, i)
        } else {
            i + 1
        };
    }
    i + 1
}

/// The series names a scrape in the Prometheus text format exports: every sample's name, and for
/// every family its `# TYPE` declares, the names its samples take (`F` for a counter or a gauge;
/// `F_bucket`, `F_sum` and `F_count` for a histogram; `F`, `F_sum` and `F_count` for a summary),
/// so that a family with no sample yet (a counter by label, before its first event) counts.
pub fn exported_series(scrape: &str) -> BTreeSet<String> {
    let mut series = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            let (Some(family), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                series.insert(format!("{family}{suffix}"));
            }
        } else if !line.starts_with('#')
            && !line.trim().is_empty()
            && let Some(name) = line.split(['{', ' ']).next()
        {
            series.insert(name.to_string());
        }
    }
    series
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn functions_aggregations_labels_and_variables_are_not_metrics() {
        assert_eq!(
            names(
                r#"histogram_quantile(0.99, sum by (instance, le) (rate(pricefeed_history_request_duration_seconds_bucket{job=~"$job", instance=~"$instance"}[$__rate_interval])))"#
            ),
            ["pricefeed_history_request_duration_seconds_bucket"]
        );
        assert_eq!(
            names(
                "pricefeed_newest_tick_age_seconds\n  > on (job, instance) group_left ()\n3 * pricefeed_interval_seconds"
            ),
            [
                "pricefeed_interval_seconds",
                "pricefeed_newest_tick_age_seconds"
            ]
        );
        assert_eq!(
            names(
                r#"sum without(kind)(increase(a_total{kind="x}y"}[5m] offset 1h30m)) / ignoring(kind) b unless on(job) c == bool 1e-3"#
            ),
            ["a_total", "b", "c"]
        );
        assert_eq!(
            names(r#"label_values(pricefeed_interval_seconds{job=~"$job"}, instance)"#),
            ["instance", "pricefeed_interval_seconds"],
            "a label as a bare argument reads like a metric: the caller knows label_values"
        );
        assert_eq!(names("up{job=~\"pricefeed.*\"} == 0 and ${x} > .5"), ["up"]);
    }

    #[test]
    fn a_histogram_exports_its_suffixed_series_and_not_its_family_name() {
        let scrape = "# HELP h Latency.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 0\n\
                      # TYPE c_total counter\n# TYPE g gauge\ng 1\nx{a=\"b\"} 2\n";
        let series = exported_series(scrape);
        for name in ["h_bucket", "h_sum", "h_count", "c_total", "g", "x"] {
            assert!(series.contains(name), "{name} in {series:?}");
        }
        assert!(!series.contains("h"), "{series:?}");
    }
}
