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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use zerocopy::{FromBytes, IntoBytes};

use super::backref;
use crate::error::{Error, Result};
use crate::format::items::read_prefix;
use crate::format::superblock::{parse_super, seal_super};
use crate::format::*;
use crate::fs::Filesystem;
use crate::tree::block::BlockProblem;
use crate::tree::{Expect, TreeBlock};
use crate::volumes::{MapEntry, OpenOptions};

/// Data is read in batches of this many bytes per copy (rounded to scrub stripes).
const BATCH: u64 = 1 << 20;
/// At most this many findings are kept (memory stays bounded on a badly
/// damaged filesystem); the rest are only counted.
const MAX_FINDINGS: usize = 100_000;
/// Findings whose file paths are resolved (each costs a few tree lookups).
const MAX_RESOLVED: usize = 10_000;

#[derive(Clone, Debug, Default)]
pub struct ScrubOptions {
    /// Rewrite bad copies from good ones (the images are opened for writing).
    pub repair: bool,
    /// 1-based copy to trust when copies differ and nothing else can decide.
    pub prefer_mirror: Option<usize>,
    /// Worker threads (block groups are shared among them); 0 = number of CPUs.
    pub threads: usize,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Rewrite checksums to match data (needs the COW write engine).
    pub fix_csum: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Short read, I/O error, or a missing device.
    Read,
    /// This copy fails its checksum (another copy may be good).
    Csum,
    /// Every copy agrees and every copy fails the checksum: the data changed
    /// before the checksum was taken, or the checksum itself is wrong.
    CsumAllCopies,
    /// A tree block header does not match (bytenr, fsid, chunk tree uuid,
    /// generation, level, owner) or its structure is broken.
    Verify,
    /// A superblock copy is bad or stale.
    Super,
    /// Copies differ and no checksum can say which is right.
    MirrorMismatch,
    /// A device whose superblock generation is older than the filesystem's
    /// (an older copy of the image): it lacks every write since. Its copies
    /// are compared with the current ones and rebuilt from them by
    /// `--repair`, never counted against them.
    StaleDevice,
    /// The current devices hold two histories of the filesystem (their
    /// superblocks or verified copies of the newest commit's tree blocks
    /// differ): nothing tells which is current, so nothing is repaired.
    TwoHistories,
}

impl FindingKind {
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::Read => "read",
            FindingKind::Csum => "csum",
            FindingKind::CsumAllCopies => "csum_all_copies",
            FindingKind::Verify => "verify",
            FindingKind::Super => "super",
            FindingKind::MirrorMismatch => "mirror_mismatch",
            FindingKind::StaleDevice => "stale_device",
            FindingKind::TwoHistories => "two_histories",
        }
    }
}

/// One problem with one copy of a contiguous run of bytes.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub devid: Option<u64>,
    pub physical: Option<u64>,
    pub logical: Option<u64>,
    /// Bytes covered (adjacent sectors with the same problem are merged).
    pub len: u64,
    /// 1-based copy number.
    pub mirror: Option<usize>,
    /// A copy proven good (checksum, header, majority or --prefer-mirror), 1-based.
    pub good_mirror: Option<usize>,
    /// Tree block (true) or data (false).
    pub metadata: bool,
    pub paths: Vec<String>,
    pub file_offset: Option<u64>,
    pub repaired: bool,
    pub detail: String,
    /// Start of the extent the bytes belong to (for path resolution and merging).
    #[serde(skip)]
    extent: Option<u64>,
}

impl Finding {
    /// A finding about a whole device, block group or range rather than one
    /// copy of some bytes: nothing to merge, not repaired (yet).
    fn about(kind: FindingKind, devid: Option<u64>, logical: Option<u64>, len: u64, detail: String) -> Finding {
        Finding {
            kind,
            devid,
            physical: None,
            logical,
            len,
            mirror: None,
            good_mirror: None,
            metadata: !matches!(kind, FindingKind::Read),
            paths: Vec::new(),
            file_offset: None,
            repaired: false,
            detail,
            extent: None,
        }
    }
}

/// Per-device counters, named like the kernel's `btrfs_scrub_progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub data_extents_scrubbed: u64,
    pub tree_extents_scrubbed: u64,
    pub data_bytes_scrubbed: u64,
    pub tree_bytes_scrubbed: u64,
    pub read_errors: u64,
    /// Data sectors (per copy) whose checksum fails.
    pub csum_errors: u64,
    /// Tree block sectors (per copy) whose checksum or header fails, as the
    /// kernel counts them.
    pub verify_errors: u64,
    pub no_csum: u64,
    pub super_errors: u64,
    pub corrected_errors: u64,
    pub uncorrectable_errors: u64,
    pub mirror_mismatches: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.data_extents_scrubbed += o.data_extents_scrubbed;
        self.tree_extents_scrubbed += o.tree_extents_scrubbed;
        self.data_bytes_scrubbed += o.data_bytes_scrubbed;
        self.tree_bytes_scrubbed += o.tree_bytes_scrubbed;
        self.read_errors += o.read_errors;
        self.csum_errors += o.csum_errors;
        self.verify_errors += o.verify_errors;
        self.no_csum += o.no_csum;
        self.super_errors += o.super_errors;
        self.corrected_errors += o.corrected_errors;
        self.uncorrectable_errors += o.uncorrectable_errors;
        self.mirror_mismatches += o.mirror_mismatches;
    }

    fn fields(&self) -> [(&'static str, u64); 12] {
        [
            ("data_extents_scrubbed", self.data_extents_scrubbed),
            ("tree_extents_scrubbed", self.tree_extents_scrubbed),
            ("data_bytes_scrubbed", self.data_bytes_scrubbed),
            ("tree_bytes_scrubbed", self.tree_bytes_scrubbed),
            ("read_errors", self.read_errors),
            ("csum_errors", self.csum_errors),
            ("verify_errors", self.verify_errors),
            ("no_csum", self.no_csum),
            ("super_errors", self.super_errors),
            ("corrected_errors", self.corrected_errors),
            ("uncorrectable_errors", self.uncorrectable_errors),
            ("mirror_mismatches", self.mirror_mismatches),
        ]
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DeviceReport {
    pub devid: u64,
    pub path: Option<String>,
    /// Not scrubbed: missing, or (`left_out`) stale and left out by --degraded.
    pub missing: bool,
    pub left_out: bool,
    #[serde(flatten)]
    pub counters: Counters,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScrubReport {
    pub fsid: String,
    pub devices: Vec<DeviceReport>,
    pub totals: Counters,
    pub findings: Vec<Finding>,
    /// Findings beyond the kept ones (counted, not listed).
    pub findings_dropped: u64,
    /// Findings dropped that were not repaired.
    pub findings_dropped_unrepaired: u64,
    pub block_groups: u64,
    pub duration_ms: u64,
    /// What a reader must know that is no finding (a log tree).
    pub warnings: Vec<String>,
}

impl ScrubReport {
    /// Nothing wrong remains on the images (everything found was repaired).
    pub fn clean(&self) -> bool {
        self.findings.iter().all(|f| f.repaired) && self.findings_dropped_unrepaired == 0
    }

    pub fn write_json(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self).map_err(std::io::Error::other)?;
        writeln!(out)
    }

    /// Text like `btrfs scrub status -d -R`: a block per device, a summary,
    /// then one line per finding.
    pub fn write_text(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let d = Duration::from_millis(self.duration_ms);
        let secs = d.as_secs();
        let dur = format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
        writeln!(out, "UUID:             {}", self.fsid)?;
        for dev in &self.devices {
            let path = dev.path.as_deref().unwrap_or("<missing>");
            let status = match (dev.missing, dev.left_out) {
                (_, true) => "left out (stale, --degraded)",
                (true, false) => "missing",
                (false, false) => "finished",
            };
            writeln!(out, "Scrub device {path} (id {}) done", dev.devid)?;
            writeln!(out, "Status:           {status}")?;
            writeln!(out, "Duration:         {dur}")?;
            for (name, v) in dev.counters.fields() {
                writeln!(out, "\t{name}: {v}")?;
            }
        }
        let t = &self.totals;
        let total = t.data_bytes_scrubbed + t.tree_bytes_scrubbed;
        writeln!(out, "Summary:")?;
        writeln!(out, "Duration:         {dur}")?;
        writeln!(out, "Total scrubbed:   {} (data {}, metadata {})", human(total), human(t.data_bytes_scrubbed), human(t.tree_bytes_scrubbed))?;
        let rate = if d.as_secs_f64() > 0.0 { total as f64 / d.as_secs_f64() } else { 0.0 };
        writeln!(out, "Rate:             {}/s", human(rate as u64))?;
        let errs: Vec<String> = [
            ("read", t.read_errors),
            ("csum", t.csum_errors),
            ("verify", t.verify_errors),
            ("super", t.super_errors),
            ("mirror_mismatch", t.mirror_mismatches),
        ]
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
        if errs.is_empty() && self.findings.is_empty() {
            writeln!(out, "Error summary:    no errors found")?;
        } else {
            writeln!(out, "Error summary:    {}", if errs.is_empty() { "see findings".into() } else { errs.join(" ") })?;
            writeln!(out, "  Corrected:      {}", t.corrected_errors)?;
            writeln!(out, "  Uncorrectable:  {}", t.uncorrectable_errors)?;
            let unrepaired = self.findings.iter().filter(|f| !f.repaired).count() as u64 + self.findings_dropped_unrepaired;
            writeln!(out, "  Unrepaired:     {unrepaired} finding(s)")?;
        }
        for f in &self.findings {
            writeln!(out, "{}", finding_line(f))?;
        }
        if self.findings_dropped > 0 {
            writeln!(out, "... and {} more findings not listed", self.findings_dropped)?;
        }
        Ok(())
    }
}

fn finding_line(f: &Finding) -> String {
    let mut s = f.kind.name().to_string();
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    s += &format!(
        ": devid {} physical {} logical {} len {} mirror {}",
        opt(f.devid),
        opt(f.physical),
        opt(f.logical),
        f.len,
        f.mirror.map(|m| m.to_string()).unwrap_or_else(|| "-".into())
    );
    s += if f.metadata { " (metadata)" } else { " (data)" };
    if let Some(g) = f.good_mirror {
        s += &format!(" good copy {g}");
    }
    if !f.paths.is_empty() {
        s += &format!(" path {}", f.paths.join(", "));
        if let Some(o) = f.file_offset {
            s += &format!(" file offset {o}");
        }
    }
    if !f.detail.is_empty() {
        s += &format!(": {}", f.detail);
    }
    s += if f.repaired { " [repaired]" } else { " [not repaired]" };
    s
}

fn human(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.2}{}", UNITS[u])
    }
}

