//! The statements of a merge, per dialect: staging, merging by strategy,
//! closing history versions.

use workflows::{Backend, SqlIdent};

use super::{Strategy, Target};

/// The staging table of a target, a temporary table shaped like it.
fn staging(target: &Target) -> SqlIdent {
    target.table().prefixed("stg_")
}

/// Statements that create an empty staging table for `target` in the
/// current transaction (dropping one a failed transaction left behind).
pub fn staging_sql(backend: Backend, target: &Target) -> Vec<String> {
    let (table, stg) = (
        backend.quote(target.table()),
        backend.quote(&staging(target)),
    );
    match backend {
        Backend::MySql => vec![
            format!("DROP TEMPORARY TABLE IF EXISTS {stg}"),
            format!("CREATE TEMPORARY TABLE {stg} LIKE {table}"),
        ],
        Backend::Postgres => vec![
            format!("DROP TABLE IF EXISTS pg_temp.{stg}"),
            format!("CREATE TEMP TABLE {stg} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"),
        ],
        Backend::Sqlite => vec![
            format!("DROP TABLE IF EXISTS temp.{stg}"),
            format!("CREATE TEMP TABLE {stg} AS SELECT * FROM main.{table} WHERE 0"),
        ],
    }
}

/// A multi-row insert of `rows` rows of `columns` into the staging table.
pub fn stage_sql(backend: Backend, target: &Target, columns: &[SqlIdent], rows: usize) -> String {
    insert_into(backend, &staging(target), columns, rows)
}

/// `INSERT INTO table (columns) VALUES (...), ...` for `rows` rows.
fn insert_into(backend: Backend, table: &SqlIdent, columns: &[SqlIdent], rows: usize) -> String {
    let cols = columns
        .iter()
        .map(|c| backend.quote(c))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {} ({cols}) VALUES {}",
        backend.quote(table),
        values(backend, columns.len(), rows)
    )
}

