//! Transform kinds: turn extracted segments into fact and dimension rows.

pub mod polars;
