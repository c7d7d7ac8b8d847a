//! One scrub pass: plan the work (block groups cut into slices, in phases),
//! run the workers over it (each slice's extents go to `tree` or `data`),
//! merge what they gathered, add the superblocks and what concerns the whole
//! set (missing devices, two histories), and make the report.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::data::scrub_data_extent;
use super::report::{Counters, DeviceReport, Finding, FindingKind, Remedy, ScrubOptions, ScrubReport};
use super::state::{Acc, Ctx};
use super::supers::scrub_supers;
use super::tree::scrub_tree_block;
use crate::error::{CorruptKind, Error, Result};
use crate::format::items::read_prefix;
use crate::format::*;
use crate::fs::Filesystem;
use crate::ops::backref;
use crate::volumes::OpenOptions;

/// Findings whose file paths are resolved (each costs a few tree lookups).
const MAX_RESOLVED: usize = 10_000;

/// What a scrub pass reads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    All,
    /// Metadata and system block groups only (the dry look before a repair).
    TreeBlocks,
}

/// A block group to scrub.
#[derive(Clone, Copy, Debug)]
struct BlockGroup {
    start: u64,
    len: u64,
    used: u64,
}

/// The block groups a pass scrubs, and what is wrong with their items.
struct BlockGroups {
    bgs: Vec<BlockGroup>,
    /// Block group items unreadable: `bgs` then comes from the chunk map.
    error: Option<Error>,
    /// Chunks (logical, length) that have no block group item.
    orphan_chunks: Vec<(u64, u64)>,
}

/// One work unit: the extents of a block group that start in [from, to).
type Slice<'a> = (&'a BlockGroup, u64, u64);

/// One pass over the filesystem: plan the work, run the workers, merge what
/// they found, add the findings about the whole set, report.
pub(super) fn scrub_pass(open: &OpenOptions, opts: &ScrubOptions, hold: &BTreeSet<u64>, scope: Scope) -> Result<ScrubReport> {
    let started = Instant::now();
    // Two histories on the current devices: scrub is what lists where they
    // differ. It repairs nothing there: a checksum only speaks for the
    // history whose trees it came from, and --prefer-mirror counts copies
    // per chunk, so it could stitch a third history out of the two.
    let open = OpenOptions { writable: opts.repair, divergent_ok: !opts.repair, ..open.clone() };
    let fs = Filesystem::open(&open)?;
    let sb = fs.sb;
    let chunk_root = fs.tree_root(CHUNK_TREE_OBJECTID)?;
    let chunk_tree_uuid = fs.reader.root_block(&chunk_root)?.header.chunk_tree_uuid;
    let BlockGroups { bgs, error, orphan_chunks } = find_block_groups(&fs);
    if let Some(p) = opts.prefer_mirror {
        let most = bgs.iter().filter_map(|b| fs.volume().num_copies(b.start).ok()).max().unwrap_or(1);
        if p > most {
            return Err(Error::Invalid(format!(
                "--prefer-mirror {p}: this filesystem keeps at most {most} {} of anything",
                if most == 1 { "copy" } else { "copies" }
            )));
        }
    }
    let bar = progress_bar(&fs, &bgs, opts);
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
    let phases = plan_phases(&fs, &bgs, opts, scope);
    let results = run_workers(&ctx, &phases, worker_count(opts))?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let mut acc = merge(results)?;
    add_set_findings(&fs, opts, error, orphan_chunks, &mut acc)?;
    Ok(make_report(&fs, acc, bgs.len() as u64, started))
}

/// The block groups to scrub, with the chunks that lack a block group item.
fn find_block_groups(fs: &Filesystem) -> BlockGroups {
    let vol = fs.volume();
    // Block group items unreadable (damaged in every copy): scrub what the
    // chunk map covers instead, and say so.
    let (bgs, error) = match block_groups(fs) {
        Ok(b) => (b, None),
        Err(e) => {
            let b =
                vol.chunks.entries().iter().map(|e| BlockGroup { start: e.logical, len: e.chunk.length, used: e.chunk.length }).collect();
            (b, Some(e))
        }
    };
    // Every chunk needs its block group item, or its space is never accounted for.
    let orphan_chunks: Vec<(u64, u64)> = if error.is_some() {
        Vec::new()
    } else {
        vol.chunks.entries().iter().filter(|e| !bgs.iter().any(|bg| bg.start == e.logical)).map(|e| (e.logical, e.chunk.length)).collect()
    };
    BlockGroups { bgs, error, orphan_chunks }
}

/// A progress bar over every copy of every used byte, when asked for and
/// stderr is a terminal.
fn progress_bar(fs: &Filesystem, bgs: &[BlockGroup], opts: &ScrubOptions) -> Option<indicatif::ProgressBar> {
    let vol = fs.volume();
    let total: u64 = bgs.iter().map(|bg| bg.used.saturating_mul(vol.num_copies(bg.start).unwrap_or(1) as u64)).sum();
    if opts.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let b = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("scrub [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
        {
            b.set_style(style);
        }
        Some(b)
    } else {
        None
    }
}

/// Worker threads: as asked, or one per CPU.
fn worker_count(opts: &ScrubOptions) -> usize {
    match opts.threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    }
    .max(1)
}

