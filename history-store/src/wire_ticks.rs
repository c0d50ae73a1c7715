//! [`WireTicks`]: ticks of one currency read straight into their wire bytes.

use ticks::{PriceError, Tick, Timedate};

/// Ticks of one currency, oldest first, as the exact bytes of their JSON objects (what
/// [`Tick::write_wire`] writes) joined by commas, with the time of each. A history answer copies
/// runs of these bytes instead of decoding each stored row into a [`Tick`] and encoding it again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WireTicks {
    times: Vec<Timedate>,
    wire: Vec<u8>,
    /// `wire[..ends[i]]` ends with tick `i`.
    ends: Vec<usize>,
}

impl WireTicks {
    /// Room for `n` ticks.
    pub fn with_capacity(n: usize) -> WireTicks {
        WireTicks {
            times: Vec::with_capacity(n),
            // A tick is about 53 bytes on the wire at whole seconds.
            wire: Vec::with_capacity(n * 56),
            ends: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// The time of each tick, oldest first.
    pub fn times(&self) -> &[Timedate] {
        &self.times
    }

    /// The bytes of ticks `from..from + n`, commas between them.
    pub fn run(&self, from: usize, n: usize) -> &[u8] {
        &self.wire[self.span(from, n)]
    }

    /// Where [`WireTicks::run`]'s bytes lie in [`WireTicks::wire`].
    pub fn span(&self, from: usize, n: usize) -> std::ops::Range<usize> {
        if n == 0 {
            return 0..0;
        }
        let start = if from == 0 {
            0
        } else {
            self.ends[from - 1] + 1
        };
        start..self.ends[from + n - 1]
    }

    /// The bytes of every tick held, commas between them.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// Appends a tick newer than every tick held.
    pub fn push(&mut self, tick: &Tick) {
        self.comma();
        tick.write_wire(&mut self.wire);
        self.pushed(tick.timedate);
    }

    /// Appends the tick at `timedate` whose price is the decimal `price` (see
    /// [`ticks::write_wire_from_text`]); newer than every tick held.
    pub fn push_text(&mut self, timedate: Timedate, price: &str) -> Result<(), PriceError> {
        let len = self.wire.len();
        self.comma();
        ticks::write_wire_from_text(&mut self.wire, timedate, price).inspect_err(|_| {
            self.wire.truncate(len);
        })?;
        self.pushed(timedate);
        Ok(())
    }

    fn comma(&mut self) {
        if !self.times.is_empty() {
            self.wire.push(b',');
        }
    }

    fn pushed(&mut self, timedate: Timedate) {
        self.times.push(timedate);
        self.ends.push(self.wire.len());
    }

    /// These ticks followed by `newer` (all newer than these), without the oldest beyond `keep`:
    /// [`WireTicks::extend_keeping`] into a copy, copying only what is kept.
    pub fn followed_by(&self, newer: &WireTicks, keep: usize) -> WireTicks {
        let drop = (self.len() + newer.len())
            .saturating_sub(keep)
            .min(self.len());
        let (cut, base) = match drop {
            0 => (0, 0),
            d if d == self.len() => (self.wire.len(), self.wire.len()),
            d => (self.ends[d - 1] + 1, self.ends[d - 1] + 1),
        };
        let kept = self.len() - drop;
        let mut out = WireTicks {
            times: Vec::with_capacity(kept + newer.len()),
            wire: Vec::with_capacity(self.wire.len() - cut + 1 + newer.wire.len()),
            ends: Vec::with_capacity(kept + newer.len()),
        };
        out.times.extend_from_slice(&self.times[drop..]);
        out.wire.extend_from_slice(&self.wire[cut..]);
        out.ends
            .extend(self.ends[drop..].iter().map(|end| end - base));
        out.extend_keeping(newer, keep);
        out
    }

    /// Appends `newer`, whose ticks are all newer than these, then drops the oldest ticks until at
    /// most `keep` are left.
    pub fn extend_keeping(&mut self, newer: &WireTicks, keep: usize) {
        if !newer.is_empty() {
            let base = if self.is_empty() {
                0
            } else {
                self.wire.push(b',');
                self.wire.len()
            };
            self.wire.extend_from_slice(&newer.wire);
            self.times.extend_from_slice(&newer.times);
            self.ends.extend(newer.ends.iter().map(|end| end + base));
        }
        let drop = self.len().saturating_sub(keep);
        if drop == self.len() {
            *self = WireTicks::default();
        } else if drop > 0 {
            // The comma after the last dropped tick goes too.
            let cut = self.ends[drop - 1] + 1;
            self.wire.drain(..cut);
            self.times.drain(..drop);
            self.ends.drain(..drop);
            for end in &mut self.ends {
                *end -= cut;
            }
        }
    }

    /// Frees the room reserved beyond what is held.
    pub fn shrink_to_fit(&mut self) {
        self.times.shrink_to_fit();
        self.wire.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    /// Bytes held, roughly: for a memory budget.
    pub fn heap_bytes(&self) -> usize {
        self.wire.capacity()
            + self.times.capacity() * size_of::<Timedate>()
            + self.ends.capacity() * size_of::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use ticks::Currency;

    use super::*;

    fn tick(s: i64, price: &str) -> Tick {
        Tick {
            currency: Currency::EUR,
            timedate: Timedate::from_unix_millis(s * 1000).unwrap(),
            price: price.parse().unwrap(),
        }
    }

    fn joined(ticks: &[Tick]) -> String {
        let payloads: Vec<String> = ticks.iter().map(Tick::payload).collect();
        payloads.join(",")
    }

    #[test]
    fn runs_are_the_joined_payloads() {
        let all: Vec<Tick> = (0..10).map(|s| tick(s, &format!("{s}.5"))).collect();
        let mut wire = WireTicks::default();
        for (i, t) in all.iter().enumerate() {
            if i % 2 == 0 {
                wire.push(t);
            } else {
                wire.push_text(t.timedate, &format!("{i}.50")).unwrap();
            }
        }
        assert_eq!(wire.len(), 10);
        for from in 0..=10 {
            for n in 0..=10 - from {
                let run = std::str::from_utf8(wire.run(from, n)).unwrap();
                assert_eq!(run, joined(&all[from..from + n]), "{from}+{n}");
            }
        }
        // A price that is not one appends nothing.
        assert!(wire.push_text(all[9].timedate, "NaN").is_err());
        assert_eq!(wire.len(), 10);
        assert_eq!(wire.run(0, 10), joined(&all).as_bytes());
    }

    #[test]
    fn extending_keeps_the_newest() {
        let all: Vec<Tick> = (0..12).map(|s| tick(s, "1")).collect();
        let of = |ticks: &[Tick]| {
            let mut wire = WireTicks::default();
            ticks.iter().for_each(|t| wire.push(t));
            wire
        };
        let mut held = of(&all[..5]);
        held.extend_keeping(&of(&all[5..8]), 6);
        assert_eq!(held, of(&all[2..8]));
        held.extend_keeping(&WireTicks::default(), 6);
        assert_eq!(held, of(&all[2..8]));
        held.extend_keeping(&of(&all[8..12]), 100);
        assert_eq!(held, of(&all[2..12]));
        // The same, into a copy.
        for (base, newer, keep) in [(0..5, 5..8, 6), (2..8, 8..12, 100), (0..5, 5..12, 3)] {
            let mut extended = of(&all[base.clone()]);
            extended.extend_keeping(&of(&all[newer.clone()]), keep);
            let followed = of(&all[base]).followed_by(&of(&all[newer]), keep);
            assert_eq!(followed, extended);
        }
        assert_eq!(of(&[]).followed_by(&of(&all[..3]), 2), of(&all[1..3]));
        assert_eq!(of(&all[..3]).followed_by(&of(&[]), 3), of(&all[..3]));
        held.extend_keeping(&of(&[]), 1);
        assert_eq!(held, of(&all[11..]));
        let mut empty = WireTicks::default();
        empty.extend_keeping(&of(&all[..3]), 2);
        assert_eq!(empty, of(&all[1..3]));
    }
}