/// How copies of the same bytes relate when nothing else can vouch for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// All readable copies are identical (or there are none).
    Agree,
    /// A strict majority of at least three readable copies agrees; `bad` differ from it.
    Majority { good: usize, bad: Vec<usize> },
    /// The caller named the copy to trust; `bad` differ from it.
    Preferred { good: usize, bad: Vec<usize> },
    /// Copies differ and nothing decides: every readable copy is suspect.
    NoArbiter { copies: Vec<usize> },
}

/// Decide between copies (`None` = unreadable) by majority or preference (0-based).
pub fn arbitrate(copies: &[Option<&[u8]>], prefer: Option<usize>) -> Verdict {
    let readable: Vec<usize> = (0..copies.len()).filter(|&i| copies[i].is_some()).collect();
    let same = |a: usize, b: usize| copies[a] == copies[b];
    let Some(&first) = readable.first() else { return Verdict::Agree };
    if readable.iter().all(|&i| same(i, first)) {
        return Verdict::Agree;
    }
    let (best, count) = readable
        .iter()
        .map(|&i| (i, readable.iter().filter(|&&j| same(i, j)).count()))
        .max_by_key(|&(i, c)| (c, std::cmp::Reverse(i)))
        .unwrap_or((first, 1));
    if readable.len() >= 3 && count * 2 > readable.len() {
        let bad = readable.iter().copied().filter(|&i| !same(i, best)).collect();
        return Verdict::Majority { good: best, bad };
    }
    if let Some(p) = prefer.filter(|p| readable.contains(p)) {
        let bad = readable.iter().copied().filter(|&i| !same(i, p)).collect();
        return Verdict::Preferred { good: p, bad };
    }
    Verdict::NoArbiter { copies: readable }
}

/// A block group to scrub.
#[derive(Clone, Copy, Debug)]
struct BlockGroup {
    start: u64,
    len: u64,
    used: u64,
}

/// What every worker shares.
struct Ctx<'a> {
    fs: &'a Filesystem,
    opts: &'a ScrubOptions,
    ss: u64,
    nodesize: u64,
    fsid: [u8; 16],
    chunk_tree_uuid: [u8; 16],
    sb_gen: u64,
    progress: Option<&'a indicatif::ProgressBar>,
    /// Stale devices a repair leaves untouched (see [`scrub`]).
    hold: &'a BTreeSet<u64>,
}

/// What one worker gathers.
#[derive(Default)]
struct Acc {
    counters: BTreeMap<u64, Counters>,
    findings: Vec<Finding>,
    dropped: u64,
    dropped_unrepaired: u64,
    /// File extents of the last data extent looked up (None inside: lookup failed).
    mappings: Option<(u64, Option<Vec<backref::Mapping>>)>,
}

impl Acc {
    fn dev(&mut self, devid: u64) -> &mut Counters {
        self.counters.entry(devid).or_default()
    }

