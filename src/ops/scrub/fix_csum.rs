//! `--fix-csum`: rewrite the checksums of data every copy agrees on.

use std::collections::BTreeSet;

use super::repair::scrub_or_repair;
use super::report::{Counters, FindingKind, ScrubOptions, ScrubReport};
use crate::error::{CorruptKind, Error, Result};
use crate::format::*;
use crate::fs::Filesystem;
use crate::volumes::OpenOptions;

/// `--fix-csum`: scrub, then rewrite the checksum of every data sector whose
/// copies all agree but fail their checksum (a buffer that changed after its
/// checksum was taken), in one copy-on-write transaction, and report those
/// findings as corrected.
pub(super) fn fix_csum(open: &OpenOptions, opts: &ScrubOptions) -> Result<ScrubReport> {
    let mut report = scrub_or_repair(open, &ScrubOptions { fix_csum: false, ..opts.clone() })?;
    // Two histories anywhere (open sees only the newest commit's): the
    // checksums to rewrite are one history's, and a commit would write the
    // other's trees over with them.
    if report.findings.iter().any(|f| f.kind == FindingKind::TwoHistories) {
        report.warnings.push("two histories on the current devices: --fix-csum rewrote no checksum".into());
        return Ok(report);
    }
    let fs = Filesystem::open(&OpenOptions { writable: true, ..open.clone() })?;
    let ss = fs.sectorsize as u64;
    let stale: BTreeSet<u64> = report
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::CsumAllCopies && !f.metadata)
        .filter_map(|f| f.logical.map(|l| (l, f.len)))
        .flat_map(|(l, len)| (0..len.div_ceil(ss)).map(move |i| l + i * ss))
        .collect();
    if stale.is_empty() {
        return Ok(report);
    }
    let csum = fs.csum;
    let csize = csum.size();
    let mut tx = crate::fs::txn::Transaction::begin(fs)?;
    let mut sector = vec![0u8; ss as usize];
    for &s in &stale {
        // Scrub proved every copy holds these bytes; any copy will do.
        tx.fs().volume().read_copy(s, &mut sector, 0)?;
        let at = || format!("csum item for logical {s}");
        let (k, mut item) = tx
            .last_le(CSUM_TREE_OBJECTID, Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, s))?
            .filter(|(k, _)| k.objectid == EXTENT_CSUM_OBJECTID && k.item_type == EXTENT_CSUM_KEY)
            .ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, at(), "no csum item covers the sector"))?;
        let pos = usize::try_from((s - k.offset) / ss).unwrap_or(usize::MAX).saturating_mul(csize);
        let slot = item
            .get_mut(pos..pos.saturating_add(csize))
            .ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, at(), "sector beyond the csum item"))?;
        slot.copy_from_slice(&csum.compute(&sector)[..csize]);
        tx.put(CSUM_TREE_OBJECTID, k, item)?;
    }
    tx.commit()?;
    for f in report.findings.iter_mut().filter(|f| f.kind == FindingKind::CsumAllCopies && !f.metadata) {
        f.repaired = true;
        f.detail = "checksum rewritten from the data every copy agrees on".into();
        if let Some(d) = report.devices.iter_mut().find(|d| Some(d.devid) == f.devid) {
            let sectors = f.len.div_ceil(ss);
            d.counters.uncorrectable_errors = d.counters.uncorrectable_errors.saturating_sub(sectors);
            d.counters.corrected_errors += sectors;
        }
    }
    let mut totals = Counters::default();
    for d in &report.devices {
        totals.add(&d.counters);
    }
    report.totals = totals;
    Ok(report)
}
