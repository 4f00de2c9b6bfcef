//! SQL identifiers from configuration and the few dialect differences the
//! ledger and the task kinds share: quoting and bind-parameter syntax.
//!
//! Identifiers that come from DAG files are checked against a strict pattern
//! when the file is loaded ([`SqlIdent`]) and quoted by one function
//! ([`Backend::quote`]); values are always bound parameters.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A table or column name from configuration: ASCII letters, digits and `_`,
/// not starting with a digit, at most 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SqlIdent(String);

impl SqlIdent {
    /// Checks `name` against the identifier pattern.
    ///
    /// # Errors
    /// `name` is not a plain SQL name.
    pub fn new(name: &str) -> Result<Self, BadIdent> {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if first_ok && rest_ok && name.len() <= 63 {
            Ok(Self(name.to_owned()))
        } else {
            Err(BadIdent(name.to_owned()))
        }
    }

    /// This name behind a prefix of plain name characters, e.g. a staging
    /// table's `stg_` and its table's name.
    pub fn prefixed(&self, prefix: &'static str) -> Self {
        debug_assert!(prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_'));
        Self(format!("{prefix}{}", self.0))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A name that is not a plain SQL name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a plain SQL name (letters, digits and _, not starting with a digit, at most 63 characters)")]
pub struct BadIdent(pub String);

impl fmt::Display for SqlIdent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SqlIdent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SqlIdent::new(&s).map_err(serde::de::Error::custom)
    }
}

/// The warehouse database family, chosen by the URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, the embedded default (`sqlite:`).
    Sqlite,
    /// MySQL or MariaDB (`mysql://`, `mariadb://`).
    MySql,
    /// PostgreSQL (`postgres://`, `postgresql://`).
    Postgres,
}

impl Backend {
    /// The backend a database URL names, or `None` for an unknown scheme.
    pub fn from_url(url: &str) -> Option<Self> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Some(Self::Sqlite),
            "mysql" | "mariadb" => Some(Self::MySql),
            "postgres" | "postgresql" => Some(Self::Postgres),
            _ => None,
        }
    }

    /// A short lowercase name: `sqlite`, `mysql` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::MySql => "mysql",
            Self::Postgres => "postgres",
        }
    }

    /// Quotes a checked identifier: the only way a name reaches SQL.
    pub fn quote(self, ident: &SqlIdent) -> String {
        let ident = ident.as_str();
        match self {
            Self::MySql => format!("`{ident}`"),
            Self::Sqlite | Self::Postgres => format!("\"{ident}\""),
        }
    }

    /// A statement written with `?` for its bind parameters, in this
    /// dialect: the `?` markers numbered (`$1`, `$2`, ...) on PostgreSQL.
    /// A `?` inside a quoted literal is left alone.
    pub fn sql(self, template: &str) -> String {
        if self != Self::Postgres {
            return template.to_owned();
        }
        let mut m = self.markers();
        let mut out = String::with_capacity(template.len() + 16);
        let mut quoted = false;
        for c in template.chars() {
            match c {
                '\'' => {
                    quoted = !quoted;
                    out.push(c);
                }
                '?' if !quoted => out.push_str(&m.next()),
                _ => out.push(c),
            }
        }
        out
    }

    /// Bind-parameter markers for one statement, numbered from 1 in the
    /// order they are taken: take them in the order they appear in the
    /// statement's text, which is the order their values are bound.
    pub fn markers(self) -> Markers {
        Markers {
            backend: self,
            taken: 0,
        }
    }

    /// The most bind parameters one statement may carry.
    pub fn max_params(self) -> usize {
        match self {
            Self::Sqlite => 32_000,
            Self::MySql | Self::Postgres => 65_000,
        }
    }
}

/// The bind-parameter markers of one statement ([`Backend::markers`]): `?`
/// on SQLite and MySQL, `$1`, `$2`, ... on PostgreSQL.
#[derive(Debug, Clone)]
pub struct Markers {
    backend: Backend,
    taken: usize,
}

impl Markers {
    /// The next marker.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> String {
        self.taken += 1;
        match self.backend {
            Backend::Postgres => format!("${}", self.taken),
            Backend::Sqlite | Backend::MySql => "?".to_owned(),
        }
    }

    /// The next `count` markers, comma-separated.
    pub fn list(&mut self, count: usize) -> String {
        (0..count)
            .map(|_| self.next())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How many markers were taken.
    pub fn taken(&self) -> usize {
        self.taken
    }
}

