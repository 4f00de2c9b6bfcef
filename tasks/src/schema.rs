//! The typed columns an extract declares, and how a source document becomes
//! a row of them or is rejected with a reason.

use std::collections::BTreeMap;

use bson::{Bson, Document};
use serde::{Deserialize, Serialize};
use workflows::SqlIdent;

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// A UTF-8 string.
    String,
    /// A 64-bit integer; a BSON int32 or int64 (a double is rejected).
    Int,
    /// A double; a BSON double, int32 or int64.
    Float,
    /// A boolean.
    Bool,
    /// A BSON date, kept as epoch milliseconds (UTC).
    Timestamp,
    /// A BSON ObjectId, kept as its 24-digit hex string.
    ObjectId,
}

impl ColumnType {
    /// The name used in messages and segment headers.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Int => "int",
            Self::Float => "float",
            Self::Bool => "bool",
            Self::Timestamp => "timestamp",
            Self::ObjectId => "object_id",
        }
    }
}

/// One field path or several tried in order (the first present wins), e.g.
/// a payload field renamed between schema versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Paths {
    /// One dotted path.
    One(String),
    /// Dotted paths tried in order.
    Many(Vec<String>),
}

impl Paths {
    fn as_slice(&self) -> &[String] {
        match self {
            Self::One(p) => std::slice::from_ref(p),
            Self::Many(ps) => ps,
        }
    }

    fn describe(&self) -> String {
        self.as_slice()
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

/// How one column is read from a document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// The dotted field path in the document, or a list of paths tried in
    /// order.
    pub path: Paths,
    /// The value's type; a value of another type makes the document invalid.
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// Whether the field may be missing or null.
    #[serde(default)]
    pub nullable: bool,
    /// The least value a number may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The values a string may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
}

/// A typed cell, written to segments as the plain JSON value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// Missing or null.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer or a timestamp in epoch ms.
    Int(i64),
    /// A double.
    Float(f64),
    /// A string or an ObjectId's hex.
    Str(String),
}

