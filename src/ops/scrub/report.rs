//! What a caller passes and gets back: the options, the findings, the
//! per-device counters, and the report as text or JSON.

use std::time::Duration;

use serde::Serialize;

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
    pub(crate) fn name(self) -> &'static str {
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

/// What would fix a finding that scrub did not repair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Remedy {
    /// `btrs scrub --repair`: a good copy exists (or, for a stale device or a
    /// superblock, the current ones), to rewrite this one from.
    Repair,
    /// `btrs scrub --repair --prefer-mirror N`: copies differ, and no checksum
    /// or majority decides; the caller can, by naming the copy to keep.
    PreferMirror,
    /// `btrs scrub --fix-csum`: every copy of the data agrees and fails its
    /// checksum; if the data is right, its checksum can be rewritten.
    FixCsum,
    /// `btrs replace`: the device is missing.
    Replace,
    /// Nothing btrs can do: no copy is good (or two histories).
    Nothing,
}

impl Remedy {
    /// The remedy of a finding created without one, from what it says.
    fn of(f: &Finding) -> Remedy {
        match f.kind {
            FindingKind::TwoHistories => Remedy::Nothing,
            FindingKind::StaleDevice | FindingKind::Super => Remedy::Repair,
            FindingKind::CsumAllCopies if !f.metadata => Remedy::FixCsum,
            _ if f.good_mirror.is_some() => Remedy::Repair,
            _ => Remedy::Nothing,
        }
    }
}

/// One problem with one copy of a contiguous run of bytes.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub(crate) devid: Option<u64>,
    pub(crate) physical: Option<u64>,
    pub(crate) logical: Option<u64>,
    /// Bytes covered (adjacent sectors with the same problem are merged).
    pub(crate) len: u64,
    /// 1-based copy number.
    pub(crate) mirror: Option<usize>,
    /// A copy proven good (checksum, header, majority or --prefer-mirror), 1-based.
    pub(crate) good_mirror: Option<usize>,
    /// Tree block (true) or data (false).
    pub metadata: bool,
    pub paths: Vec<String>,
    pub(crate) file_offset: Option<u64>,
    pub repaired: bool,
    /// What would fix it, when it is not repaired (set when the report is made).
    pub remedy: Option<Remedy>,
    pub detail: String,
    /// Start of the extent the bytes belong to (for path resolution and merging).
    #[serde(skip)]
    pub(super) extent: Option<u64>,
}

impl Finding {
    /// A finding about a whole device, block group or range rather than one
    /// copy of some bytes: nothing to merge, not repaired (yet).
    pub(super) fn about(kind: FindingKind, devid: Option<u64>, logical: Option<u64>, len: u64, detail: String) -> Finding {
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
            remedy: None,
            detail,
            extent: None,
        }
    }

    /// The location part of a finding's line: only what is known.
    fn location(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = self.devid {
            parts.push(format!("devid {d}"));
        }
        if let Some(p) = self.physical {
            parts.push(format!("physical {p}"));
        }
        if let Some(l) = self.logical {
            parts.push(format!("logical {l}"));
        }
        if self.len > 0 {
            parts.push(format!("len {}", self.len));
        }
        if let Some(m) = self.mirror {
            parts.push(format!("mirror {m}"));
        }
        parts.join(" ")
    }

    /// About bytes (a copy of data, a tree block or a superblock) rather than a whole device or the set.
    fn about_bytes(&self) -> bool {
        self.physical.is_some() || self.logical.is_some()
    }
}

/// Per-device counters, named like the kernel's `btrfs_scrub_progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub(crate) data_extents_scrubbed: u64,
    pub(crate) tree_extents_scrubbed: u64,
    pub(crate) data_bytes_scrubbed: u64,
    pub(crate) tree_bytes_scrubbed: u64,
    pub(crate) read_errors: u64,
    /// Data sectors (per copy) whose checksum fails.
    pub(crate) csum_errors: u64,
    /// Tree block sectors (per copy) whose checksum or header fails, as the
    /// kernel counts them.
    pub(crate) verify_errors: u64,
    pub(crate) no_csum: u64,
    pub(crate) super_errors: u64,
    pub(crate) corrected_errors: u64,
    pub(crate) uncorrectable_errors: u64,
    pub(crate) mirror_mismatches: u64,
}