/// The markers of `rows` rows of `width` values: `(?, ?), (?, ?)`.
fn values(backend: Backend, width: usize, rows: usize) -> String {
    let mut m = backend.markers();
    (0..rows)
        .map(|_| format!("({})", m.list(width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statements that merge the staging table into the target, following
/// the target's strategy; their affected-row counts add up to the rows that
/// changed.
pub fn merge_sql(backend: Backend, target: &Target, columns: &[SqlIdent]) -> Vec<String> {
    let q = |c: &SqlIdent| backend.quote(c);
    let (table, stg) = (q(target.table()), q(&staging(target)));
    let keys: Vec<String> = target.key.iter().map(q).collect();
    let rest: Vec<String> = columns
        .iter()
        .filter(|c| !target.key.contains(c))
        .map(q)
        .collect();
    let cols = columns.iter().map(&q).collect::<Vec<_>>().join(", ");
    let s_cols = columns
        .iter()
        .map(|c| format!("s.{}", q(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let join = keys
        .iter()
        .map(|k| format!("t.{k} = s.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let insert = format!(
        "INSERT INTO {table} ({cols}) SELECT {s_cols} FROM {stg} s WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {join})"
    );
    // UPDATE ... FROM (SQLite, PostgreSQL) or UPDATE ... JOIN (MySQL).
    let update = |sets: Vec<String>, condition: String| -> String {
        match backend {
            Backend::MySql => {
                let sets: Vec<String> = sets.iter().map(|s| format!("t.{s}")).collect();
                format!(
                    "UPDATE {table} t JOIN {stg} s ON {join} SET {} WHERE {condition}",
                    sets.join(", ")
                )
            }
            Backend::Sqlite | Backend::Postgres => {
                format!(
                    "UPDATE {table} AS t SET {} FROM {stg} AS s WHERE {join} AND ({condition})",
                    sets.join(", ")
                )
            }
        }
    };
    let fill = |cols: &[String]| -> Option<String> {
        if cols.is_empty() {
            return None;
        }
        let sets = cols
            .iter()
            .map(|c| format!("{c} = COALESCE(t.{c}, s.{c})"))
            .collect();
        let fills = cols
            .iter()
            .map(|c| format!("(t.{c} IS NULL AND s.{c} IS NOT NULL)"))
            .collect::<Vec<_>>()
            .join(" OR ");
        Some(update(sets, fills))
    };
    match target.strategy {
        Strategy::InsertNew => vec![insert],
        Strategy::Accumulate => fill(&rest).into_iter().chain([insert]).collect(),
        Strategy::Latest | Strategy::History => {
            let version: Vec<String> = target.version.iter().map(q).collect();
            let newer = row_greater(&version, "s", "t");
            // Each assignment reads only its own column, so the order in
            // which MySQL applies them does not matter.
            let sets = rest
                .iter()
                .map(|c| {
                    if version.contains(c) {
                        format!("{c} = s.{c}")
                    } else {
                        format!("{c} = COALESCE(s.{c}, t.{c})")
                    }
                })
                .collect();
            let mut out = vec![update(sets, newer)];
            out.extend(fill(&rest));
            out.push(insert);
            if target.strategy == Strategy::History {
                out.push(valid_to_sql(backend, target));
            }
            out
        }
    }
}

/// `a > b` for rows of columns compared in order (a row-value comparison).
fn row_greater(cols: &[String], a: &str, b: &str) -> String {
    if let [c] = cols {
        return format!("{a}.{c} > {b}.{c}");
    }
    let side = |x: &str| {
        cols.iter()
            .map(|c| format!("{x}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) > ({})", side(a), side(b))
}

/// The statement that sets `valid_to` of every version of the entities in
/// the staging table to the first version column of the next version.
fn valid_to_sql(backend: Backend, target: &Target) -> String {
    let q = |c: &SqlIdent| backend.quote(c);
    let (table, stg) = (q(target.table()), q(&staging(target)));
    let list = |cols: &[SqlIdent], prefix: &str| {
        cols.iter()
            .map(|c| format!("{prefix}{}", q(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let entity = list(&target.entity, "");
    let entity_in = if target.entity.len() == 1 {
        format!("{entity} IN (SELECT {entity} FROM {stg})")
    } else {
        format!("({entity}) IN (SELECT {entity} FROM {stg})")
    };
    let next = format!(
        "SELECT {}, LEAD({}) OVER (PARTITION BY {entity} ORDER BY {}) AS next_from FROM {table} WHERE {entity_in}",
        list(&target.key, ""),
        q(&target.version[0]),
        list(&target.version, ""),
    );
    let join = target
        .key
        .iter()
        .map(|k| format!("t.{0} = n.{0}", q(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let vt = q(target.valid_to.as_ref().expect("checked"));
    match backend {
        Backend::MySql => format!(
            "UPDATE {table} t JOIN ({next}) n ON {join} SET t.{vt} = n.next_from WHERE NOT (t.{vt} <=> n.next_from)"
        ),
        Backend::Postgres => format!(
            "UPDATE {table} AS t SET {vt} = n.next_from FROM ({next}) AS n WHERE {join} AND t.{vt} IS DISTINCT FROM n.next_from"
        ),
        Backend::Sqlite => format!(
            "UPDATE {table} AS t SET {vt} = n.next_from FROM ({next}) AS n WHERE {join} AND t.{vt} IS NOT n.next_from"
        ),
    }
}

/// Drops the staging table (MySQL and SQLite keep temporary tables until
/// the connection closes; PostgreSQL's go at commit).
pub(super) fn unstage_sql(backend: Backend, target: &Target) -> Option<String> {
    let stg = backend.quote(&staging(target));
    match backend {
        Backend::MySql => Some(format!("DROP TEMPORARY TABLE IF EXISTS {stg}")),
        Backend::Sqlite => Some(format!("DROP TABLE IF EXISTS temp.{stg}")),
        Backend::Postgres => None,
    }
}

/// Whether rows can be merged into `target` by one insert that resolves
/// conflicts on its key (`ON CONFLICT` / `ON DUPLICATE KEY UPDATE`), writing
/// each row once instead of staging it first. `unique` lists the table's
/// unique keys: the target's key must be one of them, and on MySQL the only
/// one (a conflict on any unique key takes the update path there). History
/// targets, whose versions' `valid_to` follow from the staged entities, and
/// on MySQL versions of several columns (its assignments see the ones
/// before them) keep the staged merge.
pub fn upserts(backend: Backend, target: &Target, unique: &[Vec<String>]) -> bool {
    let key: std::collections::BTreeSet<&str> = target.key.iter().map(SqlIdent::as_str).collect();
    let is_key = |cols: &Vec<String>| {
        cols.len() == key.len() && cols.iter().all(|c| key.contains(c.as_str()))
    };
    if target.strategy == Strategy::History || !unique.iter().any(is_key) {
        return false;
    }
    match backend {
        Backend::MySql => unique.len() == 1 && target.version.len() <= 1,
        Backend::Postgres | Backend::Sqlite => true,
    }
}

/// A multi-row insert of `rows` rows of `columns` into the target that
/// merges each row whose key is there by the target's strategy (see
/// [`upserts`] for when it applies). On PostgreSQL and SQLite its count is
/// the rows inserted or changed; on MySQL, with the client's found-rows
/// flag that sqlx sets, it is inserted + 2 × changed + unchanged.
pub fn upsert_sql(backend: Backend, target: &Target, columns: &[SqlIdent], rows: usize) -> String {
    let q = |c: &SqlIdent| backend.quote(c);
    let table = q(target.table());
    let mut sql = insert_sql(backend, target, columns, rows);
    let rest: Vec<&SqlIdent> = columns.iter().filter(|c| !target.key.contains(c)).collect();
    // The proposed row's column, and the existing row's.
    let new = |c: &SqlIdent| match backend {
        Backend::MySql => format!("VALUES({})", q(c)),
        _ => format!("excluded.{}", q(c)),
    };
    let old = |c: &SqlIdent| match backend {
        Backend::MySql => q(c),
        _ => format!("{table}.{}", q(c)),
    };
    let fill = |c: &SqlIdent| format!("COALESCE({}, {})", old(c), new(c));
    let fills = rest
        .iter()
        .map(|c| format!("({} IS NULL AND {} IS NOT NULL)", old(c), new(c)))
        .collect::<Vec<_>>()
        .join(" OR ");
    let versioned = target.strategy == Strategy::Latest;
    let newer = {
        let side = |f: &dyn Fn(&SqlIdent) -> String| {
            let v: Vec<String> = target.version.iter().map(f).collect();
            if v.len() == 1 {
                v[0].clone()
            } else {
                format!("({})", v.join(", "))
            }
        };
        format!("{} > {}", side(&new), side(&old))
    };
    let sets: Vec<String> = if versioned {
        // Version columns last: on MySQL each assignment sees the ones
        // before it, and `newer` reads the version.
        let (plain, version): (Vec<&&SqlIdent>, Vec<&&SqlIdent>) =
            rest.iter().partition(|c| !target.version.contains(c));
        plain
            .into_iter()
            .map(|c| {
                let v = format!(
                    "CASE WHEN {newer} THEN COALESCE({}, {}) ELSE {} END",
                    new(c),
                    old(c),
                    fill(c)
                );
                (c, v)
            })
            .chain(version.into_iter().map(|c| {
                (
                    c,
                    format!("CASE WHEN {newer} THEN {} ELSE {} END", new(c), fill(c)),
                )
            }))
            .map(|(c, v)| format!("{} = {v}", q(c)))
            .collect()
    } else {
        rest.iter()
            .map(|c| format!("{} = {}", q(c), fill(c)))
            .collect()
    };
    let keys = target.key.iter().map(&q).collect::<Vec<_>>().join(", ");
    let nothing = target.strategy == Strategy::InsertNew || sets.is_empty();
    match backend {
        Backend::MySql if nothing => {
            // Sets a key column to itself: the row is left as it is.
            let k = q(&target.key[0]);
            sql.push_str(&format!(" ON DUPLICATE KEY UPDATE {k} = {k}"));
        }
        Backend::MySql => {
            sql.push_str(&format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", ")));
        }
        _ if nothing => sql.push_str(&format!(" ON CONFLICT ({keys}) DO NOTHING")),
        _ => {
            let when = if versioned {
                format!("{newer} OR {fills}")
            } else {
                fills
            };
            sql.push_str(&format!(
                " ON CONFLICT ({keys}) DO UPDATE SET {} WHERE {when}",
                sets.join(", ")
            ));
        }
    }
    sql
}

/// A plain multi-row insert of `rows` rows of `columns` into the target
/// (rows whose keys are known to be new).
pub fn insert_sql(backend: Backend, target: &Target, columns: &[SqlIdent], rows: usize) -> String {
    insert_into(backend, target.table(), columns, rows)
}

/// A count of the rows of the target whose key is one of `rows` keys
/// (MySQL: with the upsert's count it gives the rows inserted).
pub fn existing_sql(backend: Backend, target: &Target, rows: usize) -> String {
    existing(backend, target, rows, "COUNT(*)")
}

/// The keys of the rows of the target whose key is one of `rows` keys.
pub fn existing_keys_sql(backend: Backend, target: &Target, rows: usize) -> String {
    let keys = target
        .key
        .iter()
        .map(|k| backend.quote(k))
        .collect::<Vec<_>>()
        .join(", ");
    existing(backend, target, rows, &keys)
}

fn existing(backend: Backend, target: &Target, rows: usize, what: &str) -> String {
    let q = |c: &SqlIdent| backend.quote(c);
    let keys = target.key.iter().map(&q).collect::<Vec<_>>().join(", ");
    let mut m = backend.markers();
    let one = if target.key.len() == 1 {
        keys.clone()
    } else {
        format!("({keys})")
    };
    let list = (0..rows)
        .map(|_| {
            if target.key.len() == 1 {
                m.next()
            } else {
                format!("({})", m.list(target.key.len()))
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {what} FROM {} WHERE {one} IN ({list})",
        q(target.table())
    )
}
