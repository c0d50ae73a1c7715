//! The same rules for Mosquitto, for operators who run their own broker (`--broker`).
//!
//! Mosquitto wants a hashed password file (made with `mosquitto_passwd`), an ACL file and a
//! configuration naming both. [`acl_file`] and [`config`] write the last two; the example in
//! `broker-config/mosquitto/` is exactly their output and a test keeps it so.
//! [`websockets_listener`] adds MQTT over WebSocket, under the same rules.

use std::fmt::Write;
use std::path::Path;

use crate::{PUBLISHER_USER, TICKS_FILTER, public_service_topics, publisher_topics};

/// The Mosquitto ACL: anonymous clients read ticks, status, gaps and node liveness; the publisher
/// writes them.
pub fn acl_file() -> String {
    let mut acl = String::from(
        "# pricefeed: anonymous clients may read ticks, the feed status, gaps and node liveness,\n\
         # and write nothing. (Mosquitto applies topic lines before the first `user` line to\n\
         # anonymous clients.)\n",
    );
    let _ = writeln!(acl, "topic read {TICKS_FILTER}");
    for topic in public_service_topics() {
        let _ = writeln!(acl, "topic read {topic}");
    }
    let _ = writeln!(
        acl,
        "\n# Only the publisher writes prices. It reads what anonymous clients read: a node's\n\
         # recorder subscribes with the publisher's credentials."
    );
    let _ = writeln!(acl, "user {PUBLISHER_USER}");
    for topic in publisher_topics() {
        let _ = writeln!(acl, "topic write {topic}");
    }
    let _ = writeln!(acl, "topic read {TICKS_FILTER}");
    for topic in public_service_topics() {
        let _ = writeln!(acl, "topic read {topic}");
    }
    acl
}

/// A Mosquitto configuration with one plain MQTT listener on `bind:port` enforcing the ACL.
pub fn config(bind: &str, port: u16, password_file: &Path, acl_file: &Path) -> String {
    format!(
        "# pricefeed on Mosquitto: anonymous read-only clients, one authenticated publisher.\n\
         per_listener_settings false\n\
         listener {port} {bind}\n\
         allow_anonymous true\n\
         password_file {}\n\
         acl_file {}\n\
         # Keep QoS 1 ticks for slow subscribers rather than dropping them at the default 1000.\n\
         max_queued_messages 10000\n\
         # Forget a session whose client went away (clean session off) after 2 hours, as the\n\
         # embedded broker does; Mosquitto's default keeps it, and its queue, for ever.\n\
         persistent_client_expiration 2h\n\
         # Retained prices live in memory; the publisher re-publishes the latest stored tick at start.\n\
         persistence false\n\
         # Skip the per-delivery check for a client that matches twice (overlapping filters get a\n\
         # copy per filter, as MQTT allows): it compares client ids against every earlier\n\
         # recipient, quadratic in subscribers, and stalls Mosquitto 2.0 beyond a few thousand.\n\
         allow_duplicate_messages true\n",
        password_file.display(),
        acl_file.display()
    )
}

/// A second listener, for MQTT over WebSocket on `bind:port`, to append to [`config`]: with
/// `per_listener_settings false` it has the same anonymous readers, password and ACL.
pub fn websockets_listener(bind: &str, port: u16) -> String {
    format!(
        "# MQTT over WebSocket (browsers, dashboards), with the same ACL.\n\
         listener {port} {bind}\n\
         protocol websockets\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_example_is_what_the_code_writes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mosquitto");
        let acl = std::fs::read_to_string(dir.join("acl")).unwrap();
        assert_eq!(acl, acl_file());
        let conf = std::fs::read_to_string(dir.join("mosquitto.conf")).unwrap();
        assert_eq!(
            conf,
            config(
                "0.0.0.0",
                1883,
                Path::new("/etc/mosquitto/pricefeed.passwd"),
                Path::new("/etc/mosquitto/pricefeed.acl"),
            )
        );
    }

    #[test]
    fn acl_lets_anonymous_read_and_only_the_publisher_write() {
        let acl = acl_file();
        let (anonymous, publisher) = acl.split_once("user pricefeed-publisher").unwrap();
        assert!(anonymous.contains("topic read btc/#\n"));
        assert!(!anonymous.contains("topic write"));
        assert!(publisher.contains("topic write btc/USD\n"));
        assert!(publisher.contains("topic write btc/EUR\n"));
        assert!(publisher.contains("topic write pricefeed/status\n"));
        assert!(publisher.contains("topic write pricefeed/gaps\n"));
        assert!(publisher.contains("topic write pricefeed/nodes/+\n"));
        assert!(anonymous.contains("topic read pricefeed/gaps\n"));
        assert!(
            publisher.contains("topic read btc/#\n"),
            "the recorder reads"
        );
    }
}