impl<'de> Deserialize<'de> for Value {
    // By hand rather than `untagged`: that tries each variant in turn and
    // builds an error for every miss, which dominated reading segments.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("null, a boolean, a number or a string")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
                Ok(Value::Int(i))
            }
            fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<Value, E> {
                i64::try_from(u)
                    .map(Value::Int)
                    .map_err(|_| E::custom(format!("{u} is out of range")))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
                Ok(Value::Float(f))
            }
            fn visit_str<E>(self, s: &str) -> Result<Value, E> {
                Ok(Value::Str(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Value, E> {
                Ok(Value::Str(s))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// 0001-01-01T00:00:00Z in epoch ms: the earliest date a column holds.
pub const EARLIEST_MS: i64 = -62_135_596_800_000;
/// 9999-12-31T23:59:59.999Z in epoch ms: the latest date a column holds.
/// Later dates have no calendar day the warehouse's date keys can name.
pub const LATEST_MS: i64 = 253_402_300_799_999;

/// The columns of an extract, in name order.
pub type Columns = BTreeMap<SqlIdent, ColumnSpec>;

/// Why a document does not read as a row: every column's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Invalid(pub Vec<String>);

/// Reads one column of `doc`.
///
/// # Errors
/// Why the document is invalid for this column.
pub fn read_column(doc: &Document, name: &str, spec: &ColumnSpec) -> Result<Value, Invalid> {
    column(doc, name, spec).map_err(|r| Invalid(vec![r]))
}

fn column(doc: &Document, name: &str, spec: &ColumnSpec) -> Result<Value, String> {
    let found = spec.paths_lookup(doc);
    let value = match found {
        None | Some(Bson::Null) => {
            return if spec.nullable {
                Ok(Value::Null)
            } else {
                Err(format!(
                    "column {name}: {} is missing",
                    spec.path.describe()
                ))
            };
        }
        Some(v) => v,
    };
    let wrong = |v: &Bson| {
        format!(
            "column {name}: {} is {}, expected {}",
            spec.path.describe(),
            bson_type_name(v),
            spec.ty.name()
        )
    };
    let out = match (spec.ty, value) {
        (ColumnType::String, Bson::String(s)) => Value::Str(s.clone()),
        (ColumnType::Int, Bson::Int32(i)) => Value::Int(i64::from(*i)),
        (ColumnType::Int, Bson::Int64(i)) => Value::Int(*i),
        (ColumnType::Float, Bson::Double(f)) => Value::Float(*f),
        (ColumnType::Float, Bson::Int32(i)) => Value::Float(f64::from(*i)),
        (ColumnType::Float, Bson::Int64(i)) => Value::Float(*i as f64),
        (ColumnType::Bool, Bson::Boolean(b)) => Value::Bool(*b),
        (ColumnType::Timestamp, Bson::DateTime(d)) => {
            let ms = d.timestamp_millis();
            if !(EARLIEST_MS..=LATEST_MS).contains(&ms) {
                return Err(format!(
                    "column {name}: {} is a date outside the years 1 to 9999 ({ms} ms since 1970)",
                    spec.path.describe()
                ));
            }
            Value::Int(ms)
        }
        (ColumnType::ObjectId, Bson::ObjectId(o)) => Value::Str(o.to_hex()),
        (_, v) => return Err(wrong(v)),
    };
    if let (Some(min), Value::Int(i)) = (spec.min, &out) {
        if (*i as f64) < min {
            return Err(format!(
                "column {name}: {} is {i}, less than the minimum {min}",
                spec.path.describe()
            ));
        }
    }
    if let (Some(min), Value::Float(f)) = (spec.min, &out) {
        if *f < min || f.is_nan() {
            return Err(format!(
                "column {name}: {} is {f}, less than the minimum {min}",
                spec.path.describe()
            ));
        }
    }
    if let (Some(allowed), Value::Str(s)) = (&spec.one_of, &out) {
        if !allowed.iter().any(|a| a == s) {
            return Err(format!(
                "column {name}: {} is {s:?}, not one of {}",
                spec.path.describe(),
                allowed.join(", ")
            ));
        }
    }
    Ok(out)
}

impl ColumnSpec {
    fn paths_lookup<'d>(&self, doc: &'d Document) -> Option<&'d Bson> {
        self.path
            .as_slice()
            .iter()
            .find_map(|p| lookup(doc, p).filter(|v| !matches!(v, Bson::Null)))
            .or_else(|| self.path.as_slice().iter().find_map(|p| lookup(doc, p)))
    }
}

/// The value at a dotted path.
pub fn lookup<'d>(doc: &'d Document, path: &str) -> Option<&'d Bson> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for part in parts {
        cur = match cur {
            Bson::Document(d) => d.get(part)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A document's type name for messages.
pub fn bson_type_name(v: &Bson) -> &'static str {
    match v {
        Bson::Double(_) => "a double",
        Bson::String(_) => "a string",
        Bson::Array(_) => "an array",
        Bson::Document(_) => "a document",
        Bson::Boolean(_) => "a bool",
        Bson::Null => "null",
        Bson::Int32(_) => "an int32",
        Bson::Int64(_) => "an int64",
        Bson::DateTime(_) => "a date",
        Bson::ObjectId(_) => "an ObjectId",
        Bson::Decimal128(_) => "a decimal",
        _ => "a value of another BSON type",
    }
}

/// Reads every column of `doc`, in `columns` order.
///
/// # Errors
/// Every reason the document is invalid, joined with `; `.
pub fn read_row(doc: &Document, columns: &Columns) -> Result<Vec<Value>, Invalid> {
    let mut row = Vec::with_capacity(columns.len());
    let mut reasons = Vec::new();
    for (name, spec) in columns {
        match column(doc, name.as_str(), spec) {
            Ok(v) => row.push(v),
            Err(r) => reasons.push(r),
        }
    }
    if reasons.is_empty() {
        Ok(row)
    } else {
        Err(Invalid(reasons))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn spec(path: &str, ty: ColumnType) -> ColumnSpec {
        ColumnSpec {
            path: Paths::One(path.into()),
            ty,
            nullable: false,
            min: None,
            one_of: None,
        }
    }

    #[test]
    fn reads_typed_values_and_rejects_wrong_ones() {
        let d =
            doc! { "payload": { "slide": "3", "dwell_ms": -5, "dwellMs": 10 }, "user_id": null };
        let err = read_column(&d, "slide", &spec("payload.slide", ColumnType::Int)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "column slide: `payload.slide` is a string, expected int"
        );
        let mut dwell = spec("payload.dwell_ms", ColumnType::Int);
        dwell.min = Some(0.0);
        assert!(read_column(&d, "dwell_ms", &dwell)
            .unwrap_err()
            .to_string()
            .contains("less than the minimum"));
        let mut user = spec("user_id", ColumnType::String);
        assert!(read_column(&d, "user_id", &user)
            .unwrap_err()
            .to_string()
            .contains("missing"));
        user.nullable = true;
        assert_eq!(read_column(&d, "user_id", &user).unwrap(), Value::Null);
        let either = ColumnSpec {
            path: Paths::Many(vec!["payload.nope".into(), "payload.dwellMs".into()]),
            ..spec("", ColumnType::Int)
        };
        assert_eq!(read_column(&d, "dwell", &either).unwrap(), Value::Int(10));
    }
}
