//! Which passes a scrub makes: one for a plain scrub; for `--repair`, a
//! dry look at the tree blocks first (two histories: nothing is repaired),
//! and a dry full pass when a stale device may have to be held back.

use std::collections::BTreeSet;

use super::pass::{scrub_pass, Scope};
use super::report::{FindingKind, ScrubOptions, ScrubReport};
use crate::error::Result;
use crate::volumes::OpenOptions;

/// Scrub the filesystem that `open` names, repairing it if `opts` says so
/// (`--fix-csum` aside).
pub(super) fn scrub_or_repair(open: &OpenOptions, opts: &ScrubOptions) -> Result<ScrubReport> {
    let no_hold = BTreeSet::new();
    if !opts.repair {
        return scrub_pass(open, opts, &no_hold, Scope::All);
    }
    // Before anything is written, the tree blocks are read: two histories
    // anywhere in them (not only in the newest commit, which open compares)
    // and --repair repairs nothing at all, because a copy that passes its
    // checksum would be taken as good by a repair elsewhere and stitch the two
    // together. The report is then that of a plain scrub.
    let dry_opts = ScrubOptions { repair: false, progress: false, ..opts.clone() };
    let meta = scrub_pass(open, &dry_opts, &no_hold, Scope::TreeBlocks)?;
    if meta.findings.iter().any(|f| f.kind == FindingKind::TwoHistories) {
        let mut r = scrub_pass(open, &ScrubOptions { repair: false, ..opts.clone() }, &no_hold, Scope::All)?;
        r.warnings.push("two histories on the current devices: --repair repaired nothing".into());
        return Ok(r);
    }
    // Only a set with a stale device needs the dry pass below; not one whose
    // only stale device is a new image standing in for a missing one
    // (`btrs replace`): it holds nothing, so no proof of anything to keep.
    let fresh = open.replacement.as_ref().map(|r| r.devid);
    if !meta.findings.iter().any(|f| f.kind == FindingKind::StaleDevice && f.devid != fresh) {
        return scrub_pass(open, opts, &no_hold, Scope::All);
    }
    // A stale device that cannot be rebuilt whole is left untouched: what it
    // holds that differs from the current copies is the proof that it is an
    // older copy, and rewriting only part of it would erase that proof (one
    // commit behind, with matching tree blocks, it would look like a crash,
    // and --accept-lagging would take its old data as current).
    let dry = scrub_pass(open, &dry_opts, &no_hold, Scope::All)?;
    let stale: BTreeSet<u64> = dry.findings.iter().filter(|f| f.kind == FindingKind::StaleDevice).filter_map(|f| f.devid).collect();
    let hold: BTreeSet<u64> = stale
        .into_iter()
        .filter(|&d| {
            dry.findings_dropped_unrepaired > 0
                || dry.findings.iter().any(|f| {
                    f.devid == Some(d)
                        && f.good_mirror.is_none()
                        && !matches!(f.kind, FindingKind::Super | FindingKind::StaleDevice)
                        && (f.metadata || !matches!(f.kind, FindingKind::Csum | FindingKind::CsumAllCopies))
                })
        })
        .collect();
    scrub_pass(open, opts, &hold, Scope::All)
}
