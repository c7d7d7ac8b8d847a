//! The old path of the write options and report, kept for their users:
//! the namespace and file-data changes live in [`crate::fs::txn`].

pub use super::txn::{BioFn, BioHook, BioRecord, BioStage, CompressOpts, Place, WriteOpts, WriteReport};
