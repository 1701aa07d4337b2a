//! Dead letters: what an endpoint could not deliver within its `max_retry_secs`, written
//! back to the ingest log addressed to its dead-letter endpoint.
//!
//! The log is the hand-off because it is what makes anything durable in Weir: once the
//! letters are in it, the failing endpoint may commit past them, and the dead-letter
//! endpoint gets them like any other event, with its own commits, retries and replays,
//! whatever its kind. A crash between the append and the commit hands them on again (at
//! least once); each letter names its original offset so a consumer can tell.

use std::sync::Arc;

use weir_core::time::now_ms;
use weir_core::{DeadLetterPass, Delivery, Event};

/// The application properties a dead letter carries, besides the original ones.
pub const REASON: &str = "weir-dead-letter-reason";
pub const ENDPOINT: &str = "weir-dead-letter-endpoint";
pub const ROUTE: &str = "weir-dead-letter-route";
pub const OFFSET: &str = "weir-dead-letter-offset";
pub const ENQUEUED: &str = "weir-dead-letter-enqueued-time";
const PREFIX: &str = "weir-dead-letter-";

/// The letter for one delivery `origin` could not make: the event as the endpoint would
/// have had it (with its enrichments), marked with why and where it was going.
pub(crate) fn letter(d: &Delivery, origin: &str, pass: &DeadLetterPass) -> Event {
    let mut e = Event::clone(&d.event);
    // Devices cannot forge the marks: any property of theirs with the prefix goes.
    e.properties.retain(|(k, _)| !has_prefix(k));
    for (k, v) in &d.enrichments {
        if !e.properties.iter().any(|(have, _)| have == k) {
            e.properties.push((k.clone(), v.clone()));
        }
    }
    stamp(e, pass.reason.clone(), origin, &d.route, &pass.target)
}

/// Marks `e` (a copy of the original, its offset and enqueued time still the original's)
/// with why, from which endpoint and route it is a letter, and addresses it to `target`.
fn stamp(mut e: Event, reason: String, endpoint: &str, route: &str, target: &Arc<str>) -> Event {
    e.properties.extend([
        (REASON.to_owned(), reason),
        (ENDPOINT.to_owned(), endpoint.to_owned()),
        (ROUTE.to_owned(), route.to_owned()),
        (OFFSET.to_owned(), e.offset.to_string()),
        (
            ENQUEUED.to_owned(),
            weir_rules::view::rfc3339_ms(e.enqueued_ms),
        ),
    ]);
    e.dead_letter = Some(Arc::clone(target));
    // A new record: the log gives it its own time and offset, and it is no retransmission.
    e.enqueued_ms = now_ms();
    e.packet_id = None;
    e.redelivered = false;
    e
}

/// What `ENDPOINT` says on a late event an insight hands to its `late` endpoint (`ROUTE`
/// names the insight).
pub const LATE_FOR: &str = "$insight";

/// An event that came after its insight window was closed, for the insight's `late`
/// endpoint: the letter's id is `late/<insight>/<offset>`, so a replay recognises it.
pub(crate) fn late(event: &Event, insight: &str, target: &Arc<str>) -> Event {
    let mut e = Event::clone(event);
    e.properties.retain(|(k, _)| !has_prefix(k));
    let reason = format!("later than the allowed lateness of insight '{insight}'");
    stamp(e, reason, LATE_FOR, insight, target)
}

/// The id a late letter is known by: `late/<insight>/<original offset>`.
pub(crate) fn late_id(insight: &str, offset: u64) -> String {
    format!("late/{insight}/{offset}")
}

/// The id of `e` if it is a late letter.
pub(crate) fn late_letter_id(e: &Event) -> Option<String> {
    e.dead_letter.as_ref()?;
    if e.property(ENDPOINT)? != LATE_FOR {
        return None;
    }
    let offset = e.property(OFFSET)?.parse().ok()?;
    Some(late_id(e.property(ROUTE)?, offset))
}

fn has_prefix(k: &str) -> bool {
    // `get`, not indexing: a device's key may have a multi-byte character at the cut.
    k.get(..PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use weir_core::DeviceId;

    #[test]
    fn a_letter_keeps_the_message_and_says_why_and_where() {
        let mut e = Event::telemetry(
            DeviceId::parse("d1").expect("id"),
            1_700_000_000_000,
            Bytes::from_static(b"{\"t\":1}"),
        );
        e.offset = 42;
        e.packet_id = Some(7);
        e.properties = vec![
            ("a".into(), "1".into()),
            ("Weir-Dead-Letter-Reason".into(), "forged".into()),
        ];
        let d = Delivery {
            event: Arc::new(e),
            enrichments: vec![("site".into(), "north".into()), ("a".into(), "x".into())],
            columns: Vec::new(),
            priority: 5,
            rules_version: Arc::from("v"),
            route: Arc::from("hot"),
        };
        let pass = DeadLetterPass {
            target: Arc::from("dlq"),
            before_ms: 0,
            reason: "HTTP 500".into(),
        };
        let l = letter(&d, "hooks", &pass);
        assert_eq!(l.dead_letter.as_deref(), Some("dlq"));
        assert_eq!((l.packet_id, &l.body[..]), (None, &b"{\"t\":1}"[..]));
        assert_eq!(l.property("a"), Some("1"), "the device's own value wins");
        assert_eq!(l.property("site"), Some("north"));
        assert_eq!(l.property(REASON), Some("HTTP 500"));
        assert_eq!(l.property(ENDPOINT), Some("hooks"));
        assert_eq!(l.property(ROUTE), Some("hot"));
        assert_eq!(l.property(OFFSET), Some("42"));
        assert_eq!(l.property(ENQUEUED), Some("2023-11-14T22:13:20.000Z"));
        assert_eq!(
            l.properties.iter().filter(|(k, _)| has_prefix(k)).count(),
            5,
            "the forged mark is gone"
        );
    }

    #[test]
    fn a_key_with_a_multibyte_character_at_the_cut_is_not_a_mark() {
        assert!(!has_prefix("weir-dead-lette\u{e9}r"));
        assert!(!has_prefix("\u{1f600}\u{1f600}\u{1f600}\u{1f600}\u{1f600}"));
        assert!(has_prefix("WEIR-DEAD-LETTER-x"));
    }
}
