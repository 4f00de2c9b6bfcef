//! Verify kinds: prove the warehouse agrees with the source.

pub mod checks;
pub mod reconcile;