    /// Keep a finding, merging it into a recent one it continues.
    fn push(&mut self, f: Finding) {
        let n = self.findings.len();
        for prev in self.findings[n.saturating_sub(8)..].iter_mut().rev() {
            let continues = prev.kind == f.kind
                && prev.devid == f.devid
                && prev.mirror == f.mirror
                && prev.good_mirror == f.good_mirror
                && prev.repaired == f.repaired
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

/// Scrub the filesystem that `open` names.
pub fn scrub(open: &OpenOptions, opts: &ScrubOptions) -> Result<ScrubReport> {
    if opts.fix_csum {
        return fix_csum(open, opts);
    }
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
    // Only a set with a stale device needs the dry pass below.
    if !meta.findings.iter().any(|f| f.kind == FindingKind::StaleDevice) {
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

/// What a scrub pass reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    /// Metadata and system block groups only (the dry look before a repair).
    TreeBlocks,
}

/// `--fix-csum`: scrub, then rewrite the checksum of every data sector whose
/// copies all agree but fail their checksum (a buffer that changed after its
/// checksum was taken), in one copy-on-write transaction, and report those
/// findings as corrected.
fn fix_csum(open: &OpenOptions, opts: &ScrubOptions) -> Result<ScrubReport> {
    let mut report = scrub(open, &ScrubOptions { fix_csum: false, ..opts.clone() })?;
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
    let mut tx = crate::fs::transaction::Transaction::begin(fs)?;
    let mut sector = vec![0u8; ss as usize];
    for &s in &stale {
        // Scrub proved every copy holds these bytes; any copy will do.
        tx.fs().volume().read_copy(s, &mut sector, 0)?;
        let at = || format!("csum item for logical {s}");
        let (k, mut item) = tx
            .last_le(CSUM_TREE_OBJECTID, Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, s))?
            .filter(|(k, _)| k.objectid == EXTENT_CSUM_OBJECTID && k.item_type == EXTENT_CSUM_KEY)
            .ok_or_else(|| Error::corrupt(at(), "no csum item covers the sector"))?;
        let pos = usize::try_from((s - k.offset) / ss).unwrap_or(usize::MAX).saturating_mul(csize);
        let slot = item.get_mut(pos..pos.saturating_add(csize)).ok_or_else(|| Error::corrupt(at(), "sector beyond the csum item"))?;
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

fn scrub_pass(open: &OpenOptions, opts: &ScrubOptions, hold: &BTreeSet<u64>, scope: Scope) -> Result<ScrubReport> {
    let started = Instant::now();
    // Two histories on the current devices: scrub is what lists where they
    // differ. It repairs nothing there: a checksum only speaks for the
    // history whose trees it came from, and --prefer-mirror counts copies
    // per chunk, so it could stitch a third history out of the two.
    let open = OpenOptions { writable: opts.repair, divergent_ok: !opts.repair, ..open.clone() };
    let fs = Filesystem::open(&open)?;
    let vol = fs.volume();
    let sb = fs.sb;
    if let Some(p) = opts.prefer_mirror {
        if p == 0 {
            return Err(Error::Invalid("--prefer-mirror counts copies from 1".into()));
        }
    }
    let chunk_root = fs.tree_root(CHUNK_TREE_OBJECTID)?;
    let chunk_tree_uuid = fs.reader.root_block(&chunk_root)?.header.chunk_tree_uuid;
    // Block group items unreadable (damaged in every copy): scrub what the
    // chunk map covers instead, and say so.
    let (bgs, bg_error) = match block_groups(&fs) {
        Ok(b) => (b, None),
        Err(e) => {
            let b = vol.chunks.entries().iter().map(|e| BlockGroup { start: e.logical, len: e.chunk.length, used: e.chunk.length }).collect();
            (b, Some(e))
        }
    };
    // Every chunk needs its block group item, or its space is never accounted for.
    let orphan_chunks: Vec<(u64, u64)> = if bg_error.is_some() {
        Vec::new()
    } else {
        vol.chunks
            .entries()
            .iter()
            .filter(|e| !bgs.iter().any(|bg| bg.start == e.logical))
            .map(|e| (e.logical, e.chunk.length))
            .collect()
    };
    let total: u64 = bgs
        .iter()
        .map(|bg| bg.used.saturating_mul(vol.num_copies(bg.start).unwrap_or(1) as u64))
        .sum();
    let bar = if opts.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let b = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "scrub [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        ) {
            b.set_style(style);
        }
        Some(b)
    } else {
        None
    };
    let ctx = Ctx {
        fs: &fs,
        opts,
        ss: fs.sectorsize as u64,
        nodesize: sb.nodesize.get() as u64,
        fsid: sb.metadata_fsid(),
        chunk_tree_uuid,
        sb_gen: sb.generation.get(),
        progress: bar.as_ref(),
        hold,
    };

    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    }
    .max(1);
    // Work units are slices of block groups, so that one large data block
    // group still keeps every thread busy. An extent belongs to the slice its
    // start falls in.
    // The length comes from the image (a damaged chunk claimed 1.7 PiB): slices grow so that
    // no block group makes more than MAX_SLICES of them.
    let work: Vec<(&BlockGroup, u64, u64)> = bgs
        .iter()
        .flat_map(|bg| {
            let end = bg.start.saturating_add(bg.len);
            let slice = SCRUB_SLICE.max(bg.len.div_ceil(MAX_SLICES));
            (0..bg.len.div_ceil(slice).max(1)).map(move |i| {
                let from = bg.start.saturating_add(i * slice);
                (bg, from, from.saturating_add(slice).min(end))
            })
        })
        .collect();
    // A repair rebuilds data before tree blocks, with a flush between: a
    // stale device one commit behind whose rebuild stopped half way (a kill,
    // a crash) must not look current at the next open, and what says it is
    // current is its copies of the newest commit's tree blocks.
    let is_data = |bg: &BlockGroup| {
        vol.chunks.lookup(bg.start).is_ok_and(|e| e.chunk.chunk_type & (BLOCK_GROUP_DATA | BLOCK_GROUP_METADATA) == BLOCK_GROUP_DATA)
    };
    let (data_work, meta_work): (Vec<_>, Vec<_>) = work.iter().partition(|(bg, _, _)| is_data(bg));
    let (data_work, work) = match scope {
        Scope::All => (data_work, work),
        Scope::TreeBlocks => (Vec::new(), meta_work.clone()),
    };
    let phases: Vec<Vec<(&BlockGroup, u64, u64)>> =
        if opts.repair && !vol.stale.is_empty() { vec![data_work, meta_work] } else { vec![work] };
    let results: Mutex<Vec<Acc>> = Mutex::new(Vec::new());
    // Block groups already reported as not fully scrubbed: one finding each, not one per slice.
    let failed_bgs: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());
    for (phase, work) in phases.iter().enumerate() {
        if phase > 0 {
            vol.sync_all()?;
        }
        let threads = threads.min(work.len().max(1));
        let next = AtomicUsize::new(0);
        let worker = || {
            let mut acc = Acc::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(bg, from, to)) = work.get(i) else { break };
                // Only the first failing slice of a block group reports it.
                let first_failure = || failed_bgs.lock().map(|mut f| f.insert(bg.start)).unwrap_or(true);
                let r = scrub_block_group(&ctx, bg, from, to, &mut acc);
                if let Err(e) = r.or_else(|e| if first_failure() { Err(e) } else { Ok(()) }) {
                    // The extent tree of this block group could not be walked: say
                    // so and go on with the others.
                    acc.push(Finding::about(FindingKind::Verify, None, Some(bg.start), bg.len, format!("block group not fully scrubbed: {e}")));
                }
            }
            if let Ok(mut r) = results.lock() {
                r.push(acc);
            }
        };
        // A worker the host cannot start, or one that panics, fails the scrub
        // with an error that says so.
        std::thread::scope(|s| {
            let hs = (0..threads)
                .map(|_| {
                    crate::threads::spawn_scoped(s, "scrub", || {
                        worker();
                        Ok(())
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            hs.into_iter().try_for_each(|h| crate::threads::join(h, "scrub"))
        })?;
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let mut acc = Acc::default();
    for part in results.into_inner().map_err(|_| Error::Invalid("scrub worker panicked".into()))? {
        for (d, c) in part.counters {
            acc.dev(d).add(&c);
        }
        acc.findings.extend(part.findings);
        acc.dropped += part.dropped;
        acc.dropped_unrepaired += part.dropped_unrepaired;
    }
    if let Some(e) = bg_error {
        acc.push(Finding::about(FindingKind::Verify, None, None, 0, format!("block group items unreadable ({e}); scrubbed by chunk instead")));
    }
    for (logical, len) in orphan_chunks {
        acc.push(Finding::about(FindingKind::Verify, None, Some(logical), len, "chunk has no block group item".into()));
    }
    acc.findings.sort_by_key(|f| (f.logical, f.mirror, f.physical));
    scrub_supers(&fs, opts, &mut acc)?;
    for missing in &vol.missing {
        acc.dev(*missing);
        let detail = match vol.left_out.get(missing) {
            Some((_, generation)) => format!(
                "stale device (superblock generation {generation}) left out by --degraded: its copies were not scrubbed \
                 (scrub --repair without --degraded rebuilds it)"
            ),
            None => "device missing: its copies were not scrubbed".into(),
        };
        acc.findings.push(Finding::about(FindingKind::Read, Some(*missing), None, 0, detail));
    }
    if let Some(d) = &fs.divergence {
        acc.findings.push(Finding::about(FindingKind::TwoHistories, None, None, 0, d.clone()));
    }
    resolve_paths(&fs, &mut acc.findings);
    let _ = fs.reader.take_bad_copies();

    let mut devices = Vec::new();
    let mut totals = Counters::default();
    for d in vol.devices.keys().chain(vol.missing.iter()) {
        acc.dev(*d);
    }
    for (devid, c) in &acc.counters {
        totals.add(c);
        let dev = vol.devices.get(devid);
        let left_out = vol.left_out.get(devid);
        devices.push(DeviceReport {
            devid: *devid,
            path: dev.map(|d| &d.path).or(left_out.map(|(p, _)| p)).map(|p| p.display().to_string()),
            missing: dev.is_none(),
            left_out: left_out.is_some(),
            counters: *c,
        });
    }
    Ok(ScrubReport {
        fsid: crate::format::types::uuid_string(&sb.fsid),
        devices,
        totals,
        findings: acc.findings,
        findings_dropped: acc.dropped,
        findings_dropped_unrepaired: acc.dropped_unrepaired,
        block_groups: bgs.len() as u64,
        duration_ms: started.elapsed().as_millis() as u64,
        warnings: crate::fs::log_tree_note(&sb).into_iter().collect(),
    })
}

/// Block group items, from the block group tree when the filesystem has one.
fn block_groups(fs: &Filesystem) -> Result<Vec<BlockGroup>> {
    let tree = if fs.sb.has_compat_ro(COMPAT_RO_BLOCK_GROUP_TREE) { BLOCK_GROUP_TREE_OBJECTID } else { EXTENT_TREE_OBJECTID };
    let root = fs.tree_root(tree)?;
    let mut out = Vec::new();
    let mut c = fs.reader.seek(&root, Key::MIN)?;
    while let Some(item) = c.next_item()? {
        if item.key.item_type != BLOCK_GROUP_ITEM_KEY {
            continue;
        }
        let (bg, _) = read_prefix::<BlockGroupItem>(item.data(), "block group item")
            .map_err(|e| e.within(format!("block group {}", item.key)))?;
        out.push(BlockGroup { start: item.key.objectid, len: item.key.offset, used: bg.used.get() });
    }
    Ok(out)
}

/// Bytes of a block group one worker takes at a time.
const SCRUB_SLICE: u64 = 64 << 20;
/// Most slices one block group is cut into (64 GiB at SCRUB_SLICE; larger groups get larger slices).
const MAX_SLICES: u64 = 1024;

/// Scrub the extents of `bg` that start in [from, to).
fn scrub_block_group(ctx: &Ctx<'_>, bg: &BlockGroup, from: u64, to: u64, acc: &mut Acc) -> Result<()> {
    let fs = ctx.fs;
    let vol = fs.volume();
    let entry = vol.chunks.lookup(bg.start)?;
    if entry.logical != bg.start || entry.chunk.length != bg.len {
        return Err(Error::corrupt(
            format!("block group {} +{}", bg.start, bg.len),
            format!("chunk is {} +{}", entry.logical, entry.chunk.length),
        ));
    }
    let extent_root = fs.tree_root(EXTENT_TREE_OBJECTID)?;
    let end = bg.start + bg.len;
    let mut c = fs.reader.seek(&extent_root, Key::new(from, 0, 0))?;
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    while let Some(item) = c.next_item()? {
        let k = item.key;
        if k.objectid >= to.min(end) {
            break;
        }
        // Like the kernel's scrub, a tree block's header generation must equal
        // the generation its extent item was allocated in.
        let head = read_prefix::<ExtentItem>(item.data(), "extent item").ok().map(|(e, _)| e);
        let generation = head.as_ref().map(|e| e.generation.get());
        let (len, tree_level) = match k.item_type {
            EXTENT_ITEM_KEY => {
                let flags = head.as_ref().map(|e| e.flags.get()).unwrap_or(0);
                if flags & EXTENT_FLAG_TREE_BLOCK != 0 {
                    let level = crate::format::items::parse_extent_item(k, item.data())
                        .ok()
                        .and_then(|i| i.tree_block)
                        .map(|(_, l)| l);
                    (k.offset, Some(level))
                } else {
                    (k.offset, None)
                }
            }
            METADATA_ITEM_KEY => (ctx.nodesize, Some(u8::try_from(k.offset).ok())),
            _ => continue,
        };
        if k.objectid < bg.start || k.objectid.checked_add(len).is_none_or(|e| e > end) || len == 0 {
            return Err(Error::corrupt(format!("extent {k}"), format!("does not fit block group {} +{}", bg.start, bg.len)));
        }
        let copies = entry.num_copies() as u64;
        match tree_level {
            Some(level) => scrub_tree_block(ctx, &entry, k.objectid, level, generation, acc),
            None => scrub_data_extent(ctx, &entry, k.objectid, len, &mut bufs, acc)?,
        }
        if let Some(p) = ctx.progress {
            p.inc(len * copies);
        }
    }
    Ok(())
}

/// Whether a tree block owner is a tree that can exist.
fn owner_sane(owner: u64) -> bool {
    (ROOT_TREE_OBJECTID..=RAID_STRIPE_TREE_OBJECTID).contains(&owner) && owner != ROOT_TREE_DIR_OBJECTID
        || (FIRST_FREE_OBJECTID..=LAST_FREE_OBJECTID).contains(&owner)
        || [TREE_LOG_OBJECTID, TREE_RELOC_OBJECTID, DATA_RELOC_TREE_OBJECTID].contains(&owner)
}

/// Verify one copy of a tree block beyond what `TreeBlock::parse` checks.
fn check_tree_copy(
    ctx: &Ctx<'_>,
    logical: u64,
    raw: &[u8],
    level: Option<u8>,
    generation: Option<u64>,
) -> std::result::Result<(), BlockProblem> {
    let block = TreeBlock::parse(
        logical,
        raw.to_vec(),
        ctx.fs.csum,
        &ctx.fsid,
        Expect { level, generation, max_generation: Some(ctx.sb_gen) },
    )?;
    if block.header.chunk_tree_uuid != ctx.chunk_tree_uuid {
        return Err(BlockProblem::Structure("header chunk tree uuid does not match the chunk tree's".into()));
    }
    if !owner_sane(block.owner()) {
        return Err(BlockProblem::Structure(format!("owner {} is not a tree", block.owner())));
    }
    Ok(())
}

fn scrub_tree_block(ctx: &Ctx<'_>, entry: &MapEntry, logical: u64, level: Option<u8>, generation: Option<u64>, acc: &mut Acc) {
    let vol = ctx.fs.volume();
    let n = entry.num_copies();
    let sectors = ctx.nodesize / ctx.ss;
    let locs = match entry.map(logical) {
        Ok((l, _)) => l,
        Err(_) => return,
    };
    // Per copy: None = absent (device missing), Some(Err) = read error, Some(Ok(bytes)).
    let mut raw: Vec<Option<std::result::Result<Vec<u8>, String>>> = Vec::with_capacity(n);
    for (m, loc) in locs.iter().enumerate().take(n) {
        if !vol.devices.contains_key(&loc.devid) {
            raw.push(None);
            continue;
        }
        let c = acc.dev(loc.devid);
        c.tree_extents_scrubbed += 1;
        c.tree_bytes_scrubbed += ctx.nodesize;
        let mut buf = vec![0u8; ctx.nodesize as usize];
        raw.push(Some(vol.read_copy(logical, &mut buf, m).map(|_| buf).map_err(|e| e.to_string())));
    }
    let verdicts: Vec<Option<std::result::Result<(), BlockProblem>>> = raw
        .iter()
        .map(|r| match r {
            Some(Ok(b)) => Some(check_tree_copy(ctx, logical, b, level, generation)),
            Some(Err(e)) => Some(Err(BlockProblem::Structure(format!("read failed: {e}")))),
            None => None,
        })
        .collect();
    let good: Vec<usize> = (0..raw.len()).filter(|&m| matches!(verdicts[m], Some(Ok(())))).collect();
    // Among verified copies, the bytes should be identical too.
    let good_bytes: Vec<Option<&[u8]>> = (0..raw.len())
        .map(|m| if good.contains(&m) { raw[m].as_ref().and_then(|r| r.as_ref().ok()).map(|b| b.as_slice()) } else { None })
        .collect();
    let prefer = ctx.opts.prefer_mirror.map(|p| p - 1);
    // A copy on a stale device never votes and is never a repair source, not
    // even one the caller prefers: it may hold another history with the same
    // addresses and generations (see ReadCopy::stale).
    let untrusted: Vec<bool> = locs.iter().take(raw.len()).map(|l| vol.is_stale(l.devid)).collect();
    let untrusted_at = |m: usize| untrusted.get(m).copied().unwrap_or(false);
    let voters: Vec<Option<&[u8]>> = good_bytes.iter().enumerate().map(|(m, b)| b.filter(|_| !untrusted_at(m))).collect();
    // Two current copies that both verify (checksum, address, the generation
    // the parent expects) yet differ: the kernel writes a tree block once per
    // generation, and a torn write fails its checksum, so each came from its
    // own history. No vote or preference may pick one: each would rewrite the
    // other history's block and leave the trees that point at it.
    let two_histories = {
        let mut v = voters.iter().flatten();
        v.next().is_some_and(|first| v.any(|b| b != first))
    };
    let mut verdict = if two_histories {
        Verdict::NoArbiter { copies: (0..voters.len()).filter(|&m| voters[m].is_some()).collect() }
    } else {
        arbitrate(&voters, prefer.filter(|&p| !untrusted_at(p)))
    };
    let src = match &verdict {
        Verdict::Agree => voters.iter().position(Option::is_some),
        Verdict::Majority { good, .. } | Verdict::Preferred { good, .. } => Some(*good),
        Verdict::NoArbiter { .. } => None,
    };
    // An untrusted copy that differs from the current one is repaired from
    // it; with no current copy it can be neither trusted nor repaired.
    let differ: Vec<usize> = (0..good_bytes.len())
        .filter(|&m| untrusted_at(m) && good_bytes[m].is_some() && src.is_none_or(|g| good_bytes[m] != good_bytes[g]))
        .collect();
    if let (Some(g), false) = (src, differ.is_empty()) {
        verdict = match verdict {
            Verdict::Majority { good, mut bad } | Verdict::Preferred { good, mut bad } => {
                bad.extend(differ.iter().copied());
                Verdict::Majority { good, bad }
            }
            _ => Verdict::Majority { good: g, bad: differ.clone() },
        };
    }
    let source = match &verdict {
        Verdict::Agree => src,
        Verdict::Majority { good, .. } | Verdict::Preferred { good, .. } => Some(*good),
        Verdict::NoArbiter { .. } => None,
    };
    let all_fail_csum_alike = good.is_empty()
        && raw.iter().flatten().all(|r| r.is_ok())
        && verdicts.iter().flatten().all(|v| matches!(v, Err(BlockProblem::Csum)))
        && {
            let v: Vec<&Vec<u8>> = raw.iter().flatten().filter_map(|r| r.as_ref().ok()).collect();
            v.len() >= 2 && v.windows(2).all(|w| w[0] == w[1])
        };
    for (m, loc) in locs.iter().enumerate().take(n) {
        let Some(v) = &verdicts[m] else { continue };
        let (kind, detail) = match v {
            Ok(()) => match &verdict {
                // Only stale copies can be outvoted here: current ones that
                // differ are two histories (NoArbiter).
                Verdict::Majority { bad, .. } | Verdict::Preferred { bad, .. } if bad.contains(&m) => {
                    (FindingKind::MirrorMismatch, "copy on a stale device differs from the current copy".to_string())
                }
                _ if src.is_none() && differ.contains(&m) => (
                    FindingKind::MirrorMismatch,
                    if locs.get(m).is_some_and(|l| vol.lagging.contains(&l.devid)) {
                        "no current copy to compare this lagging device's copy with: --accept-lagging takes it as \
                         current after a crash"
                    } else {
                        "no current copy to compare this stale device's copy with"
                    }
                    .to_string(),
                ),
                Verdict::NoArbiter { .. } => (
                    FindingKind::TwoHistories,
                    "copies of one tree block verify (checksum, address, generation) but differ: two histories; nothing is \
                     repaired"
                        .to_string(),
                ),
                _ => continue,
            },
            Err(BlockProblem::Csum) if all_fail_csum_alike => (FindingKind::CsumAllCopies, "every copy fails its checksum".into()),
            Err(BlockProblem::Csum) => (FindingKind::Csum, "tree block checksum mismatch".into()),
            Err(BlockProblem::Structure(s)) if s.starts_with("read failed") => (FindingKind::Read, s.clone()),
            Err(p) => (FindingKind::Verify, p.to_string()),
        };
        let c = acc.dev(loc.devid);
        match kind {
            FindingKind::Read => c.read_errors += sectors,
            // The kernel's scrub (fs/btrfs/scrub.c since 6.4, scrub_verify_one_metadata)
            // marks a tree block whose checksum fails in meta_error_bitmap, not
            // csum_error_bitmap, so `btrfs scrub` counts it in verify_errors, per
            // sector; csum_errors is data only. Count it where the kernel does, so
            // the two reports can be compared counter by counter. The finding still
            // says `csum`: that is what failed.
            FindingKind::Csum | FindingKind::CsumAllCopies | FindingKind::Verify => c.verify_errors += sectors,
            FindingKind::MirrorMismatch | FindingKind::TwoHistories => c.mirror_mismatches += sectors,
            FindingKind::Super | FindingKind::StaleDevice => {}
        }
        let good_mirror = source.filter(|&s| s != m);
        let mut repaired = false;
        if let (Some(s), true) = (good_mirror, ctx.opts.repair) {
            if let Some(Some(Ok(bytes))) = raw.get(s) {
                repaired = repair_copy(ctx, logical, bytes, m, loc.devid);
            }
        }
        let c = acc.dev(loc.devid);
        if repaired {
            c.corrected_errors += sectors;
        } else if good_mirror.is_none() {
            c.uncorrectable_errors += sectors;
        }
        acc.push(Finding {
            kind,
            devid: Some(loc.devid),
            physical: Some(loc.physical),
            logical: Some(logical),
            len: ctx.nodesize,
            mirror: Some(m + 1),
            good_mirror: good_mirror.map(|g| g + 1),
            metadata: true,
            paths: Vec::new(),
            file_offset: None,
            repaired,
            detail,
            extent: Some(logical),
        });
    }
}

/// Write `data` over copy `mirror` of tree block `logical`, flush, and read it
/// back. Only a copy that reads back identical after the flush counts as repaired.
fn repair_copy(ctx: &Ctx<'_>, logical: u64, data: &[u8], mirror: usize, devid: u64) -> bool {
    let vol = ctx.fs.volume();
    if ctx.hold.contains(&devid) {
        return false;
    }
    // Past the end of a truncated image: growing the file is not a repair
    // btrs makes on its own (the device may be short for a reason).
    match (vol.locate(logical, mirror), vol.device(devid)) {
        (Ok(loc), Ok(dev)) if loc.physical.saturating_add(data.len() as u64) <= dev.size => {}
        _ => return false,
    }
    if vol.write_copy(logical, data, mirror).is_err() {
        return false;
    }
    // A tree block never crosses a stripe unit (nodesize <= 64 KiB, aligned),
    // so its copy lives on one device and flushing that one is enough.
    if vol.device(devid).and_then(|d| d.sync()).is_err() {
        return false;
    }
    let mut back = vec![0u8; data.len()];
    vol.read_copy(logical, &mut back, mirror).is_ok() && back == data
}

/// A data finding waiting for the batch's repairs; `src` is the 0-based copy
/// to rewrite it from (None: not repairing it).
struct Pending {
    f: Finding,
    src: Option<usize>,
}

/// Repair what the batch found, then count and keep its findings. Each bad
/// copy's sectors are rewritten from their good copies in contiguous runs,
/// every device written is flushed once, and a sector counts as corrected only
/// when it reads back identical after the flush.
fn finish_batch(ctx: &Ctx<'_>, batch: u64, bufs: &[Vec<u8>], pending: &mut Vec<Pending>, acc: &mut Acc) {
    let vol = ctx.fs.volume();
    // Runs of (mirror, first index into pending, count), over pending sorted by copy then address.
    pending.sort_by_key(|p| (p.f.mirror, p.f.logical));
    let source = |p: &Pending| -> Option<&[u8]> {
        let (src, logical) = (p.src?, p.f.logical?);
        let off = usize::try_from(logical.checked_sub(batch)?).ok()?;
        bufs.get(src)?.get(off..off + p.f.len as usize)
    };
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for (i, p) in pending.iter().enumerate() {
        let (Some(m), Some(_)) = (p.f.mirror, source(p)) else { continue };
        if let Some(last) = runs.last_mut() {
            let prev = &pending[last.1 + last.2 - 1];
            if last.0 == m && last.1 + last.2 == i && prev.f.logical.zip(p.f.logical).is_some_and(|(a, b)| a + prev.f.len == b) {
                last.2 += 1;
                continue;
            }
        }
        runs.push((m, i, 1));
    }
    let mut written: Vec<(usize, usize, usize)> = Vec::new();
    let mut touched: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
    for &(m, first, count) in &runs {
        let group = &pending[first..first + count];
        let Some(logical) = group[0].f.logical else { continue };
        let data: Vec<u8> = group.iter().filter_map(source).flatten().copied().collect();
        let mirror = m - 1;
        // Past the end of a truncated image: growing the file is not a repair
        // btrs makes on its own (the device may be short for a reason).
        let fits = group.iter().all(|p| {
            p.f.devid.zip(p.f.physical).is_some_and(|(d, ph)| !ctx.hold.contains(&d) && vol.device(d).is_ok_and(|dev| ph + p.f.len <= dev.size))
        });
        if !fits || vol.write_copy(logical, &data, mirror).is_err() {
            continue;
        }
        touched.extend(group.iter().filter_map(|p| p.f.devid));
        written.push((m, first, count));
    }
    let synced: std::collections::BTreeSet<u64> =
        touched.into_iter().filter(|d| vol.device(*d).and_then(|dev| dev.sync()).is_ok()).collect();
    for (m, first, count) in written {
        let group = &pending[first..first + count];
        if !group.iter().all(|p| p.f.devid.is_some_and(|d| synced.contains(&d))) {
            continue;
        }
        let Some(logical) = group[0].f.logical else { continue };
        let data: Vec<u8> = group.iter().filter_map(source).flatten().copied().collect();
        let mut back = vec![0u8; data.len()];
        if vol.read_copy(logical, &mut back, m - 1).is_err() {
            continue;
        }
        let mut off = 0usize;
        let mut ok = Vec::with_capacity(count);
        for p in group {
            let l = p.f.len as usize;
            ok.push(back.get(off..off + l) == data.get(off..off + l));
            off += l;
        }
        for (p, good) in pending[first..first + count].iter_mut().zip(ok) {
            p.f.repaired = good;
        }
    }
    pending.sort_by_key(|p| (p.f.logical, p.f.mirror));
    for p in pending.drain(..) {
        if let Some(d) = p.f.devid {
            let sectors = p.f.len.div_ceil(ctx.ss);
            let c = acc.dev(d);
            if p.f.repaired {
                c.corrected_errors += sectors;
            } else if p.f.good_mirror.is_none() {
                c.uncorrectable_errors += sectors;
            }
        }
        acc.push(p.f);
    }
}

/// Per-copy state of one sector.
#[derive(Clone, Copy)]
enum Sector<'a> {
    Absent,
    ReadErr,
    Data(&'a [u8]),
}

fn scrub_data_extent(
    ctx: &Ctx<'_>,
    entry: &MapEntry,
    start: u64,
    len: u64,
    bufs: &mut Vec<Vec<u8>>,
    acc: &mut Acc,
) -> Result<()> {
    let fs = ctx.fs;
    let vol = fs.volume();
    let n = entry.num_copies();
    let ss = ctx.ss;
    let end = start + len;
    let mut pos = start;
    let mut pending: Vec<Pending> = Vec::new();
    while pos < end {
        // Batch end: about BATCH bytes, on a scrub stripe boundary.
        let want = (pos + BATCH).min(end);
        let rel = want - entry.logical;
        let aligned = entry.logical + rel / STRIPE_LEN * STRIPE_LEN;
        let bend = if aligned > pos && aligned < end { aligned } else { want };
        let blen = (bend - pos) as usize;
        bufs.resize_with(n, Vec::new);
        let mut sector_ok: Vec<Vec<bool>> = Vec::with_capacity(n);
        let nsect = blen.div_ceil(ss as usize);
        for (m, buf) in bufs.iter_mut().enumerate().take(n) {
            buf.resize(blen, 0);
            if vol.read_copy(pos, buf, m).is_ok() {
                sector_ok.push(vec![true; nsect]);
            } else {
                // Find which sectors fail.
                let mut ok = vec![false; nsect];
                for (i, okv) in ok.iter_mut().enumerate() {
                    let s = i * ss as usize;
                    let e = (s + ss as usize).min(blen);
                    *okv = vol.read_copy(pos + s as u64, &mut buf[s..e], m).is_ok();
                }
                sector_ok.push(ok);
            }
        }
        let csums = fs.data_csums(pos, bend - pos)?;
        // Every copy's sector checksums at once (BLAKE2b hashes several
        // sectors per SIMD pass), only where some sector has one to match.
        let csize = fs.csum.size();
        let computed: Vec<Vec<u8>> = if csums.iter().any(Option::is_some) {
            bufs.iter()
                .take(n)
                .map(|b| {
                    let mut v = Vec::with_capacity(nsect * csize);
                    fs.csum.compute_sectors(b, ss as usize, &mut v);
                    v
                })
                .collect()
        } else {
            Vec::new()
        };
        let read = BatchRead { bufs, sector_ok: &sector_ok, csums: &csums, computed: &computed };
        // Scrub stripes (64 KiB windows from the chunk start) inside the batch.
        let mut w = pos;
        while w < bend {
            let wend = (entry.logical + ((w - entry.logical) / STRIPE_LEN + 1) * STRIPE_LEN).min(bend);
            let (locs, _) = entry.map(w)?;
            scrub_data_window(ctx, start, w, wend, pos, &locs[..n.min(locs.len())], &read, acc, &mut pending);
            w = wend;
        }
        finish_batch(ctx, pos, bufs, &mut pending, acc);
        pos = bend;
    }
    Ok(())
}

/// One batch of a data extent as read: each copy's bytes, which of its
/// sectors read, the stored checksum per sector, and each copy's computed
/// sector checksums back to back (empty when no sector has a checksum).
struct BatchRead<'a> {
    bufs: &'a [Vec<u8>],
    sector_ok: &'a [Vec<bool>],
    csums: &'a [Option<CsumBytes>],
    computed: &'a [Vec<u8>],
}

#[allow(clippy::too_many_arguments)]
fn scrub_data_window(
    ctx: &Ctx<'_>,
    extent: u64,
    w: u64,
    wend: u64,
    batch: u64,
    locs: &[crate::volumes::PhysAddr],
    read: &BatchRead<'_>,
    acc: &mut Acc,
    pending: &mut Vec<Pending>,
) {
    let BatchRead { bufs, sector_ok, csums, computed } = *read;
    let vol = ctx.fs.volume();
    let ss = ctx.ss;
    let csize = ctx.fs.csum.size();
    let present: Vec<bool> = locs.iter().map(|l| vol.devices.contains_key(&l.devid)).collect();
    let stale: Vec<bool> = locs.iter().map(|l| vol.is_stale(l.devid)).collect();
    let lagging: Vec<bool> = locs.iter().map(|l| vol.lagging.contains(&l.devid)).collect();
    for (m, loc) in locs.iter().enumerate() {
        if present[m] {
            let c = acc.dev(loc.devid);
            c.data_extents_scrubbed += 1;
            c.data_bytes_scrubbed += wend - w;
        }
    }
    let prefer = ctx.opts.prefer_mirror.map(|p| p - 1);
    let mut s = w;
    while s < wend {
        let off = (s - batch) as usize;
        let e = (off + ss as usize).min(bufs.first().map_or(0, |b| b.len()));
        let idx = off / ss as usize;
        let sec: Vec<Sector<'_>> = (0..locs.len())
            .map(|m| {
                if !present[m] {
                    Sector::Absent
                } else if sector_ok.get(m).and_then(|v| v.get(idx)).copied().unwrap_or(false) {
                    bufs.get(m).and_then(|b| b.get(off..e)).map_or(Sector::ReadErr, Sector::Data)
                } else {
                    Sector::ReadErr
                }
            })
            .collect();
        let want = csums.get(idx).copied().flatten();
        // Per copy: (kind, detail) of what is wrong with it.
        let mut bad: Vec<(usize, FindingKind, &'static str)> = Vec::new();
        let mut source: Option<usize> = None;
        let mut uncorrectable = false;
        match want {
            Some(want) => {
                let good: Vec<bool> = sec
                    .iter()
                    .enumerate()
                    .map(|(m, c)| {
                        matches!(c, Sector::Data(_))
                            && computed.get(m).and_then(|v| v.get(idx * csize..(idx + 1) * csize)) == Some(&want[..csize])
                    })
                    .collect();
                source = good.iter().position(|&g| g);
                let readable: Vec<&[u8]> = sec.iter().filter_map(|c| if let Sector::Data(d) = c { Some(*d) } else { None }).collect();
                // With one copy there is nothing to agree with: a plain csum error.
                let all_alike = readable.len() >= 2 && readable.windows(2).all(|p| p[0] == p[1]);
                for (m, c) in sec.iter().enumerate() {
                    match c {
                        Sector::Absent => {}
                        Sector::ReadErr => bad.push((m, FindingKind::Read, "read error")),
                        Sector::Data(_) if good[m] => {}
                        Sector::Data(_) if source.is_none() && all_alike => {
                            bad.push((m, FindingKind::CsumAllCopies, "every copy agrees and fails its checksum"))
                        }
                        Sector::Data(_) => bad.push((m, FindingKind::Csum, "data checksum mismatch")),
                    }
                }
                uncorrectable = source.is_none();
            }
            None => {
                // Only copies on current devices vote: a stale device lacks
                // every write since its generation, and two stale copies
                // agreeing must not outvote the one current copy. A lagging
                // device (see Volume::lagging) is stale here too: where it
                // holds the only copies nothing can vouch for them.
                let copies: Vec<Option<&[u8]>> =
                    sec.iter().enumerate().map(|(m, c)| if let Sector::Data(d) = c { (!stale[m]).then_some(*d) } else { None }).collect();
                for (m, c) in sec.iter().enumerate() {
                    if !matches!(c, Sector::Absent) {
                        acc.dev(locs[m].devid).no_csum += 1;
                    }
                }
                let mut verdict = arbitrate(&copies, prefer.filter(|&p| !stale.get(p).copied().unwrap_or(false)));
                // The current copy the stale ones are compared with.
                let current = match &verdict {
                    Verdict::Agree => copies.iter().position(Option::is_some),
                    Verdict::Majority { good, .. } | Verdict::Preferred { good, .. } => Some(*good),
                    Verdict::NoArbiter { .. } => None,
                };
                let stale_differs = sec.iter().enumerate().any(|(m, c)| {
                    stale[m] && matches!(c, Sector::Data(d) if current.and_then(|g| copies[g]).is_none_or(|g| g != *d))
                });
                let mut unread = false;
                if (verdict != Verdict::Agree || stale_differs) && unread_by_files(ctx, acc, extent, s) {
                    // Preallocated or no longer referenced bytes were never
                    // written through the mirrors; nothing reads them.
                    verdict = Verdict::Agree;
                    unread = true;
                }
                if !unread {
                    for (m, c) in sec.iter().enumerate() {
                        let Sector::Data(d) = c else { continue };
                        if !stale[m] {
                            continue;
                        }
                        match current.and_then(|g| copies[g]) {
                            Some(g) if g == *d => {}
                            Some(_) => bad.push((m, FindingKind::MirrorMismatch, "copy on a stale device differs from the current copy (no checksum)")),
                            None => {
                                uncorrectable = true;
                                bad.push((
                                    m,
                                    FindingKind::MirrorMismatch,
                                    if lagging[m] {
                                        "no current copy to compare this lagging device's copy with (no checksum): --accept-lagging takes it as current after a crash"
                                    } else {
                                        "no current copy to compare this stale device's copy with (no checksum)"
                                    },
                                ));
                            }
                        }
                    }
                }
                match verdict {
                    Verdict::Agree => source = copies.iter().position(|c| c.is_some()).or(source),
                    Verdict::Majority { good, bad: b } => {
                        source = Some(good);
                        bad.extend(b.into_iter().map(|m| (m, FindingKind::MirrorMismatch, "copy differs from the majority (no checksum)")));
                    }
                    Verdict::Preferred { good, bad: b } => {
                        source = Some(good);
                        bad.extend(b.into_iter().map(|m| (m, FindingKind::MirrorMismatch, "copy differs from the preferred copy (no checksum)")));
                    }
                    Verdict::NoArbiter { copies } => {
                        uncorrectable = true;
                        bad.extend(copies.into_iter().map(|m| (m, FindingKind::MirrorMismatch, "copies differ and there is no checksum to decide")));
                    }
                }
                for (m, c) in sec.iter().enumerate() {
                    if matches!(c, Sector::ReadErr) {
                        bad.push((m, FindingKind::Read, "read error"));
                    }
                }
            }
        }
        for (m, kind, detail) in bad {
            let loc = locs[m];
            let physical = loc.physical + (s - w);
            let sectors = 1;
            {
                let c = acc.dev(loc.devid);
                match kind {
                    FindingKind::Read => c.read_errors += sectors,
                    FindingKind::Csum | FindingKind::CsumAllCopies => c.csum_errors += sectors,
                    FindingKind::MirrorMismatch => c.mirror_mismatches += sectors,
                    FindingKind::Verify | FindingKind::Super | FindingKind::StaleDevice | FindingKind::TwoHistories => {}
                }
            }
            let good_mirror = source.filter(|&g| g != m && !uncorrectable);
            // Repairs are done for the whole batch at once (one flush per device).
            let src = good_mirror.filter(|&g| ctx.opts.repair && matches!(sec.get(g), Some(Sector::Data(_))));
            pending.push(Pending {
                f: Finding {
                    kind,
                    devid: Some(loc.devid),
                    physical: Some(physical),
                    logical: Some(s),
                    len: (e - off) as u64,
                    mirror: Some(m + 1),
                    good_mirror: good_mirror.map(|g| g + 1),
                    metadata: false,
                    paths: Vec::new(),
                    file_offset: None,
                    repaired: false,
                    detail: detail.to_string(),
                    extent: Some(extent),
                },
                src,
            });
        }
        s += ss;
    }
}

/// Whether no file reads this byte as written data: every file extent that
/// maps it is preallocated, or none maps it (the rest of a partly overwritten
/// extent). Mirrors of such bytes were never written together, so they may
/// differ harmlessly. Unknown (back references unreadable) counts as read.
fn unread_by_files(ctx: &Ctx<'_>, acc: &mut Acc, extent: u64, logical: u64) -> bool {
    if acc.mappings.as_ref().is_none_or(|(e, _)| *e != extent) {
        acc.mappings = Some((extent, backref::extent_mappings(ctx.fs, extent).ok()));
    }
    let Some((_, Some(maps))) = &acc.mappings else { return false };
    let rel = logical - extent;
    maps.iter().filter(|m| rel >= m.start && rel < m.end).all(|m| m.prealloc)
}

/// Every superblock copy on every present device: magic, checksum, bytenr,
/// fsid, devid and device uuid (against the chunk tree's dev item), generation.
fn scrub_supers(fs: &Filesystem, opts: &ScrubOptions, acc: &mut Acc) -> Result<()> {
    let vol = fs.volume();
    let chunk_root = fs.tree_root(CHUNK_TREE_OBJECTID)?;
    let mut dev_items: BTreeMap<u64, DevItem> = BTreeMap::new();
    for (k, data) in fs.reader.range(
        &chunk_root,
        Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, 0),
        Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, u64::MAX),
    )? {
        let (d, _) = read_prefix::<DevItem>(&data, "dev item").map_err(|e| e.within(format!("chunk tree {k}")))?;
        dev_items.insert(k.offset, d);
    }
    let newest = vol.sb.generation.get();
    // A device's superblock: the newest one with the device's own dev item
    // (the only per-device part besides bytenr), as a commit writes it.
    let template = |devid: u64| -> Option<SuperBlock> {
        let mut sb = vol.sb;
        sb.dev_item = *dev_items.get(&devid)?;
        Some(sb)
    };
    for dev in vol.devices.values() {
        let stale = vol.is_stale(dev.devid);
        // A stale device is rebuilt (its superblocks last) only when every
        // copy it holds that scrub found wrong was repaired.
        // A data checksum failure with no good copy anywhere does not hold it
        // back: it stays as detectable on a current device as here.
        let rebuilt = stale
            && opts.repair
            && acc.dropped_unrepaired == 0
            && !acc.findings.iter().any(|f| {
                f.devid == Some(dev.devid)
                    && !f.repaired
                    && f.kind != FindingKind::Super
                    && (f.metadata || !matches!(f.kind, FindingKind::Csum | FindingKind::CsumAllCopies))
            });
        let before = acc.findings.len();
        if stale {
            acc.push(Finding::about(FindingKind::StaleDevice, Some(dev.devid), None, 0, format!(
                    "{}; {}",
                    vol.stale_text(dev.devid),
                    if rebuilt {
                        "every copy it holds now matches the current ones"
                    } else if opts.repair {
                        "not every copy it holds could be rebuilt"
                    } else {
                        "run `btrs scrub --repair` to rebuild it from the current copies"
                    }
                )));
        }
        // Where it was kept (not when the findings list is full).
        let stale_at = (stale && acc.findings.len() > before).then_some(before);
        let mut all_supers_ok = true;
        for copy in dev.super_copies()? {
            let problem = match &copy.result {
                Err(p) => Some(p.to_string()),
                Ok(sb) if sb.bytenr.get() != copy.offset => Some(format!("bytenr {} does not match its offset", sb.bytenr.get())),
                Ok(sb) if sb.fsid != vol.sb.fsid => Some("fsid differs from the filesystem's".into()),
                Ok(sb) if sb.dev_item.devid.get() != dev.devid => {
                    Some(format!("devid {} differs from the device's {}", sb.dev_item.devid.get(), dev.devid))
                }
                Ok(sb) if dev_items.get(&dev.devid).is_some_and(|d| d.uuid != sb.dev_item.uuid) => {
                    Some("device uuid differs from the chunk tree's dev item".into())
                }
                Ok(sb) if sb.generation.get() != newest => {
                    Some(format!("generation {} is not the newest ({newest})", sb.generation.get()))
                }
                Ok(_) => None,
            };
            let Some(detail) = problem else { continue };
            acc.dev(dev.devid).super_errors += 1;
            let mut repaired = false;
            // A stale device keeps its old superblocks until it is rebuilt:
            // they are what says it is stale.
            let template = if stale && !rebuilt { None } else { template(dev.devid) };
            if let (true, Some(mut sb)) = (opts.repair, template) {
                sb.bytenr = copy.offset.into();
                if let Ok(ct) = sb.csum_kind() {
                    seal_super(&mut sb, ct);
                    let bytes = sb.as_bytes();
                    if dev.write_all_at(copy.offset, bytes).is_ok() && dev.sync().is_ok() {
                        let mut back = vec![0u8; SUPER_INFO_SIZE];
                        repaired = dev.read_exact_at(copy.offset, &mut back).is_ok()
                            && back == bytes
                            && parse_super(&back).is_ok()
                            && SuperBlock::read_from_prefix(&back).is_ok();
                    }
                }
            }
            let c = acc.dev(dev.devid);
            if repaired {
                c.corrected_errors += 1;
            }
            all_supers_ok &= repaired;
            acc.push(Finding {
                kind: FindingKind::Super,
                devid: Some(dev.devid),
                physical: Some(copy.offset),
                logical: None,
                len: SUPER_INFO_SIZE as u64,
                mirror: Some(copy.index + 1),
                good_mirror: None,
                metadata: true,
                paths: Vec::new(),
                file_offset: None,
                repaired,
                detail,
                extent: None,
            });
        }
        if let Some(i) = stale_at {
            if rebuilt && all_supers_ok {
                if let Some(f) = acc.findings.get_mut(i) {
                    f.repaired = true;
                }
                acc.dev(dev.devid).corrected_errors += 1;
            } else {
                acc.dev(dev.devid).uncorrectable_errors += 1;
            }
        }
    }
    Ok(())
}

/// Name the files each data finding hurts.
fn resolve_paths(fs: &Filesystem, findings: &mut [Finding]) {
    for f in findings.iter_mut().filter(|f| !f.metadata).take(MAX_RESOLVED) {
        let (Some(extent), Some(logical)) = (f.extent, f.logical) else { continue };
        match backref::resolve_data(fs, extent, logical) {
            Ok(uses) => {
                f.file_offset = uses.first().map(|u| u.file_offset);
                f.paths = uses.into_iter().map(|u| u.path).collect();
            }
            Err(e) => f.detail = format!("{}; (files not resolved: {e})", f.detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arbitrate_two_copies() {
        let (a, b) = (&b"aaaa"[..], &b"bbbb"[..]);
        assert_eq!(arbitrate(&[Some(a), Some(a)], None), Verdict::Agree);
        assert_eq!(arbitrate(&[Some(a), Some(b)], None), Verdict::NoArbiter { copies: vec![0, 1] });
        assert_eq!(arbitrate(&[Some(a), Some(b)], Some(1)), Verdict::Preferred { good: 1, bad: vec![0] });
        assert_eq!(arbitrate(&[None, Some(b)], None), Verdict::Agree);
        assert_eq!(arbitrate(&[None, None], None), Verdict::Agree);
    }

    #[test]
    fn arbitrate_majority() {
        let (a, b, c) = (&b"aaaa"[..], &b"bbbb"[..], &b"cccc"[..]);
        assert_eq!(arbitrate(&[Some(a), Some(b), Some(a)], None), Verdict::Majority { good: 0, bad: vec![1] });
        assert_eq!(arbitrate(&[Some(b), Some(a), Some(a)], Some(0)), Verdict::Majority { good: 1, bad: vec![0] });
        assert_eq!(arbitrate(&[Some(a), Some(b), Some(c)], None), Verdict::NoArbiter { copies: vec![0, 1, 2] });
        assert_eq!(arbitrate(&[Some(a), Some(b), None], None), Verdict::NoArbiter { copies: vec![0, 1] });
        assert_eq!(arbitrate(&[Some(a), Some(a), Some(b), Some(b)], None), Verdict::NoArbiter { copies: vec![0, 1, 2, 3] });
        assert_eq!(arbitrate(&[Some(a), Some(a), Some(a), Some(b)], None), Verdict::Majority { good: 0, bad: vec![3] });
        assert_eq!(arbitrate(&[Some(c), Some(a), Some(a), Some(b)], Some(3)), Verdict::Preferred { good: 3, bad: vec![0, 1, 2] });
    }

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
