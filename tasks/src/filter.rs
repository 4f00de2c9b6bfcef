//! MongoDB query filters that mean the same on a MongoDB server and on the
//! events file: a small, checked subset of the query language, evaluated in
//! process for the file and sent as is to MongoDB.
//!
//! Supported: `$and`, `$or` and `$nor` of filters; per field path, equality
//! (a missing field equals `null`) and the operators `$eq`, `$ne`, `$in`,
//! `$nin`, `$exists`, `$type` and the comparisons `$gt`, `$gte`, `$lt`,
//! `$lte` between numbers or between dates. A filter with anything else is
//! refused when it is built.

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::schema::lookup;

/// A checked filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter(Document);

const TYPES: &[&str] = &[
    "string", "int", "long", "double", "number", "date", "null", "bool", "objectId", "object",
    "array",
];

/// A filter cutover cannot evaluate the way MongoDB does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(String);

impl Filter {
    /// Checks a filter document.
    ///
    /// # Errors
    /// The first unsupported operator or malformed argument.
    pub fn new(doc: Document) -> Result<Self, FilterError> {
        check(&doc).map_err(FilterError)?;
        Ok(Self(doc))
    }

    /// Converts and checks a filter written in a DAG file.
    ///
    /// # Errors
    /// The table is not a filter this module supports.
    pub fn from_toml(t: &toml::Table) -> Result<Self, FilterError> {
        let json = serde_json::to_value(t).map_err(|e| FilterError(e.to_string()))?;
        match Bson::try_from(json) {
            Ok(Bson::Document(d)) => Self::new(d),
            Ok(_) => Err(FilterError("expected a table".into())),
            Err(e) => Err(FilterError(format!("not a MongoDB filter: {e}"))),
        }
    }

    /// The filter as a MongoDB query document.
    pub fn as_doc(&self) -> &Document {
        &self.0
    }

    /// Whether `doc` passes, as MongoDB would decide.
    pub fn matches(&self, doc: &Document) -> bool {
        matches(&self.0, doc)
    }
}

