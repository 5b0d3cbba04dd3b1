//! Table tests for `classify` and `decide`, on the real fixtures and on small
//! hand-written bodies.

use super::*;
use crate::sender::SenderKey::{Lid, Phone};
use crate::webhook::with_envelope;

const PREFIX: &str = "start_realty_";

#[track_caller]
fn check(body: &str, expected: Plan) {
    let plan = with_envelope(body.as_bytes(), |e| classify(e, PREFIX)).expect("body parses");
    assert_eq!(plan, expected, "body: {body}");
}

fn resolve(key: SenderKey, alias: Option<SenderKey>, link: Option<u64>, may_lock: bool) -> Plan {
    Plan::Resolve { sender: Sender { key, alias }, link, may_lock }
}

macro_rules! fixture {
    ($path:literal) => {
        include_str!(concat!("../data/fixtures/", $path))
    };
}

#[test]
fn fixtures() {
    check(
        fixture!("waha/derived/deeplink_first_message.cus.json"),
        resolve(Phone(5511988887777), None, Some(42), true),
    );
    check(fixture!("waha/derived/deeplink_first_message.lid.json"), resolve(Lid(4639135154355), None, Some(42), true));
    check(fixture!("waha/message.lid.json"), resolve(Lid(4639135154355), None, None, true));
    check(fixture!("waha/message.text.json"), Plan::Skip(Skip::FromMe));
    check(fixture!("waha/message.media.json"), resolve(Phone(11111111111), None, None, true));
    check(fixture!("waha/message.any.fromme.json"), Plan::Skip(Skip::FromMe));
    check(fixture!("waha/message.group.json"), Plan::Skip(Skip::Group));
    check(fixture!("waha/message.newsletter.json"), Plan::Skip(Skip::Channel));
    check(fixture!("waha/session.status.json"), Plan::Skip(Skip::EventIgnored));
    // An ack of our own message is about the client's chat, named in the id.
    check(fixture!("waha/message.ack.json"), resolve(Phone(11111111111), None, None, false));
    check(fixture!("waha/message.reaction.json"), resolve(Phone(79111111), None, None, false));
}

