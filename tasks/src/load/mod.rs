//! Load kinds: write transform outputs into warehouse tables.

pub mod merge;
