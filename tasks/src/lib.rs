//! cutover's task kinds and what they share: the event sources, the
//! warehouse connection, the segment files tasks hand to each other, the
//! legacy and warehouse reports, the synthetic event generator, and the
//! consumer of the live feed (`consume`).
//!
//! Every kind is one module (`extract::mongo`, `transform::polars`,
//! `load::merge`, `verify::reconcile`, `verify::checks`) with a config struct and one
//! [`workflows::Task`] implementation; [`kinds::TaskKind`] lists them once.

pub mod consume;
pub mod error;
pub mod expected;
pub mod extract;
pub mod filter;
pub mod flags;
pub mod html;
pub mod kinds;
pub mod load;
pub mod progress;
pub mod quarantine;
pub mod reconciliation;
pub mod replay;
pub mod reports;
pub mod schema;
pub mod seed;
pub mod segment;
pub mod slice;
pub mod source;
pub mod subset;
pub mod transform;
pub mod verify;
pub mod warehouse;

pub use kinds::{Env, TaskKind};
pub use warehouse::Warehouse;
