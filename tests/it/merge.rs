//! The two ways a load writes rows: one conflict-resolving insert per
//! chunk (`ON CONFLICT` / `ON DUPLICATE KEY UPDATE`), and the staged merge
//! (a temporary table, then updates and an insert). On every backend and
//! strategy they must leave the same table and report the same changes.

use anyhow::Result;
use serde_json::json;
use tasks::load::merge::{merge_batch, upserts, Target};
use tasks::schema::{ColumnType, Value};
use tasks::Warehouse;
use workflows::{Backend, SqlIdent};

use crate::support;

const COLUMNS: [&str; 5] = ["id", "v", "w", "x", "y"];

fn columns() -> Vec<(SqlIdent, ColumnType)> {
    COLUMNS
        .iter()
        .map(|c| {
            let ty = if *c == "id" || *c == "x" {
                ColumnType::String
            } else {
                ColumnType::Int
            };
            (SqlIdent::new(c).unwrap(), ty)
        })
        .collect()
}

/// A row: key, versions (v, w), a text and a number, any of them null.
fn row(id: &str, v: Option<i64>, w: i64, x: Option<&str>, y: Option<i64>) -> Vec<Value> {
    vec![
        Value::Str(id.into()),
        v.map_or(Value::Null, Value::Int),
        Value::Int(w),
        x.map_or(Value::Null, |x| Value::Str(x.into())),
        y.map_or(Value::Null, Value::Int),
    ]
}

/// Batches that exercise each strategy: new keys, newer and older rows,
/// null versions, fills, copies of a key in one batch, a batch repeated,
/// and a row the table's CHECK refuses.
fn batches() -> Vec<Vec<Vec<Value>>> {
    let second = vec![
        row("a", Some(3), 0, Some("late"), None),
        row("a", Some(2), 0, Some("mid"), Some(7)),
        row("b", Some(1), 0, Some("old"), Some(9)),
        row("c", Some(4), 0, Some("c"), Some(1)),
        row("d", Some(1), 0, None, None),
        row("e", Some(1), 0, Some("refused"), Some(-1)),
    ];
    vec![
        vec![
            row("a", Some(1), 0, None, Some(5)),
            row("b", Some(2), 0, Some("b"), None),
            row("c", None, 0, None, None),
        ],
        second.clone(),
        // The second batch again, without its refused row.
        second[..5].to_vec(),
        vec![
            row("b", Some(2), 5, Some("b2"), None),
            row("d", Some(1), 1, Some("d"), Some(2)),
            row("d", Some(1), 2, None, None),
            row("f", None, 0, Some("f"), None),
            row("f", Some(1), 0, None, Some(4)),
        ],
    ]
}

async fn create(wh: &Warehouse, table: &str) -> Result<()> {
    sqlx::query(&format!(
        "CREATE TABLE {table} (id VARCHAR(64) NOT NULL PRIMARY KEY, v BIGINT, w BIGINT, \
         x VARCHAR(64), y BIGINT, CHECK (y IS NULL OR y >= 0))"
    ))
    .execute(&wh.pool)
    .await?;
    Ok(())
}

/// Merges every batch into `table`, one transaction each; the changes of
/// each batch and the rows refused.
async fn load(wh: &Warehouse, target: &Target, upsert: bool) -> Result<(Vec<u64>, Vec<String>)> {
    let (mut changes, mut refused) = (Vec::new(), Vec::new());
    for batch in batches() {
        let mut tx = wh.pool.begin().await?;
        let merged = merge_batch(
            &mut tx,
            wh.backend,
            target,
            &columns(),
            batch,
            upsert,
            "test",
        )
        .await;
        let (n, set_aside) = match merged {
            Ok(merged) => merged,
            Err(e) => {
                // Rolled back now, so that the test's database can be dropped.
                tx.rollback().await?;
                let how = if upsert { "upsert" } else { "staged" };
                return Err(anyhow::Error::new(e).context(format!("{how} into {}", target.table())));
            }
        };
        tx.commit().await?;
        changes.push(n);
        refused.extend(set_aside.into_iter().map(|(r, _)| format!("{:?}", r[0])));
    }
    Ok((changes, refused))
}

