//! The tick and its wire format.
//!
//! The MQTT payload and each tick object in a history answer are the same JSON:
//! `{"timedate":"2026-11-24T01:40:05Z","price":97001.5}`, exactly these two fields in this order.
//! Both are produced by [`Tick::payload`] / the [`WireTick`] serializer and nothing else.

use serde::{Deserialize, Serialize};

use crate::{Currency, Price, Timedate};

/// One observed price for one currency in one slot. `(currency, timedate)` is its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tick {
    pub currency: Currency,
    pub timedate: Timedate,
    pub price: Price,
}

/// The JSON object of a tick: the currency is the topic (or the key it is listed under), not a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireTick {
    pub timedate: Timedate,
    pub price: Price,
}

/// Why a message is not a tick.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("topic {0:?} is not a tick topic")]
    UnknownTopic(String),
    #[error("payload is not a tick object: {0}")]
    Payload(#[from] serde_json::Error),
}

impl Tick {
    /// The MQTT topic of this tick.
    pub fn topic(&self) -> &'static str {
        self.currency.topic()
    }

    /// The JSON object of this tick, without its currency.
    pub fn wire(&self) -> WireTick {
        WireTick {
            timedate: self.timedate,
            price: self.price,
        }
    }

    /// Appends the exact JSON object of this tick: `{"timedate":"…","price":…}`. The MQTT payload
    /// and every tick in a history answer are written by this or by [`write_wire_from_text`].
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        write_object(out, self.timedate, |out| self.price.write_to(out));
    }

    /// The exact MQTT payload: `{"timedate":"…","price":…}`.
    pub fn payload(&self) -> String {
        let mut out = Vec::with_capacity(64);
        self.write_wire(&mut out);
        String::from_utf8(out).expect("the wire format is ASCII")
    }

    /// Reads a tick from an MQTT message.
    pub fn from_message(topic: &str, payload: &[u8]) -> Result<Tick, WireError> {
        let currency =
            Currency::from_topic(topic).ok_or_else(|| WireError::UnknownTopic(topic.into()))?;
        let WireTick { timedate, price } = serde_json::from_slice(payload)?;
        Ok(Tick {
            currency,
            timedate,
            price,
        })
    }

    /// The line `pricesub` and `mosquitto_sub -v` print: topic, space, payload.
    pub fn line(&self) -> String {
        format!("{} {}", self.topic(), self.payload())
    }
}

/// Appends the JSON object of the tick at `timedate` whose price is the decimal `price`: the bytes
/// [`Tick::write_wire`] writes for that tick. A price already in its printed form (as the store
/// keeps it) is copied as it is, without being parsed and printed again; any other text is parsed,
/// so a price that is not one is an error and nothing is appended.
pub fn write_wire_from_text(
    out: &mut Vec<u8>,
    timedate: Timedate,
    price: &str,
) -> Result<(), crate::PriceError> {
    if Price::is_printed_form(price) {
        write_object(out, timedate, |out| out.extend_from_slice(price.as_bytes()));
    } else {
        let price: Price = price.parse()?;
        write_object(out, timedate, |out| price.write_to(out));
    }
    Ok(())
}

fn write_object(out: &mut Vec<u8>, timedate: Timedate, price: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(br#"{"timedate":""#);
    timedate.write_to(out);
    out.extend_from_slice(br#"","price":"#);
    price(out);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_exactly_timedate_then_price() {
        let tick = Tick {
            currency: Currency::USD,
            timedate: "2026-11-24T01:40:05Z".parse().unwrap(),
            price: "97001.50".parse().unwrap(),
        };
        assert_eq!(
            tick.payload(),
            r#"{"timedate":"2026-11-24T01:40:05Z","price":97001.5}"#
        );
        assert_eq!(
            tick.line(),
            r#"btc/USD {"timedate":"2026-11-24T01:40:05Z","price":97001.5}"#
        );
        let back = Tick::from_message("btc/USD", tick.payload().as_bytes()).unwrap();
        assert_eq!(back, tick);
    }

    #[test]
    fn the_serde_form_and_the_payload_writer_agree() {
        for (t, p) in [
            ("2026-11-24T01:40:05Z", "97001.5"),
            ("2026-11-24T01:40:05.250Z", "0.005"),
            ("1970-01-01T00:00:00Z", "1"),
        ] {
            let tick = Tick {
                currency: Currency::EUR,
                timedate: t.parse().unwrap(),
                price: p.parse().unwrap(),
            };
            assert_eq!(serde_json::to_string(&tick.wire()).unwrap(), tick.payload());
        }
    }

    #[test]
    fn the_wire_from_a_price_text_is_the_ticks_wire() {
        let timedate: Timedate = "2026-11-24T01:40:05Z".parse().unwrap();
        for text in [
            "97001.5",
            "97001.50",
            "9.70015e4",
            "1",
            "0.005",
            "60000",
            "1E+3",
        ] {
            let tick = Tick {
                currency: Currency::USD,
                timedate,
                price: text.parse().unwrap(),
            };
            let mut out = vec![b'x'];
            write_wire_from_text(&mut out, timedate, text).unwrap();
            assert_eq!(&out[1..], tick.payload().as_bytes(), "{text}");
        }
        for bad in ["NaN", "-1", "0", "", "1,5"] {
            let mut out = vec![b'x'];
            assert!(
                write_wire_from_text(&mut out, timedate, bad).is_err(),
                "{bad}"
            );
            assert_eq!(out, b"x", "nothing is appended for {bad:?}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_tick() {
        let ok = br#"{"timedate":"2026-11-24T01:40:05Z","price":1}"#;
        assert!(matches!(
            Tick::from_message("btc/GBP", ok),
            Err(WireError::UnknownTopic(_))
        ));
        for bad in [
            &br#"{"timedate":"2026-11-24T01:40:05Z","price":"1"}"#[..],
            br#"{"timedate":"2026-11-24T01:40:05Z","price":1,"extra":2}"#,
            br#"{"timedate":"2026-11-24T01:40:05Z"}"#,
            br#"{"timedate":"yesterday","price":1}"#,
            br#"{"timedate":"2026-11-24T01:40:05Z","price":-1}"#,
            br#"{"timedate":"2026-11-24T01:40:05Z","price":0}"#,
            b"not json",
            b"",
            b"\xff\xfe",
        ] {
            assert!(
                Tick::from_message("btc/EUR", bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