/// A text column that may be NULL. MySQL reports a `TEXT` column with a
/// binary collation (as the warehouse's tables have) as `BLOB`, which the
/// `Any` driver will not decode as a string; those bytes are read as UTF-8.
///
/// # Errors
/// The column is missing, or holds neither text nor bytes.
pub fn text(row: &sqlx::any::AnyRow, column: &str) -> Result<Option<String>, sqlx::Error> {
    use sqlx::Row;
    match row.try_get::<Option<String>, _>(column) {
        Ok(v) => Ok(v),
        Err(sqlx::Error::ColumnDecode { .. }) => Ok(row
            .try_get::<Option<Vec<u8>>, _>(column)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())),
        Err(e) => Err(e),
    }
}

/// A value bound to a statement: text or an integer, either possibly NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// Text.
    Text(Option<String>),
    /// An integer.
    Int(Option<i64>),
}

impl From<&str> for Bound {
    fn from(v: &str) -> Self {
        Self::Text(Some(v.to_owned()))
    }
}

impl From<Option<String>> for Bound {
    fn from(v: Option<String>) -> Self {
        Self::Text(v)
    }
}

impl From<i64> for Bound {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}

impl From<Option<i64>> for Bound {
    fn from(v: Option<i64>) -> Self {
        Self::Int(v)
    }
}

/// Writes the row of `table` whose key columns hold `key`, setting the
/// `values` columns: an update, then an insert when no row matched, each
/// committing on its own. That is an upsert in every dialect for rows that
/// only one writer ever writes (a task attempt, a consumer's progress), and
/// unlike DELETE and INSERT in one transaction it takes no gap locks that
/// concurrent writers of other rows deadlock on. The table and column
/// names are cutover's own (`'static` text written in the code), never
/// configuration.
///
/// # Errors
/// A statement failed.
pub async fn write_row(
    pool: &sqlx::AnyPool,
    backend: Backend,
    table: &'static str,
    key: &[(&'static str, Bound)],
    values: &[(&'static str, Bound)],
) -> Result<(), sqlx::Error> {
    let mut m = backend.markers();
    let set: Vec<String> = values
        .iter()
        .map(|(c, _)| format!("{c} = {}", m.next()))
        .collect();
    let by: Vec<String> = key
        .iter()
        .map(|(c, _)| format!("{c} = {}", m.next()))
        .collect();
    let update = format!(
        "UPDATE {table} SET {} WHERE {}",
        set.join(", "),
        by.join(" AND ")
    );
    let updated = bind_all(sqlx::query(&update), values, key)
        .execute(pool)
        .await?;
    if updated.rows_affected() > 0 {
        return Ok(());
    }
    let columns: Vec<&str> = values.iter().chain(key).map(|(c, _)| *c).collect();
    let insert = format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        columns.join(", "),
        backend.markers().list(columns.len())
    );
    bind_all(sqlx::query(&insert), values, key)
        .execute(pool)
        .await?;
    Ok(())
}

/// Binds `values`, then `key`, to `q` in that order.
pub(crate) fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    values: &[(&str, Bound)],
    key: &[(&str, Bound)],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for (_, v) in values.iter().chain(key) {
        q = match v.clone() {
            Bound::Text(t) => q.bind(t),
            Bound::Int(i) => q.bind(i),
        };
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["fact_views", "_x", "A1"] {
            assert!(SqlIdent::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "a-b",
            "a b",
            "x;drop table y",
            "é",
            &"a".repeat(64),
        ] {
            assert!(SqlIdent::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dialects() {
        assert_eq!(Backend::from_url("sqlite:x.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::from_url("mariadb://h/db"), Some(Backend::MySql));
        assert_eq!(
            Backend::from_url("postgresql://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::from_url("mongodb://h"), None);
        let mut pg = Backend::Postgres.markers();
        assert_eq!(pg.next(), "$1");
        assert_eq!(pg.list(3), "$2, $3, $4");
        assert_eq!(Backend::MySql.markers().list(2), "?, ?");
        assert_eq!(
            Backend::Postgres.sql("UPDATE t SET a = ?, b = 'x?' WHERE c = ?"),
            "UPDATE t SET a = $1, b = 'x?' WHERE c = $2"
        );
        assert_eq!(Backend::Sqlite.sql("a = ?"), "a = ?");
        assert_eq!(Backend::MySql.quote(&SqlIdent::new("t").unwrap()), "`t`");
    }
}
