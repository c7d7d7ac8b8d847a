//! What every worker of a pass reads (`Ctx`) and what each one gathers
//! (`Acc`: counters per device, findings merged and bounded). Tree blocks,
//! data and superblocks all report through it.

use std::collections::{BTreeMap, BTreeSet};

use super::report::{Counters, Finding, FindingKind, ScrubOptions};
use crate::fs::Filesystem;
use crate::ops::backref;

/// At most this many findings are kept (memory stays bounded on a badly
/// damaged filesystem); the rest are only counted.
const MAX_FINDINGS: usize = 100_000;

/// What every worker shares.
pub(super) struct Ctx<'a> {
    pub(super) fs: &'a Filesystem,
    pub(super) opts: &'a ScrubOptions,
    pub(super) ss: u64,
    pub(super) nodesize: u64,
    pub(super) fsid: [u8; 16],
    pub(super) chunk_tree_uuid: [u8; 16],
    pub(super) sb_gen: u64,
    pub(super) progress: Option<&'a indicatif::ProgressBar>,
    /// Stale devices a repair leaves untouched (see [`super::repair`]).
    pub(super) hold: &'a BTreeSet<u64>,
}

/// What one worker gathers.
#[derive(Default)]
pub(super) struct Acc {
    pub(super) counters: BTreeMap<u64, Counters>,
    pub(super) findings: Vec<Finding>,
    pub(super) dropped: u64,
    pub(super) dropped_unrepaired: u64,
    /// File extents of the last data extent looked up (None inside: lookup failed).
    pub(super) mappings: Option<(u64, Option<Vec<backref::Mapping>>)>,
}

impl Acc {
    pub(super) fn dev(&mut self, devid: u64) -> &mut Counters {
        self.counters.entry(devid).or_default()
    }

    /// Keep a finding, merging it into a recent one it continues.
    pub(super) fn push(&mut self, f: Finding) {
        let n = self.findings.len();
        for prev in self.findings[n.saturating_sub(8)..].iter_mut().rev() {
            let continues = prev.kind == f.kind
                && prev.devid == f.devid
                && prev.mirror == f.mirror
                && prev.good_mirror == f.good_mirror
                && prev.repaired == f.repaired
                && prev.remedy == f.remedy
                && prev.metadata == f.metadata
                && prev.extent == f.extent
                && prev.detail == f.detail
                && prev.logical.zip(f.logical).is_some_and(|(a, b)| a + prev.len == b)
                && prev.physical.zip(f.physical).is_some_and(|(a, b)| a + prev.len == b);
            if continues {
                prev.len += f.len;
                return;
            }
        }
        // The first finding of each kind that decides what --repair may do
        // is kept past the limit: a stale device, two histories.
        let decides = || match f.kind {
            FindingKind::StaleDevice => true,
            FindingKind::TwoHistories => !self.findings.iter().any(|p| p.kind == FindingKind::TwoHistories),
            _ => false,
        };
        if self.findings.len() >= MAX_FINDINGS && !decides() {
            self.dropped += 1;
            if !f.repaired {
                self.dropped_unrepaired += 1;
            }
            return;
        }
        self.findings.push(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_merge_when_adjacent() {
        let mut acc = Acc::default();
        let f = |logical: u64, physical: u64| Finding {
            kind: FindingKind::Csum,
            devid: Some(1),
            physical: Some(physical),
            logical: Some(logical),
            len: 4096,
            mirror: Some(1),
            good_mirror: Some(2),
            metadata: false,
            paths: Vec::new(),
            file_offset: None,
            repaired: false,
            remedy: None,
            detail: String::new(),
            extent: Some(0),
        };
        acc.push(f(0, 100));
        acc.push(f(4096, 4196));
        acc.push(f(16384, 20000));
        assert_eq!(acc.findings.len(), 2);
        assert_eq!(acc.findings[0].len, 8192);
    }
}
