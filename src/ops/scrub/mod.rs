//! Offline scrub: read every copy of every allocated block and of every
//! superblock, verify each against its checksum and header, and compare the
//! copies byte for byte.
//!
//! The byte comparison is what the kernel's scrub lacks: it verifies checksums
//! only, so mirrors of nodatasum data that diverged (e.g. a direct-IO caller
//! changed its buffer while the two mirror writes were in flight) go unnoticed.
//!
//! Counters follow the kernel's `struct btrfs_scrub_progress` so that
//! `btrfs scrub status -R` numbers can be compared: bytes and extents are
//! counted per device for every copy read; extents are counted once per
//! 64 KiB scrub stripe they touch (the kernel scrubs in `BTRFS_STRIPE_LEN`
//! windows aligned to the block group start); error counters count sectors.
//!
//! The files follow the seams of the kernel's `scrub.c`: `report` (options,
//! findings, counters, output), `state` (what every worker shares and
//! gathers), `arbitrate` (deciding between copies), `tree` (tree-block
//! copies), `data` (data sectors), `supers` (superblock copies), `pass` (one
//! pass over every block group, driving the three), `repair` (which passes a
//! scrub or a `--repair` makes) and `fix_csum`.

mod arbitrate;
mod data;
mod fix_csum;
mod pass;
mod repair;
mod report;
mod state;
mod supers;
mod tree;

pub use report::{Counters, DeviceReport, Finding, FindingKind, Remedy, ScrubOptions, ScrubReport};

use crate::error::{Error, Result};
use crate::volumes::OpenOptions;

/// Scrub the filesystem that `open` names.
pub fn scrub(open: &OpenOptions, opts: &ScrubOptions) -> Result<ScrubReport> {
    // A bad option is refused before any image is opened (for writing, under --repair).
    if opts.prefer_mirror == Some(0) {
        return Err(Error::Invalid("--prefer-mirror counts copies from 1".into()));
    }
    let mut report = if opts.fix_csum { fix_csum::fix_csum(open, opts)? } else { repair::scrub_or_repair(open, opts)? };
    report.settle_remedies();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--prefer-mirror 0` is the caller's mistake, said before any image is
    /// opened: here there is none to open, and the error names the option.
    #[test]
    fn prefer_mirror_zero_is_refused_before_opening() {
        let open = OpenOptions { image: "/nonexistent/btrs-image.img".into(), ..Default::default() };
        for repair in [false, true] {
            let opts = ScrubOptions { prefer_mirror: Some(0), repair, ..Default::default() };
            match scrub(&open, &opts) {
                Err(Error::Invalid(m)) => assert!(m.contains("--prefer-mirror"), "{m}"),
                other => panic!("repair={repair}: {other:?}"),
            }
        }
    }
}
