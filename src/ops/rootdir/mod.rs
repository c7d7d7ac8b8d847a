//! `mkfs --rootdir` and `--rootdir-tar`: walk a host directory or an
//! archive into the items of the top-level subvolume and of the subvolumes
//! `--subvol` makes (inodes, names, xattrs, file extents), and write file data
//! into data chunks through a `DataSink`.
//!
//! Two passes: `scan` reads the source's shape and metadata (it has to,
//! before mkfs can size chunks), and `write_data` then copies file data and
//! makes the items that refer to it. Neither holds the tree: items go to a
//! sorter, and mkfs builds the subvolume trees from the merged, sorted
//! stream leaf by leaf. The files: `source` (one file as the walk sees it,
//! from either source), `tar` (an archive's members), `manifest` (owners and
//! modes the image stores), `scan` (the walk and the items it makes), `data`
//! (the data pass), `spill` (records and sorted runs kept in bounded memory,
//! past it in unlinked temporary files).

mod ahead;
mod data;
mod manifest;
mod scan;
mod source;
mod spill;
pub(crate) mod tar;

pub(crate) use data::{data_extent_item, write_data, CountingSink, DataExtent, DataResult, DataSink};
pub use manifest::{parse_manifest, IdMap, ManifestEntry, Ownership};
pub use scan::*;
pub use spill::SPILL_BUDGET;