/// Cut the block groups into slices and put them in phases: one phase, or
/// (a repair with a stale device) data first and tree blocks second.
fn plan_phases<'a>(fs: &Filesystem, bgs: &'a [BlockGroup], opts: &ScrubOptions, scope: Scope) -> Vec<Vec<Slice<'a>>> {
    let vol = fs.volume();
    // Work units are slices of block groups, so that one large data block
    // group still keeps every thread busy. An extent belongs to the slice its
    // start falls in.
    // The length comes from the image (a damaged chunk claimed 1.7 PiB): slices grow so that
    // no block group makes more than MAX_SLICES of them.
    let work: Vec<Slice<'a>> = bgs
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
    if opts.repair && !vol.stale.is_empty() {
        vec![data_work, meta_work]
    } else {
        vec![work]
    }
}

/// Run the phases one after the other, with a flush between them: in each,
/// up to `threads` workers take slices in turn. Returns what each worker
/// gathered (the merge reports a worker that panicked).
fn run_workers(ctx: &Ctx<'_>, phases: &[Vec<Slice<'_>>], threads: usize) -> Result<Mutex<Vec<Acc>>> {
    let vol = ctx.fs.volume();
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
                let r = scrub_block_group(ctx, bg, from, to, &mut acc);
                if let Err(e) = r.or_else(|e| if first_failure() { Err(e) } else { Ok(()) }) {
                    // The extent tree of this block group could not be walked: say
                    // so and go on with the others.
                    acc.push(Finding::about(
                        FindingKind::Verify,
                        None,
                        Some(bg.start),
                        bg.len,
                        format!("block group not fully scrubbed: {e}"),
                    ));
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
    Ok(results)
}

/// Add up what the workers gathered.
fn merge(results: Mutex<Vec<Acc>>) -> Result<Acc> {
    let mut acc = Acc::default();
    for part in results.into_inner().map_err(|_| Error::Internal("a scrub worker panicked".into()))? {
        for (d, c) in part.counters {
            acc.dev(d).add(&c);
        }
        acc.findings.extend(part.findings);
        acc.dropped += part.dropped;
        acc.dropped_unrepaired += part.dropped_unrepaired;
    }
    Ok(acc)
}

/// Findings about the set as a whole: unreadable block group items, chunks
/// without one, the superblocks, missing devices and two histories; then
/// the files each data finding hurts.
fn add_set_findings(
    fs: &Filesystem,
    opts: &ScrubOptions,
    bg_error: Option<Error>,
    orphan_chunks: Vec<(u64, u64)>,
    acc: &mut Acc,
) -> Result<()> {
    let vol = fs.volume();
    if let Some(e) = bg_error {
        acc.push(Finding::about(
            FindingKind::Verify,
            None,
            None,
            0,
            format!("block group items unreadable ({e}); scrubbed by chunk instead"),
        ));
    }
    for (logical, len) in orphan_chunks {
        acc.push(Finding::about(FindingKind::Verify, None, Some(logical), len, "chunk has no block group item".into()));
    }
    acc.findings.sort_by_key(|f| (f.logical, f.mirror, f.physical));
    scrub_supers(fs, opts, acc)?;
    for missing in &vol.missing {
        acc.dev(*missing);
        let (detail, remedy) = match vol.left_out.get(missing) {
            Some((_, generation)) => (
                format!(
                    "stale device (superblock generation {generation}) left out by --degraded: its copies were not scrubbed \
                     (scrub --repair without --degraded rebuilds it)"
                ),
                Remedy::Repair,
            ),
            None => ("missing (degraded): its copies were not scrubbed".into(), Remedy::Replace),
        };
        acc.findings.push(Finding { remedy: Some(remedy), ..Finding::about(FindingKind::Read, Some(*missing), None, 0, detail) });
    }
    if let Some(d) = &fs.divergence {
        acc.findings.push(Finding::about(FindingKind::TwoHistories, None, None, 0, d.clone()));
    }
    resolve_paths(fs, &mut acc.findings);
    let _ = fs.reader.take_bad_copies();
    Ok(())
}

/// The report: one entry per device (present, missing or left out) and the totals.
fn make_report(fs: &Filesystem, mut acc: Acc, block_groups: u64, started: Instant) -> ScrubReport {
    let vol = fs.volume();
    let sb = fs.sb;
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
    ScrubReport {
        fsid: crate::format::types::uuid_string(&sb.fsid),
        devices,
        totals,
        findings: acc.findings,
        findings_dropped: acc.dropped,
        findings_dropped_unrepaired: acc.dropped_unrepaired,
        block_groups,
        duration_ms: started.elapsed().as_millis() as u64,
        warnings: crate::fs::log_tree_note(&sb).into_iter().collect(),
    }
}

/// Block group items (see [`Filesystem::block_groups`]).
fn block_groups(fs: &Filesystem) -> Result<Vec<BlockGroup>> {
    Ok(fs.block_groups()?.into_iter().map(|(start, len, bg)| BlockGroup { start, len, used: bg.used.get() }).collect())
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
            CorruptKind::ChunkMap,
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
                    let level = crate::format::items::parse_extent_item(k, item.data()).ok().and_then(|i| i.tree_block).map(|(_, l)| l);
                    (k.offset, Some(level))
                } else {
                    (k.offset, None)
                }
            }
            METADATA_ITEM_KEY => (ctx.nodesize, Some(u8::try_from(k.offset).ok())),
            _ => continue,
        };
        if k.objectid < bg.start || k.objectid.checked_add(len).is_none_or(|e| e > end) || len == 0 {
            return Err(Error::corrupt(
                CorruptKind::ItemValue,
                format!("extent {k}"),
                format!("does not fit block group {} +{}", bg.start, bg.len),
            ));
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
