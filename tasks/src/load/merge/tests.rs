use super::*;

fn target(strategy: Strategy, version: Option<&str>) -> Target {
    Target {
        output: SqlIdent::new("dim").unwrap(),
        table: None,
        key: vec![SqlIdent::new("id").unwrap()],
        strategy,
        version: version
            .map(|v| SqlIdent::new(v).unwrap())
            .into_iter()
            .collect(),
        entity: Vec::new(),
        valid_to: None,
    }
}

fn idents(names: &[&str]) -> Vec<SqlIdent> {
    names.iter().map(|n| SqlIdent::new(n).unwrap()).collect()
}

#[test]
fn statements_per_dialect() {
    let cols = idents(&["id", "title", "ver"]);
    let t = target(Strategy::Latest, Some("ver"));
    assert_eq!(
        merge_sql(Backend::Postgres, &t, &cols),
        [
            "UPDATE \"dim\" AS t SET \"title\" = COALESCE(s.\"title\", t.\"title\"), \"ver\" = s.\"ver\" FROM \"stg_dim\" AS s WHERE t.\"id\" = s.\"id\" AND (s.\"ver\" > t.\"ver\")",
            "UPDATE \"dim\" AS t SET \"title\" = COALESCE(t.\"title\", s.\"title\"), \"ver\" = COALESCE(t.\"ver\", s.\"ver\") FROM \"stg_dim\" AS s WHERE t.\"id\" = s.\"id\" AND ((t.\"title\" IS NULL AND s.\"title\" IS NOT NULL) OR (t.\"ver\" IS NULL AND s.\"ver\" IS NOT NULL))",
            "INSERT INTO \"dim\" (\"id\", \"title\", \"ver\") SELECT s.\"id\", s.\"title\", s.\"ver\" FROM \"stg_dim\" s WHERE NOT EXISTS (SELECT 1 FROM \"dim\" t WHERE t.\"id\" = s.\"id\")",
        ]
    );
    assert_eq!(
        merge_sql(Backend::MySql, &t, &cols)[0],
        "UPDATE `dim` t JOIN `stg_dim` s ON t.`id` = s.`id` SET t.`title` = COALESCE(s.`title`, t.`title`), t.`ver` = s.`ver` WHERE s.`ver` > t.`ver`"
    );
    let mut h = target(Strategy::History, None);
    h.version = vec![
        SqlIdent::new("from_ms").unwrap(),
        SqlIdent::new("doc").unwrap(),
    ];
    h.entity = vec![SqlIdent::new("user_id").unwrap()];
    h.valid_to = Some(SqlIdent::new("to_ms").unwrap());
    let hcols = idents(&["id", "user_id", "from_ms", "doc", "to_ms"]);
    let stmts = merge_sql(Backend::MySql, &h, &hcols);
    assert!(stmts[0].ends_with("WHERE (s.`from_ms`, s.`doc`) > (t.`from_ms`, t.`doc`)"));
    assert_eq!(
        stmts.last().unwrap(),
        "UPDATE `dim` t JOIN (SELECT `id`, LEAD(`from_ms`) OVER (PARTITION BY `user_id` ORDER BY `from_ms`, `doc`) AS next_from FROM `dim` WHERE `user_id` IN (SELECT `user_id` FROM `stg_dim`)) n ON t.`id` = n.`id` SET t.`to_ms` = n.next_from WHERE NOT (t.`to_ms` <=> n.next_from)"
    );
    let a = target(Strategy::Accumulate, None);
    assert!(merge_sql(Backend::Sqlite, &a, &cols)[0].ends_with(
        "AND ((t.\"title\" IS NULL AND s.\"title\" IS NOT NULL) OR (t.\"ver\" IS NULL AND s.\"ver\" IS NOT NULL))"
    ));
    assert_eq!(
        stage_sql(Backend::MySql, &a, &cols, 2),
        "INSERT INTO `stg_dim` (`id`, `title`, `ver`) VALUES (?, ?, ?), (?, ?, ?)"
    );
}

#[test]
fn reduce_follows_the_strategy() {
    let cols = vec!["id".to_owned(), "v".to_owned(), "x".to_owned()];
    let a = |v: i64, x: Option<&str>| {
        vec![
            Value::Str("a".into()),
            Value::Int(v),
            x.map_or(Value::Null, |x| Value::Str(x.into())),
        ]
    };
    let b = vec![Value::Str("b".into()), Value::Int(1), Value::Null];
    let rows = vec![a(1, None), a(3, Some("late")), b.clone(), a(2, Some("mid"))];
    let first = reduce(&target(Strategy::InsertNew, None), &cols, rows.clone()).unwrap();
    assert_eq!(first, vec![vec![a(1, None), b.clone()]]);
    let acc = reduce(&target(Strategy::Accumulate, None), &cols, rows.clone()).unwrap();
    assert_eq!(acc, vec![vec![a(1, Some("late")), b.clone()]]);
    // The newest row of each key as it is, then what the older rows
    // can fill: an older value never lands on a newer version.
    let latest = reduce(&target(Strategy::Latest, Some("v")), &cols, rows.clone()).unwrap();
    assert_eq!(
        latest,
        vec![vec![a(3, Some("late")), b.clone()], vec![a(2, Some("mid"))]]
    );
    let newest_null = vec![a(7, None), a(3, Some("old"))];
    assert_eq!(
        reduce(&target(Strategy::Latest, Some("v")), &cols, newest_null).unwrap(),
        vec![vec![a(7, None)], vec![a(3, Some("old"))]]
    );
    // Twenty thousand copies of one key are two rows to merge.
    let copies: Vec<Vec<Value>> = (0..20_000).map(|i| a(i, Some("x"))).collect();
    let two = reduce(&target(Strategy::Latest, Some("v")), &cols, copies).unwrap();
    assert_eq!(
        two,
        vec![vec![a(19_999, Some("x"))], vec![a(19_998, Some("x"))]]
    );
    let err = reduce(&target(Strategy::Latest, Some("nope")), &cols, rows).unwrap_err();
    assert!(err.to_string().contains("no column `nope`"), "{err}");
}