fn check(filter: &Document) -> Result<(), String> {
    for (key, cond) in filter {
        match key.as_str() {
            "$and" | "$or" | "$nor" => match cond {
                Bson::Array(items) if !items.is_empty() => {
                    for item in items {
                        match item {
                            Bson::Document(d) => check(d)?,
                            _ => return Err(format!("`{key}` takes an array of filters")),
                        }
                    }
                }
                _ => return Err(format!("`{key}` takes a non-empty array of filters")),
            },
            other if other.starts_with('$') => {
                return Err(format!(
                    "`{other}` is not supported; use $and, $or, $nor or field paths"
                ))
            }
            path => {
                if let Bson::Document(ops) = cond {
                    if ops.keys().any(|k| k.starts_with('$')) {
                        for (op, arg) in ops {
                            check_op(path, op, arg)?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_op(path: &str, op: &str, arg: &Bson) -> Result<(), String> {
    let ok = match op {
        "$eq" | "$ne" => true,
        "$in" | "$nin" => matches!(arg, Bson::Array(_)),
        "$exists" => matches!(arg, Bson::Boolean(_)),
        "$gt" | "$gte" | "$lt" | "$lte" => number(arg).is_some() || matches!(arg, Bson::DateTime(_)),
        "$type" => match arg {
            Bson::String(t) => TYPES.contains(&t.as_str()),
            Bson::Array(ts) => ts
                .iter()
                .all(|t| matches!(t, Bson::String(t) if TYPES.contains(&t.as_str()))),
            _ => false,
        },
        other => {
            return Err(format!(
                "`{path}.{other}` is not supported; use $eq, $ne, $in, $nin, $exists, $type, $gt, $gte, $lt or $lte"
            ))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("`{path}.{op}` has an argument of the wrong kind"))
    }
}

fn matches(filter: &Document, doc: &Document) -> bool {
    filter.iter().all(|(key, cond)| match (key.as_str(), cond) {
        ("$and", Bson::Array(xs)) => xs.iter().all(|f| sub(f, doc)),
        ("$or", Bson::Array(xs)) => xs.iter().any(|f| sub(f, doc)),
        ("$nor", Bson::Array(xs)) => !xs.iter().any(|f| sub(f, doc)),
        (path, cond) => {
            let value = lookup(doc, path);
            match cond {
                Bson::Document(ops) if ops.keys().any(|k| k.starts_with('$')) => {
                    ops.iter().all(|(op, arg)| op_matches(value, op, arg))
                }
                want => equals(value, want),
            }
        }
    })
}

fn sub(f: &Bson, doc: &Document) -> bool {
    matches!(f, Bson::Document(f) if matches(f, doc))
}

fn op_matches(value: Option<&Bson>, op: &str, arg: &Bson) -> bool {
    match (op, arg) {
        ("$eq", x) => equals(value, x),
        ("$ne", x) => !equals(value, x),
        ("$in", Bson::Array(xs)) => xs.iter().any(|x| equals(value, x)),
        ("$nin", Bson::Array(xs)) => !xs.iter().any(|x| equals(value, x)),
        ("$exists", Bson::Boolean(b)) => value.is_some() == *b,
        ("$type", Bson::String(t)) => value.is_some_and(|v| has_type(v, t)),
        ("$type", Bson::Array(ts)) => value.is_some_and(|v| {
            ts.iter()
                .any(|t| matches!(t, Bson::String(t) if has_type(v, t)))
        }),
        ("$gt", x) => compare(value, x) == Some(Ordering::Greater),
        ("$gte", x) => matches!(compare(value, x), Some(Ordering::Greater | Ordering::Equal)),
        ("$lt", x) => compare(value, x) == Some(Ordering::Less),
        ("$lte", x) => matches!(compare(value, x), Some(Ordering::Less | Ordering::Equal)),
        _ => false,
    }
}

fn has_type(v: &Bson, t: &str) -> bool {
    match t {
        "string" => matches!(v, Bson::String(_)),
        "int" => matches!(v, Bson::Int32(_)),
        "long" => matches!(v, Bson::Int64(_)),
        "double" => matches!(v, Bson::Double(_)),
        "number" => number(v).is_some(),
        "date" => matches!(v, Bson::DateTime(_)),
        "null" => matches!(v, Bson::Null),
        "bool" => matches!(v, Bson::Boolean(_)),
        "objectId" => matches!(v, Bson::ObjectId(_)),
        "object" => matches!(v, Bson::Document(_)),
        "array" => matches!(v, Bson::Array(_)),
        _ => false,
    }
}

fn number(b: &Bson) -> Option<f64> {
    match b {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(f) => Some(*f),
        _ => None,
    }
}

/// Equality as a query means it: numbers by value, a missing field equals
/// `null`.
fn equals(value: Option<&Bson>, want: &Bson) -> bool {
    match value {
        None => matches!(want, Bson::Null),
        Some(v) => match (number(v), number(want)) {
            (Some(a), Some(b)) => a == b,
            _ => v == want,
        },
    }
}

/// Comparison within one type class (numbers, dates); none across them.
fn compare(value: Option<&Bson>, arg: &Bson) -> Option<Ordering> {
    match (value?, arg) {
        (Bson::DateTime(a), Bson::DateTime(b)) => Some(a.cmp(b)),
        (a, b) => number(a)?.partial_cmp(&number(b)?),
    }
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;
    use crate::source::parse_line;

    #[test]
    fn filters_mean_what_mongodb_means() {
        let f = |text: &str| Filter::from_toml(&text.parse::<toml::Table>().unwrap());
        let doc = parse_line(
            r#"{"type":"a","ts":{"$date":"2026-01-05T00:00:00Z"},"payload":{"channel":"email","n":2,"s":"3"}}"#,
        )
        .unwrap();
        let yes = [
            r#""payload.channel" = "email""#,
            r#""payload.n" = { "$in" = [1, 2] }"#,
            r#""payload.gone" = { "$exists" = false }"#,
            r#""payload.gone" = { "$ne" = "x" }"#,
            r#""payload.n" = { "$type" = ["int", "long"], "$gte" = 2 }"#,
            r#"'$or' = [{ "payload.n" = 5 }, { "payload.s" = { "$type" = "string" } }]"#,
        ];
        for text in yes {
            assert!(f(text).unwrap().matches(&doc), "{text}");
        }
        let no = [
            r#""payload.channel" = { "$ne" = "email" }"#,
            r#""payload.n" = { "$nin" = [2] }"#,
            r#""payload.s" = { "$type" = "int" }"#,
            r#""payload.s" = { "$gte" = 0 }"#,
            r#"'$nor' = [{ "type" = "a" }]"#,
        ];
        for text in no {
            assert!(!f(text).unwrap().matches(&doc), "{text}");
        }
        let day = bson::DateTime::from_millis(1_767_571_200_000);
        assert!(Filter::new(doc! { "ts": { "$gte": day } })
            .unwrap()
            .matches(&doc));
        assert!(!Filter::new(doc! { "ts": { "$gt": day } })
            .unwrap()
            .matches(&doc));
        let err = f(r#""ts" = { "$regex" = "x" }"#).unwrap_err();
        assert!(
            err.to_string().contains("`ts.$regex` is not supported"),
            "{err}"
        );
        assert!(f(r#""x" = { "$type" = "text" }"#).is_err());
    }
}
