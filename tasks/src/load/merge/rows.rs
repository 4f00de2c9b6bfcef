//! Rows before they are merged: reduced to one per key, checked against
//! what the target columns hold, bound to statements.

use std::collections::HashMap;

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::Any;
use workflows::{Backend, SqlIdent};

use super::{Strategy, Target};
use crate::schema::{ColumnType, Value};
use crate::warehouse::ColumnInfo;

/// A key or version column a target names that its output does not make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the output has no column `{column}` for table {table}")]
pub struct MissingColumn {
    /// The column.
    pub column: String,
    /// The target's table.
    pub table: SqlIdent,
}

/// Reduces a batch to at most two rounds of one row per key, merged one
/// after the other, so that a merge costs the distinct keys, not the
/// copies: for `insert_new` one round with the first row of each key; for
/// `accumulate` one round with, per key, the first non-null value of each
/// column; for `latest` and `history`, round one holds each key's newest
/// row (the greatest `version`; at an equal version, the earlier row) as it
/// is, and round two, for keys with older rows, a row whose columns are the
/// newest non-null values of those older rows, with the version of the
/// newest of them: it can only fill what is still null, never overwrite a
/// value of a newer version already in the table.
///
/// # Errors
/// A key or version column is not among the output's columns.
pub fn reduce(
    target: &Target,
    columns: &[String],
    rows: Vec<Vec<Value>>,
) -> Result<Vec<Vec<Vec<Value>>>, MissingColumn> {
    let index = |name: &str| {
        columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| MissingColumn {
                column: name.to_owned(),
                table: target.table().clone(),
            })
    };
    let key_idx: Vec<usize> = target
        .key
        .iter()
        .map(|k| index(k.as_str()))
        .collect::<Result<_, _>>()?;
    let version_idx: Vec<usize> = target
        .version
        .iter()
        .map(|v| index(v.as_str()))
        .collect::<Result<_, _>>()?;
    let mut at: HashMap<String, usize> = HashMap::with_capacity(rows.len());
    // Per key: the newest row, and the fill made of the older ones.
    let mut newest: Vec<Vec<Value>> = Vec::with_capacity(rows.len());
    let mut fills: Vec<Option<Vec<Value>>> = Vec::new();
    let versioned = matches!(target.strategy, Strategy::Latest | Strategy::History);
    for row in rows {
        let key = key_of(&row, &key_idx);
        let Some(&i) = at.get(&key) else {
            at.insert(key, newest.len());
            newest.push(row);
            if versioned {
                fills.push(None);
            }
            continue;
        };
        match target.strategy {
            Strategy::InsertNew => {}
            Strategy::Accumulate => fill(&mut newest[i], row),
            Strategy::Latest | Strategy::History => {
                if newest[i] == row {
                    continue;
                }
                let older = if newer(&row, &newest[i], &version_idx) {
                    std::mem::replace(&mut newest[i], row)
                } else {
                    row
                };
                fills[i] = Some(match fills[i].take() {
                    None => older,
                    Some(f) if newer(&older, &f, &version_idx) => {
                        let mut o = older;
                        fill(&mut o, f);
                        o
                    }
                    Some(mut f) => {
                        fill(&mut f, older);
                        f
                    }
                });
            }
        }
    }
    let second: Vec<Vec<Value>> = fills.into_iter().flatten().collect();
    Ok(if second.is_empty() {
        vec![newest]
    } else {
        vec![newest, second]
    })
}

/// Fills the null cells of `row` from `other`.
fn fill(row: &mut [Value], other: Vec<Value>) {
    for (slot, v) in row.iter_mut().zip(other) {
        if *slot == Value::Null {
            *slot = v;
        }
    }
}

