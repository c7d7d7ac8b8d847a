//! The transaction's old path, kept for its users: the engine lives in
//! [`crate::fs::txn`].

pub use super::txn::{Group, Held, Store, Transaction};