impl Counters {
    pub(super) fn add(&mut self, o: &Counters) {
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
    pub(crate) devid: u64,
    pub(crate) path: Option<String>,
    /// Not scrubbed: missing, or (`left_out`) stale and left out by --degraded.
    pub(crate) missing: bool,
    pub(crate) left_out: bool,
    #[serde(flatten)]
    pub(crate) counters: Counters,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScrubReport {
    pub(crate) fsid: String,
    pub(crate) devices: Vec<DeviceReport>,
    pub(crate) totals: Counters,
    pub findings: Vec<Finding>,
    /// Findings beyond the kept ones (counted, not listed).
    pub findings_dropped: u64,
    /// Findings dropped that were not repaired.
    pub(crate) findings_dropped_unrepaired: u64,
    pub(crate) block_groups: u64,
    pub(crate) duration_ms: u64,
    /// What a reader must know that is no finding (a log tree).
    pub warnings: Vec<String>,
}

impl ScrubReport {
    /// The counters of device `devid`, when it was scrubbed.
    pub fn device_counters(&self, devid: u64) -> Option<Counters> {
        self.devices.iter().find(|d| d.devid == devid).map(|d| d.counters)
    }

    /// Nothing wrong remains on the images (everything found was repaired).
    pub fn clean(&self) -> bool {
        self.findings.iter().all(|f| f.repaired) && self.findings_dropped_unrepaired == 0
    }

    pub fn write_json(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self).map_err(std::io::Error::other)?;
        writeln!(out)
    }

    /// Give every unrepaired finding its remedy (those made without one get
    /// it from their kind and copies); a repaired one has none.
    pub(super) fn settle_remedies(&mut self) {
        for f in &mut self.findings {
            f.remedy = match f.repaired {
                true => None,
                false => Some(f.remedy.unwrap_or_else(|| Remedy::of(f))),
            };
        }
    }

    /// Findings not repaired that `remedy` would fix.
    fn count(&self, remedy: Remedy) -> usize {
        self.findings.iter().filter(|f| f.remedy == Some(remedy)).count()
    }

    /// Text like `btrfs scrub start -B -d`: a block per device (`raw`: with
    /// every counter, as progs' -R), a summary counting the findings by kind
    /// and by what would fix them, one line per finding, and a hint naming
    /// the option that fixes what was found.
    pub fn write_text(&self, out: &mut dyn std::io::Write, raw: bool) -> std::io::Result<()> {
        let d = Duration::from_millis(self.duration_ms);
        let secs = d.as_secs();
        let dur = format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
        let size = |b: u64| if raw { b.to_string() } else { crate::ops::filesystem::pretty_size(b) };
        writeln!(out, "UUID:             {}", self.fsid)?;
        for dev in &self.devices {
            match (dev.missing, dev.left_out) {
                (_, true) => writeln!(out, "devid {} left out (stale, --degraded): not scrubbed", dev.devid)?,
                (true, false) => writeln!(out, "devid {} missing (degraded): not scrubbed", dev.devid)?,
                (false, false) => {
                    writeln!(out, "Scrub device {} (id {}) done", dev.path.as_deref().unwrap_or("?"), dev.devid)?;
                    writeln!(out, "Status:           finished")?;
                    writeln!(out, "Duration:         {dur}")?;
                    if raw {
                        for (name, v) in dev.counters.fields() {
                            writeln!(out, "\t{name}: {v}")?;
                        }
                    }
                }
            }
        }
        let t = &self.totals;
        let total = t.data_bytes_scrubbed + t.tree_bytes_scrubbed;
        writeln!(out, "Summary:")?;
        writeln!(out, "Duration:         {dur}")?;
        writeln!(
            out,
            "Total scrubbed:   {} (data {}, metadata {})",
            size(total),
            size(t.data_bytes_scrubbed),
            size(t.tree_bytes_scrubbed)
        )?;
        let rate = if d.as_secs_f64() > 0.0 { total as f64 / d.as_secs_f64() } else { 0.0 };
        writeln!(out, "Rate:             {}/s", size(rate as u64))?;
        if self.findings.is_empty() && self.findings_dropped == 0 {
            writeln!(out, "Error summary:    no errors found")?;
            return Ok(());
        }
        let kinds = [
            FindingKind::Read,
            FindingKind::Csum,
            FindingKind::CsumAllCopies,
            FindingKind::Verify,
            FindingKind::Super,
            FindingKind::MirrorMismatch,
            FindingKind::StaleDevice,
            FindingKind::TwoHistories,
        ];
        let by_kind: Vec<String> = kinds
            .iter()
            .map(|k| (k.name(), self.findings.iter().filter(|f| f.kind == *k).count()))
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        writeln!(out, "Error summary:    {}", by_kind.join(" "))?;
        let corrected =
            self.findings.iter().filter(|f| f.repaired).count() as u64 + (self.findings_dropped - self.findings_dropped_unrepaired);
        let fixes = [
            (Remedy::Repair, "--repair"),
            (Remedy::PreferMirror, "--prefer-mirror"),
            (Remedy::FixCsum, "--fix-csum"),
            (Remedy::Replace, "replace"),
        ];
        let repairable: Vec<String> =
            fixes.iter().map(|(r, how)| (how, self.count(*r))).filter(|(_, n)| *n > 0).map(|(how, n)| format!("{n} by {how}")).collect();
        writeln!(out, "  Corrected:      {corrected}")?;
        writeln!(
            out,
            "  Repairable:     {}{}",
            fixes.iter().map(|(r, _)| self.count(*r)).sum::<usize>(),
            if repairable.is_empty() { String::new() } else { format!(" ({})", repairable.join(", ")) }
        )?;
        writeln!(out, "  Uncorrectable:  {}", self.count(Remedy::Nothing))?;
        if self.findings_dropped_unrepaired > 0 {
            writeln!(out, "  Not listed:     {} more not repaired", self.findings_dropped_unrepaired)?;
        }
        for f in &self.findings {
            writeln!(out, "{}", finding_line(f))?;
        }
        if self.findings_dropped > 0 {
            writeln!(out, "... and {} more findings not listed", self.findings_dropped)?;
        }
        self.write_hints(out)
    }

    /// One line per option that would fix what is left.
    fn write_hints(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let n = self.count(Remedy::Repair);
        if n > 0 {
            writeln!(out, "hint: `btrs scrub --repair` rewrites {n} of these from good copies")?;
        }
        let n = self.count(Remedy::PreferMirror);
        if n > 0 {
            writeln!(
                out,
                "hint: {n} of these are copies that differ with no checksum or majority to decide: once you know which \
                 copy is right (the files are named above), `btrs scrub --repair --prefer-mirror N` keeps copy N"
            )?;
        }
        let n = self.count(Remedy::FixCsum);
        if n > 0 {
            writeln!(
                out,
                "hint: {n} of these fail their checksum on every copy alike: if the data is right, \
                 `btrs scrub --fix-csum` rewrites the checksums"
            )?;
        }
        for f in self.findings.iter().filter(|f| f.remedy == Some(Remedy::Replace)) {
            if let Some(d) = f.devid {
                writeln!(out, "hint: devid {d} is missing: `btrs replace` rebuilds it onto a new image")?;
            }
        }
        Ok(())
    }
}

fn finding_line(f: &Finding) -> String {
    let mut s = format!("{}: {}", f.kind.name(), f.location());
    if f.about_bytes() {
        s += if f.metadata { " (metadata)" } else { " (data)" };
    }
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