#[tokio::test]
async fn one_write_per_row_merges_as_the_staged_merge_does_on_every_backend() -> Result<()> {
    for w in support::warehouses().await? {
        let wh = Warehouse::connect(&w.url).await?;
        let pool = support::pool(&w.url).await?;
        for (name, strategy, version) in [
            ("insert_new", "insert_new", json!([])),
            ("accumulate", "accumulate", json!([])),
            ("latest", "latest", json!(["v"])),
            ("latest2", "latest", json!(["v", "w"])),
        ] {
            let mut results = Vec::new();
            for path in ["staged", "upsert"] {
                let table = format!("m_{name}_{path}");
                create(&wh, &table).await?;
                let target: Target = serde_json::from_value(json!({
                    "output": table, "key": ["id"], "strategy": strategy, "version": version,
                }))?;
                let unique = wh.unique_keys(&table).await?;
                assert_eq!(unique, vec![vec!["id".to_owned()]], "{}", w.name);
                let upsert = path == "upsert" && upserts(wh.backend, &target, &unique);
                if path == "upsert" {
                    // MySQL's assignments see the ones before them: a
                    // version of two columns is staged there.
                    let expect = !(wh.backend == Backend::MySql && name == "latest2");
                    assert_eq!(upsert, expect, "{} {name}", w.name);
                }
                let loaded = load(&wh, &target, upsert).await;
                let (changes, refused) = match loaded {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        wh.pool.close().await;
                        return Err(e.context(w.name));
                    }
                };
                let rows = support::snapshot(&pool, &table, &COLUMNS).await?;
                results.push((changes, refused, rows));
            }
            let (staged, upserted) = (&results[0], &results[1]);
            assert_eq!(staged, upserted, "{} {name}: staged, then upsert", w.name);
            let (changes, refused, _) = staged;
            // The repeated batch changes nothing; the refused row is named.
            assert_eq!(changes[2], 0, "{} {name}: {changes:?}", w.name);
            assert_eq!(refused, &vec!["Str(\"e\")".to_owned()], "{} {name}", w.name);
        }
        // What the latest rows hold, spelled out once.
        let rows = support::snapshot(&pool, "m_latest_upsert", &COLUMNS).await?;
        assert_eq!(
            rows,
            [
                "Some(\"a\")|Some(3)|Some(0)|Some(\"late\")|Some(5)",
                "Some(\"b\")|Some(2)|Some(0)|Some(\"b\")|Some(9)",
                "Some(\"c\")|Some(4)|Some(0)|Some(\"c\")|Some(1)",
                "Some(\"d\")|Some(1)|Some(0)|Some(\"d\")|Some(2)",
                "Some(\"f\")|Some(1)|Some(0)|Some(\"f\")|Some(4)",
            ],
            "{}",
            w.name
        );
        // A table whose key is not the target's key is staged.
        sqlx::query(
            "CREATE TABLE m_nokey (id VARCHAR(64), v BIGINT, w BIGINT, x VARCHAR(64), y BIGINT)",
        )
        .execute(&wh.pool)
        .await?;
        let target: Target = serde_json::from_value(json!({"output": "m_nokey", "key": ["id"]}))?;
        assert!(!upserts(
            wh.backend,
            &target,
            &wh.unique_keys("m_nokey").await?
        ));
    }
    Ok(())
}

/// Two loads of one dimension side by side (the feed's DAGs, each with the
/// same days): a key the other load committed after this one's first read
/// is found, not inserted twice, and the load goes on without a retry.
#[tokio::test]
async fn a_key_another_load_inserted_meanwhile_is_merged_not_retried() -> Result<()> {
    for w in support::warehouses().await? {
        let wh = Warehouse::connect(&w.url).await?;
        if wh.backend == Backend::Sqlite {
            // One writer at a time: the second would wait for the first.
            continue;
        }
        create(&wh, "m_side_by_side").await?;
        let target: Target = serde_json::from_value(json!({
            "output": "m_side_by_side", "key": ["id"], "strategy": "insert_new",
        }))?;
        let upsert = upserts(
            wh.backend,
            &target,
            &wh.unique_keys("m_side_by_side").await?,
        );
        let mut first = wh.pool.begin().await?;
        // Its snapshot begins here.
        let merged = merge_one(&mut first, wh.backend, &target, upsert, "a").await;
        let mut second = wh.pool.begin().await?;
        let other = merge_one(&mut second, wh.backend, &target, upsert, "k").await;
        second.commit().await?;
        let again = match (merged, other) {
            (Ok(1), Ok(1)) => merge_one(&mut first, wh.backend, &target, upsert, "k").await,
            (a, b) => {
                first.rollback().await?;
                panic!("{}: {a:?} {b:?}", w.name);
            }
        };
        match again {
            Ok(n) => {
                first.commit().await?;
                assert_eq!(n, 0, "{}: the key was there", w.name);
            }
            Err(e) => {
                first.rollback().await?;
                wh.pool.close().await;
                panic!("{}: the second load's key failed the first: {e}", w.name);
            }
        }
        let pool = support::pool(&w.url).await?;
        let rows = support::snapshot(&pool, "m_side_by_side", &["id"]).await?;
        assert_eq!(rows, ["Some(\"a\")", "Some(\"k\")"], "{}", w.name);
    }
    Ok(())
}

/// Merges the one row `id` in a transaction; the rows it changed.
async fn merge_one(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    target: &Target,
    upsert: bool,
    id: &str,
) -> Result<u64, String> {
    let rows = vec![row(id, Some(1), 0, Some(id), Some(1))];
    merge_batch(tx, backend, target, &columns(), rows, upsert, "test")
        .await
        .map(|(n, _)| n)
        .map_err(|e| e.to_string())
}
