use std::time::Duration;

use workflows::dag::Evidence;

use super::*;

const NOW: i64 = 1_767_312_000_000; // 2026-01-02T00:00:00Z
const HOUR: i64 = 3_600_000;

fn at(ms: i64) -> String {
    workflows::time::format_ms(ms)
}

fn flag(state: State, rollout: u8) -> Flag {
    Flag {
        state,
        rollout,
        ..Flag::initial("views", &at(NOW - 100 * HOUR))
    }
}

fn ask(to: State, rollout: u8) -> Request {
    Request {
        to,
        rollout,
        force: false,
        reason: None,
    }
}

fn passing(report: &str, hours_ago: &[i64]) -> Vec<Reconciled> {
    hours_ago
        .iter()
        .enumerate()
        .map(|(i, h)| Reconciled {
            id: format!("{report}-{i}"),
            report: report.into(),
            started_at: at(NOW - h * HOUR),
            equal: true,
        })
        .collect()
}

fn good() -> Seen {
    let mut reconciliations = passing("views_daily", &[1, 5, 20]);
    reconciliations.extend(passing("views_by_plan", &[2, 6, 21]));
    Seen {
        reports: vec!["views_daily".into(), "views_by_plan".into()],
        reconciliations,
        comparisons: 1500,
        mismatches: 0,
        legacy_reads_since_full: 0,
    }
}

