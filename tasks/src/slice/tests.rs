use bson::{doc, oid::ObjectId, Bson, Document};
use chrono_tz::Tz;

use super::strata::{dst_days, Survey};
use super::{choose, Options};
use crate::reports::Range;

const DAY: i64 = 86_400_000;
const START: i64 = 1_774_742_400_000; // 2026-03-29T00:00:00Z

fn event(n: u32, ty: &str, ts: i64, extra: Document) -> Document {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&((ts / 1000) as u32).to_be_bytes());
    b[8..].copy_from_slice(&n.to_be_bytes());
    let mut d = doc! {
        "_id": ObjectId::from_bytes(b),
        "event_id": format!("e{n}"),
        "type": ty,
        "ts": bson::DateTime::from_millis(ts),
    };
    d.extend(extra);
    d
}

fn options(seed: u64, size: usize) -> Options {
    Options {
        size,
        seed,
        range: Range::default(),
        time_zone: "Europe/Berlin".parse().unwrap(),
        command: "cutover slice".into(),
    }
}

/// A few days of events with one of each kind of dirt.
fn documents() -> Vec<Document> {
    let mut out = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    out.push(event(
        next(),
        "user.registered",
        START - 10 * DAY,
        doc! { "user_id": "u1", "payload": { "plan": "free" } },
    ));
    out.push(event(
        next(),
        "user.plan_changed",
        START - DAY,
        doc! { "user_id": "u1", "payload": { "plan": "pro" } },
    ));
    for day in 0..4 {
        let ts = START + day * DAY + 3_600_000;
        let s = format!("s{day}");
        out.push(event(
            next(),
            "session.started",
            ts,
            doc! { "session_id": &s, "user_id": "u1", "payload": { "device": "tablet" } },
        ));
        out.push(event(next(), "presentation.viewed", ts + 1, doc! { "presentation_id": "p1", "session_id": &s, "user_id": "u1", "payload": { "device": "tablet", "referrer": Bson::Null } }));
        out.push(event(next(), "presentation.viewed", ts + 2, doc! { "presentation_id": "p2", "session_id": &s, "user_id": Bson::Null, "payload": { "device": "tablet", "referrer": Bson::Null } }));
        out.push(event(next(), "slide.viewed", ts + 3, doc! { "presentation_id": "p1", "session_id": &s, "user_id": "u1", "v": 2, "payload": { "slide": 1, "dwellMs": 10 } }));
    }
    out.push(event(
        next(),
        "presentation.shared",
        START + 5_000,
        doc! { "presentation_id": "p1", "user_id": "u1", "payload": { "channel": "embed" } },
    ));
    out.push(event(
        next(),
        "presentation.renamed",
        START + 6_000,
        doc! { "presentation_id": "p1", "payload": { "title": "<b>new</b>" } },
    ));
    out.push(event(
        next(),
        "session.ended",
        START + 1_800_000,
        doc! { "session_id": "s0" },
    ));
    let copy = out[3].clone();
    out.push(copy);
    out
}

fn survey(seed: u64, docs: &[Document]) -> Survey {
    let mut s = Survey::new(seed, 8, Range::default());
    for d in docs {
        s.add(d);
    }
    s.finish("Europe/Berlin".parse().unwrap());
    s
}

#[test]
fn daylight_saving_days_are_found_in_the_zone_and_none_in_utc() {
    let days = ["2026-03-27", "2026-03-31", "2026-10-24", "2026-10-26"];
    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    assert_eq!(dst_days(berlin, days[..2].iter().copied()), ["2026-03-29"]);
    assert_eq!(dst_days(berlin, days[2..].iter().copied()), ["2026-10-25"]);
    assert!(dst_days(chrono_tz::UTC, days.iter().copied()).is_empty());
}

#[test]
fn every_stratum_the_data_holds_is_covered_and_the_rest_listed_empty() {
    let s = survey(7, &documents());
    let (strata, samples) = choose(&s, &options(7, 1));
    let covered = |name: &str| {
        let st = strata.iter().find(|x| x.spec.name == name).unwrap();
        (st.candidates > 0, !st.samples.is_empty())
    };
    for name in [
        "day.first",
        "day.last",
        "day.busiest",
        "day.quietest",
        "day.dst_change",
        "day.dst_after",
        "plan.pro",
        "plan.changer",
        "plan.anonymous",
        "device.tablet",
        "channel.embed",
        "payload.v2",
        "dirt.duplicate",
        "dirt.renamed",
        "dirt.session_end_before_start",
    ] {
        assert_eq!(covered(name), (true, true), "{name}");
    }
    for name in [
        "plan.team",
        "plan.unknown",
        "device.mobile",
        "channel.slack",
        "payload.v1",
        "dirt.late",
        "day.dst_before",
    ] {
        assert_eq!(covered(name), (false, false), "{name} is empty");
    }
    // Size 1 is raised so that every stratum is covered.
    assert!(samples.len() > 1);
    for st in &strata {
        for n in &st.samples {
            assert!(samples[n - 1].strata.contains(&st.spec.name));
        }
    }
}

#[test]
fn the_choice_depends_on_the_seed_and_the_data_not_the_order() {
    let docs = documents();
    let mut reversed = docs.clone();
    reversed.reverse();
    let key = |seed: u64, d: &[Document], size: usize| {
        let (_, samples) = choose(&survey(seed, d), &options(seed, size));
        samples
            .into_iter()
            .map(|s| (s.entity, s.day))
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(key(7, &docs, 40), key(7, &docs, 40));
    // Order changes which copy is the duplicate, not which entity it is.
    assert_eq!(key(7, &docs, 40), key(7, &reversed, 40));
}

#[test]
fn an_event_stored_an_hour_after_its_time_is_late() {
    let mut docs = documents();
    let ts = START + 2 * DAY;
    let mut late = event(
        900,
        "presentation.shared",
        ts,
        doc! { "presentation_id": "p9", "user_id": "u1", "payload": { "channel": "link" } },
    );
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&(((ts + 2 * 3_600_000) / 1000) as u32).to_be_bytes());
    late.insert("_id", ObjectId::from_bytes(b));
    docs.push(late);
    let s = survey(1, &docs);
    let (strata, samples) = choose(&s, &options(1, 1));
    let st = strata.iter().find(|x| x.spec.name == "dirt.late").unwrap();
    assert_eq!(st.candidates, 1);
    assert_eq!(samples[st.samples[0] - 1].entity.id, "p9");
}

#[test]
fn html_escapes_what_the_data_holds() {
    let slice = super::Slice {
        generated_at: "2026-01-01T00:00:00.000Z".into(),
        command: "cutover slice --seed 1".into(),
        seed: 1,
        size: 1,
        time_zone: "UTC".into(),
        from: None,
        to: None,
        documents: 1,
        invalid: 0,
        status: crate::reconciliation::Status::Equal,
        rules: crate::reconciliation::RULES,
        strata: Vec::new(),
        samples: vec![super::Sample {
            n: 1,
            entity: super::Entity {
                kind: super::EntityKind::Presentation,
                id: "<script>alert(1)</script>".into(),
            },
            day: "2026-01-01".into(),
            strata: vec!["day.first".into()],
            why: "x & y".into(),
            rows: 0,
        }],
        reports: Vec::new(),
    };
    let html = super::render::render(&slice, super::render::Format::Html);
    assert!(!html.contains("<script>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("x &amp; y"));
    let md = super::render::render(&slice, super::render::Format::Markdown);
    assert!(
        md.contains("&lt;script>") && !md.contains("<script>"),
        "{md}"
    );
}