#[test]
fn messages() {
    let msg = |from: &str, extra: &str| {
        format!(
            r#"{{"event":"message","payload":{{"from":"{from}","fromMe":false,"body":"hi start_realty_7"{extra}}}}}"#
        )
    };
    check(&msg("971509876543@c.us", ""), resolve(Phone(971509876543), None, Some(7), true));
    check(&msg("971509876543:31@c.us", ""), resolve(Phone(971509876543), None, Some(7), true));
    check(&msg("971509876543@s.whatsapp.net", ""), resolve(Phone(971509876543), None, Some(7), true));
    check(&msg("status@broadcast", ""), Plan::Skip(Skip::Broadcast));
    check(&msg("123@broadcast", ""), Plan::Skip(Skip::Broadcast));
    check(&msg("120363420500389503@g.us", r#","participant":"971509876543@c.us""#), Plan::Skip(Skip::Group));
    check(&msg("xx@c.us", ""), Plan::Skip(Skip::NoSender));
    check(r#"{"event":"message","payload":{"body":"start_realty_7"}}"#, Plan::Skip(Skip::NoSender));
    check(r#"{"event":"message","payload":{"from":12,"body":"start_realty_7"}}"#, Plan::Skip(Skip::NoSender));
    // `message.any` is routed only when not ours.
    check(
        r#"{"event":"message.any","payload":{"from":"971509876543@c.us","fromMe":false}}"#,
        resolve(Phone(971509876543), None, None, true),
    );
    check(r#"{"event":"message.any","payload":{"from":"971509876543@c.us","fromMe":true}}"#, Plan::Skip(Skip::FromMe));
    // Our own account, mislabelled `fromMe: false`.
    check(
        r#"{"event":"message","me":{"id":"971500000000@c.us"},"payload":{"from":"971500000000@c.us","fromMe":false}}"#,
        Plan::Skip(Skip::FromMe),
    );
    // A body that is not a string, or null, carries no link.
    check(r#"{"event":"message","payload":{"from":"1234@c.us","body":null}}"#, resolve(Phone(1234), None, None, true));
    check(
        r#"{"event":"message","payload":{"from":"1234@c.us","body":{"x":1}}}"#,
        resolve(Phone(1234), None, None, true),
    );
}

#[test]
fn aliases_in_the_other_key_space() {
    check(
        r#"{"event":"message","payload":{"from":"4639135154355@lid","body":"start_realty_2",
            "_data":{"key":{"remoteJid":"4639135154355@lid","remoteJidAlt":"971509876543@s.whatsapp.net"}}}}"#,
        resolve(Lid(4639135154355), Some(Phone(971509876543)), Some(2), true),
    );
    check(
        r#"{"event":"message","payload":{"from":"971509876543@c.us","_data":{"key":{"senderPn":"x"},"senderPn":"4639135154355@lid"}}}"#,
        resolve(Phone(971509876543), Some(Lid(4639135154355)), None, true),
    );
    check(
        r#"{"event":"message","payload":{"from":"4639135154355@lid","senderPn":"971509876543@s.whatsapp.net"}}"#,
        resolve(Lid(4639135154355), Some(Phone(971509876543)), None, true),
    );
    // The same key space is another person, never an alias.
    check(
        r#"{"event":"message","payload":{"from":"971509876543@c.us","_data":{"key":{"remoteJidAlt":"971500000001@s.whatsapp.net"}}}}"#,
        resolve(Phone(971509876543), None, None, true),
    );
    // `_data` of a surprising type is ignored, not an error.
    check(
        r#"{"event":"message","payload":{"from":"1234@c.us","_data":[1,2]}}"#,
        resolve(Phone(1234), None, None, true),
    );
}

#[test]
fn chat_updates_follow_locks_only() {
    for event in ["message.ack", "message.reaction", "message.edited", "message.revoked"] {
        let body = format!(
            r#"{{"event":"{event}","payload":{{"id":"true_971509876543@c.us_ABC","from":"971500000000@c.us","fromMe":true,"body":"start_realty_3"}}}}"#
        );
        check(&body, resolve(Phone(971509876543), None, None, false));
    }
    check(r#"{"event":"message.ack","payload":{"id":"false_120363@g.us_ABC_1@lid"}}"#, Plan::Skip(Skip::Group));
    check(r#"{"event":"message.ack","payload":{"from":"1234@c.us"}}"#, resolve(Phone(1234), None, None, false));
    check(r#"{"event":"message.ack","payload":{}}"#, Plan::Skip(Skip::NoSender));
}

#[test]
fn other_events_are_ignored() {
    for event in ["session.status", "presence.update", "call.received", "", "message.waiting", "MESSAGE"] {
        check(&format!(r#"{{"event":"{event}","payload":{{"from":"1234@c.us"}}}}"#), Plan::Skip(Skip::EventIgnored));
    }
}

#[test]
fn bad_bodies() {
    use crate::webhook::ParseError;
    let parse = |body: &str| with_envelope(body.as_bytes(), |e| classify(e, PREFIX));
    assert_eq!(parse(r#"{"payload":{}}"#), Err(ParseError::MissingEvent));
    assert_eq!(parse(r#"{"event":5,"payload":{}}"#), Err(ParseError::MissingEvent));
    assert_eq!(parse(r#"{"event":"message"}"#), Err(ParseError::MissingPayload));
    assert_eq!(parse(r#"{"event":"message","payload":"x"}"#), Err(ParseError::MissingPayload));
    for body in ["", "null", "[]", "{", r#"{"event":"message","payload":{}"#, "\u{0}", "{\"a\":\"\\ud800\"}"] {
        assert!(matches!(parse(body), Err(ParseError::Json(_))), "{body:?} should be a JSON error");
    }
}

#[test]
fn message_key_ids() {
    assert_eq!(
        message_key_id("false_4639135154355@lid_297A4A9CC7BD7B111D49B72C8832D6D3"),
        Some("297A4A9CC7BD7B111D49B72C8832D6D3")
    );
    assert_eq!(message_key_id("false_120363@g.us_3DCB_172078351257794@lid"), Some("3DCB"));
    assert_eq!(message_key_id("x@g.xxx@lid"), None);
    assert_eq!(message_key_id("a_b_"), None);
}

#[test]
fn decisions() {
    #[track_caller]
    fn check_decide(link: Option<u64>, may_lock: bool, current: Option<TenantId>, expected: Decision) {
        let exists = |t: TenantId| t == 2 || t == 3;
        assert_eq!(decide(link, may_lock, current, exists), expected);
    }
    check_decide(Some(2), true, None, Decision::Lock { tenant: 2 });
    check_decide(Some(9), true, None, Decision::Skip(Skip::UnknownTenant));
    check_decide(Some(u64::from(u32::MAX) + 3), true, None, Decision::Skip(Skip::UnknownTenant));
    check_decide(None, true, None, Decision::Skip(Skip::NoDeepLink));
    check_decide(None, true, Some(3), Decision::Forward { tenant: 3, relock_refused: false });
    check_decide(Some(3), true, Some(3), Decision::Forward { tenant: 3, relock_refused: false });
    check_decide(Some(2), true, Some(3), Decision::Forward { tenant: 3, relock_refused: true });
    check_decide(None, false, Some(3), Decision::Forward { tenant: 3, relock_refused: false });
    check_decide(None, false, None, Decision::Skip(Skip::NotLocked));
}

#[test]
fn identities() {
    let id = |body: &str| with_envelope(body.as_bytes(), message_identity).unwrap();
    let lid = r#"{"event":"message","session":"s","payload":{"id":"false_4639135154355@lid_ABC","from":"4639135154355@lid"}}"#;
    let cus = r#"{"event":"message.any","session":"s","payload":{"id":"false_5511988887777@c.us_ABC","from":"5511988887777@c.us"}}"#;
    assert_eq!(id(lid), id(cus), "the GOWS double and message.any share the key id");
    assert!(id(lid).is_some());
    let other_session = lid.replace(r#""session":"s""#, r#""session":"t""#);
    assert_ne!(id(lid), id(&other_session));
    let ack =
        |evt: &str| format!(r#"{{"id":"{evt}","event":"message.ack","payload":{{"id":"true_1@c.us_ABC","ack":2}}}}"#);
    assert_ne!(id(&ack("evt_1")), id(&ack("evt_2")), "two acks of one message are two events");
    assert_eq!(id(&ack("evt_1")), id(&ack("evt_1")));
    assert_eq!(id(r#"{"event":"message","payload":{"from":"1@c.us"}}"#), None);
}
