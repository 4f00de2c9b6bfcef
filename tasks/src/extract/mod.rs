//! Extract kinds: read source documents into typed segments.

pub mod mongo;