#[test]
fn values_a_column_cannot_hold_are_named() {
    let col = |max_chars, int_range, not_null, nul_ok| ColumnInfo {
        name: "c".into(),
        max_chars,
        max_bytes: None,
        int_range,
        not_null,
        nul_ok,
    };
    let long = Value::Str("x".repeat(100));
    assert_eq!(
        misfit(
            &col(Some(64), None, false, true),
            "t",
            &long,
            Backend::MySql
        )
        .unwrap(),
        "column c of t holds at most 64 characters; the value has 100"
    );
    assert!(misfit(
        &col(Some(100), None, false, true),
        "t",
        &long,
        Backend::MySql
    )
    .is_none());
    let nul = Value::Str("a\0b".into());
    assert!(
        misfit(&col(None, None, false, false), "t", &nul, Backend::Postgres)
            .unwrap()
            .contains("NUL")
    );
    let big = Value::Int(3_000_000_000);
    assert!(misfit(
        &col(None, Some((i32::MIN.into(), i32::MAX.into())), false, true),
        "t",
        &big,
        Backend::Postgres
    )
    .unwrap()
    .contains("the value is 3000000000"));
    assert!(misfit(
        &col(None, None, true, true),
        "t",
        &Value::Null,
        Backend::Sqlite
    )
    .is_some());
}

#[test]
fn one_write_per_row_where_the_key_is_the_tables() {
    let cols = idents(&["id", "title", "ver"]);
    let latest = target(Strategy::Latest, Some("ver"));
    let pk = vec![vec!["id".to_owned()]];
    assert!(upserts(Backend::MySql, &latest, &pk));
    assert!(!upserts(Backend::Postgres, &latest, &[]));
    // MySQL takes the update path on a conflict with any unique key.
    let two = vec![vec!["id".to_owned()], vec!["title".to_owned()]];
    assert!(!upserts(Backend::MySql, &latest, &two));
    assert!(upserts(Backend::Sqlite, &latest, &two));
    let mut history = target(Strategy::History, Some("ver"));
    history.entity = idents(&["title"]);
    assert!(!upserts(Backend::Postgres, &history, &pk));
    assert_eq!(
        upsert_sql(Backend::Postgres, &latest, &cols, 2),
        "INSERT INTO \"dim\" (\"id\", \"title\", \"ver\") VALUES ($1, $2, $3), ($4, $5, $6) \
         ON CONFLICT (\"id\") DO UPDATE SET \
         \"title\" = CASE WHEN excluded.\"ver\" > \"dim\".\"ver\" THEN COALESCE(excluded.\"title\", \"dim\".\"title\") ELSE COALESCE(\"dim\".\"title\", excluded.\"title\") END, \
         \"ver\" = CASE WHEN excluded.\"ver\" > \"dim\".\"ver\" THEN excluded.\"ver\" ELSE COALESCE(\"dim\".\"ver\", excluded.\"ver\") END \
         WHERE excluded.\"ver\" > \"dim\".\"ver\" OR (\"dim\".\"title\" IS NULL AND excluded.\"title\" IS NOT NULL) OR (\"dim\".\"ver\" IS NULL AND excluded.\"ver\" IS NOT NULL)"
    );
    assert_eq!(
        upsert_sql(Backend::MySql, &target(Strategy::InsertNew, None), &cols, 1),
        "INSERT INTO `dim` (`id`, `title`, `ver`) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE `id` = `id`"
    );
    assert!(upsert_sql(Backend::MySql, &latest, &cols, 1).ends_with(
        "ON DUPLICATE KEY UPDATE `title` = CASE WHEN VALUES(`ver`) > `ver` THEN COALESCE(VALUES(`title`), `title`) ELSE COALESCE(`title`, VALUES(`title`)) END, \
         `ver` = CASE WHEN VALUES(`ver`) > `ver` THEN VALUES(`ver`) ELSE COALESCE(`ver`, VALUES(`ver`)) END"
    ));
    assert_eq!(
        upsert_sql(Backend::Sqlite, &target(Strategy::Accumulate, None), &cols, 1),
        "INSERT INTO \"dim\" (\"id\", \"title\", \"ver\") VALUES (?, ?, ?) ON CONFLICT (\"id\") DO UPDATE SET \
         \"title\" = COALESCE(\"dim\".\"title\", excluded.\"title\"), \"ver\" = COALESCE(\"dim\".\"ver\", excluded.\"ver\") \
         WHERE (\"dim\".\"title\" IS NULL AND excluded.\"title\" IS NOT NULL) OR (\"dim\".\"ver\" IS NULL AND excluded.\"ver\" IS NOT NULL)"
    );
    assert_eq!(
        existing_sql(Backend::MySql, &latest, 3),
        "SELECT COUNT(*) FROM `dim` WHERE `id` IN (?, ?, ?)"
    );
}