/// Whether `a`'s version columns compare greater than `b`'s, as SQL's row
/// comparison does (a null makes it unknown, so not greater).
fn newer(a: &[Value], b: &[Value], version: &[usize]) -> bool {
    use std::cmp::Ordering;
    for &i in version {
        let ord = match (&a[i], &b[i]) {
            (Value::Int(x), Value::Int(y)) => x.cmp(y),
            (Value::Float(x), Value::Float(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
            (Value::Int(x), Value::Float(y)) => {
                (*x as f64).partial_cmp(y).unwrap_or(Ordering::Equal)
            }
            (Value::Float(x), Value::Int(y)) => {
                x.partial_cmp(&(*y as f64)).unwrap_or(Ordering::Equal)
            }
            (Value::Str(x), Value::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
            (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
            _ => return false,
        };
        match ord {
            Ordering::Greater => return true,
            Ordering::Less => return false,
            Ordering::Equal => {}
        }
    }
    false
}

/// Why `v` cannot go into column `col` of `table`, if it cannot.
pub fn misfit(col: &ColumnInfo, table: &str, v: &Value, backend: Backend) -> Option<String> {
    let name = &col.name;
    match v {
        Value::Null if col.not_null => Some(format!("column {name} of {table} cannot be null")),
        Value::Str(s) => {
            if !col.nul_ok && s.contains('\0') {
                return Some(format!(
                    "column {name} of {table}: the value holds a NUL character, which PostgreSQL text cannot store"
                ));
            }
            if let Some(max) = col.max_chars {
                let n = s.chars().count() as u64;
                if n > max {
                    return Some(format!(
                        "column {name} of {table} holds at most {max} characters; the value has {n}"
                    ));
                }
            }
            if let Some(max) = col.max_bytes {
                if s.len() as u64 > max {
                    return Some(format!(
                        "column {name} of {table} holds at most {max} bytes; the value has {}",
                        s.len()
                    ));
                }
            }
            None
        }
        Value::Int(i) => match col.int_range {
            Some((lo, hi)) if *i < lo || *i > hi => Some(format!(
                "column {name} of {table} holds integers from {lo} to {hi}; the value is {i}"
            )),
            _ => None,
        },
        Value::Float(f) if !f.is_finite() && backend == Backend::MySql => {
            Some(format!("column {name} of {table}: MySQL cannot store {f}"))
        }
        _ => None,
    }
}

/// Why a row is too large to send at all, if it is.
pub(super) fn oversized(row: &[Value], max: usize) -> Option<String> {
    let bytes: usize = row
        .iter()
        .map(|v| match v {
            Value::Str(s) => s.len() + 2,
            _ => 16,
        })
        .sum();
    (bytes > max).then(|| {
        format!(
            "the row is {bytes} bytes, more than the server takes in one statement ({max} bytes)"
        )
    })
}

/// Rows per staging statement: bounded by the backend's bind parameters,
/// 2,000 rows, and about 4 MiB of values.
pub(super) const STAGE_BYTES: usize = 4 << 20;

pub(super) fn bind<'q>(
    q: Query<'q, Any, AnyArguments<'q>>,
    ty: ColumnType,
    v: &Value,
) -> Query<'q, Any, AnyArguments<'q>> {
    match ty {
        ColumnType::String | ColumnType::ObjectId => q.bind(match v {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        }),
        ColumnType::Int | ColumnType::Timestamp => q.bind(match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }),
        ColumnType::Float => q.bind(match v {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }),
        ColumnType::Bool => q.bind(match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        }),
    }
}

/// Column `i` of a row read back from the warehouse, as a value of `ty`.
pub(super) fn read_value(
    row: &sqlx::any::AnyRow,
    i: usize,
    ty: ColumnType,
) -> Result<Value, sqlx::Error> {
    use sqlx::Row;
    Ok(match ty {
        ColumnType::String | ColumnType::ObjectId => {
            match row.try_get::<Option<String>, _>(i) {
                Ok(v) => v.map_or(Value::Null, Value::Str),
                // MySQL hands text of a binary collation over as bytes.
                Err(sqlx::Error::ColumnDecode { .. }) => row
                    .try_get::<Option<Vec<u8>>, _>(i)?
                    .map_or(Value::Null, |b| {
                        Value::Str(String::from_utf8_lossy(&b).into_owned())
                    }),
                Err(e) => return Err(e),
            }
        }
        ColumnType::Int | ColumnType::Timestamp => row
            .try_get::<Option<i64>, _>(i)?
            .map_or(Value::Null, Value::Int),
        ColumnType::Float => row
            .try_get::<Option<f64>, _>(i)?
            .map_or(Value::Null, Value::Float),
        ColumnType::Bool => row
            .try_get::<Option<bool>, _>(i)?
            .map_or(Value::Null, Value::Bool),
    })
}

/// A row's key as one string that tells values of different types apart.
pub(super) fn key_of(row: &[Value], key_idx: &[usize]) -> String {
    let mut key = String::new();
    for &i in key_idx {
        match &row[i] {
            Value::Null => key.push('n'),
            Value::Bool(b) => key.push(if *b { 't' } else { 'f' }),
            Value::Int(n) => {
                key.push('i');
                key.push_str(&n.to_string());
            }
            Value::Float(f) => {
                key.push('d');
                key.push_str(&f.to_bits().to_string());
            }
            Value::Str(s) => {
                key.push('s');
                key.push_str(&s.len().to_string());
                key.push(':');
                key.push_str(s);
            }
        }
        key.push('\u{1f}');
    }
    key
}