fn missing(d: Decision) -> Vec<String> {
    match d {
        Decision::Refused { missing } => missing,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn shadow_and_every_rollback_need_no_evidence() {
    let e = Evidence::default();
    let none = Seen::default();
    for (from, to) in [
        (flag(State::Legacy, 0), ask(State::Shadow, 0)),
        (flag(State::Warehouse, 50), ask(State::Shadow, 0)),
        (flag(State::Warehouse, 50), ask(State::Warehouse, 10)),
        (flag(State::Retired, 100), ask(State::Legacy, 0)),
    ] {
        assert!(
            matches!(decide(&from, &to, &e, &none, NOW), Decision::Allowed { .. }),
            "{from:?} -> {to:?}"
        );
    }
    assert_eq!(
        decide(
            &flag(State::Shadow, 0),
            &ask(State::Shadow, 0),
            &e,
            &none,
            NOW
        ),
        Decision::Unchanged
    );
}

#[test]
fn promotion_needs_recent_passing_reconciliations_and_clean_comparisons() {
    let e = Evidence::default();
    let from = flag(State::Shadow, 0);
    assert!(matches!(
        decide(&from, &ask(State::Warehouse, 10), &e, &good(), NOW),
        Decision::Allowed { .. }
    ));

    let mut old = good();
    old.reconciliations = passing("views_daily", &[1, 5, 60]);
    old.reconciliations
        .extend(passing("views_by_plan", &[2, 6, 21]));
    let why = missing(decide(&from, &ask(State::Warehouse, 10), &e, &old, NOW));
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(
        why[0].contains("views_daily: 2 passing reconciliations within 2days, 3 needed"),
        "{why:?}"
    );

    let mut failed = good();
    failed.reconciliations[0].equal = false;
    let why = missing(decide(&from, &ask(State::Warehouse, 10), &e, &failed, NOW));
    assert!(
        why[0].contains("reconciliation views_daily-0") && why[0].contains("differs"),
        "{why:?}"
    );

    let mut few = good();
    few.comparisons = 999;
    let why = missing(decide(&from, &ask(State::Warehouse, 10), &e, &few, NOW));
    assert!(
        why[0].contains("999 shadow comparisons within 2days, 1000 needed"),
        "{why:?}"
    );

    let mut mismatched = good();
    mismatched.mismatches = 1;
    let why = missing(decide(
        &from,
        &ask(State::Warehouse, 100),
        &e,
        &mismatched,
        NOW,
    ));
    assert!(
        why[0].contains("1 of 1500 shadow comparisons mismatched"),
        "{why:?}"
    );
    let lenient = Evidence {
        mismatch_rate: 0.001,
        ..e
    };
    assert!(matches!(
        decide(
            &from,
            &ask(State::Warehouse, 100),
            &lenient,
            &mismatched,
            NOW
        ),
        Decision::Allowed { .. }
    ));

    // Raising the share is a promotion too; nothing at all says everything.
    let why = missing(decide(
        &flag(State::Warehouse, 10),
        &ask(State::Warehouse, 50),
        &e,
        &Seen {
            reports: good().reports,
            ..Seen::default()
        },
        NOW,
    ));
    assert_eq!(why.len(), 3, "two reports and the comparisons: {why:?}");
}

#[test]
fn forcing_skips_the_guards() {
    let mut r = ask(State::Warehouse, 100);
    r.force = true;
    r.reason = Some("incident 42".into());
    match decide(
        &flag(State::Legacy, 0),
        &r,
        &Evidence::default(),
        &Seen::default(),
        NOW,
    ) {
        Decision::Allowed { evidence } => assert!(evidence[0].contains("incident 42")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn retiring_needs_the_whole_share_for_long_enough_and_no_legacy_read() {
    let e = Evidence {
        retire_after: Duration::from_secs(7 * 86_400),
        ..Evidence::default()
    };
    let mut full = flag(State::Warehouse, 100);
    full.full_since = Some(at(NOW - 8 * 24 * HOUR));
    assert!(matches!(
        decide(&full, &ask(State::Retired, 0), &e, &Seen::default(), NOW),
        Decision::Allowed { .. }
    ));

    let read = Seen {
        legacy_reads_since_full: 3,
        ..Seen::default()
    };
    let why = missing(decide(&full, &ask(State::Retired, 0), &e, &read, NOW));
    assert!(why[0].contains("3 legacy reads"), "{why:?}");

    full.full_since = Some(at(NOW - 2 * 24 * HOUR));
    let why = missing(decide(
        &full,
        &ask(State::Retired, 0),
        &e,
        &Seen::default(),
        NOW,
    ));
    assert!(
        why[0].contains("for 2days, and retiring needs 7days"),
        "{why:?}"
    );

    let why = missing(decide(
        &flag(State::Warehouse, 50),
        &ask(State::Retired, 0),
        &e,
        &Seen::default(),
        NOW,
    ));
    assert!(why[0].contains("the flag is warehouse 50%"), "{why:?}");
}

#[test]
fn a_key_keeps_its_side_while_the_share_grows() {
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let share = |pct| keys.iter().filter(|k| in_rollout("views", k, pct)).count();
    assert_eq!(share(0), 0);
    assert_eq!(share(100), keys.len());
    let ten = share(10);
    assert!((800..1200).contains(&ten), "about 10%: {ten}");
    assert!(keys
        .iter()
        .filter(|k| in_rollout("views", k, 10))
        .all(|k| in_rollout("views", k, 50)));
}

#[test]
fn the_side_follows_the_state_and_a_key_keeps_its_side_as_the_share_grows() {
    let keys: Vec<String> = (0..1000).map(|i| format!("account-{i}")).collect();
    for state in [State::Legacy, State::Shadow] {
        assert!(keys.iter().all(|k| flag(state, 0).side(k) == Side::Legacy));
    }
    assert!(keys
        .iter()
        .all(|k| flag(State::Retired, 100).side(k) == Side::Warehouse));
    let share = |pct: u8| -> Vec<&String> {
        keys.iter()
            .filter(|k| flag(State::Warehouse, pct).side(k) == Side::Warehouse)
            .collect()
    };
    let (ten, fifty) = (share(10), share(50));
    assert!((60..=140).contains(&ten.len()), "{}", ten.len());
    assert!(
        ten.iter().all(|k| fifty.contains(k)),
        "a key keeps its side"
    );
    assert_eq!(share(100).len(), 1000);
    assert!(share(0).is_empty());
}

#[test]
fn the_next_step_goes_one_state_towards_the_warehouse() {
    let next = |f: Flag| f.next_step().map(|r| (r.to, r.rollout));
    assert_eq!(next(flag(State::Legacy, 0)), Some((State::Shadow, 0)));
    assert_eq!(next(flag(State::Shadow, 0)), Some((State::Warehouse, 100)));
    assert_eq!(
        next(flag(State::Warehouse, 10)),
        Some((State::Warehouse, 100))
    );
    assert_eq!(
        next(flag(State::Warehouse, 100)),
        Some((State::Retired, 100))
    );
    assert_eq!(next(flag(State::Retired, 100)), None);
}
