//! Data sectors: read every copy in batches, check each sector against its
//! checksum, compare copies without one (majority, `--prefer-mirror`, stale
//! devices), and repair bad copies batch by batch.

use super::arbitrate::{arbitrate, Verdict};
use super::report::{Finding, FindingKind, Remedy};
use super::state::{Acc, Ctx};
use crate::error::Result;
use crate::format::*;
use crate::ops::backref;
use crate::volumes::MapEntry;

/// Data is read in batches of this many bytes per copy (rounded to scrub stripes).
const BATCH: u64 = 1 << 20;

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
    // A run's bytes, slice by slice (a byte-wise collect was most of a
    // replace's time).
    let gather = |group: &[Pending]| -> Vec<u8> {
        let mut v = Vec::with_capacity(group.iter().map(|p| p.f.len as usize).sum());
        for bytes in group.iter().filter_map(source) {
            v.extend_from_slice(bytes);
        }
        v
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
        let data = gather(group);
        let mirror = m - 1;
        // Past the end of a truncated image: growing the file is not a repair
        // btrs makes on its own (the device may be short for a reason).
        let fits = group.iter().all(|p| {
            p.f.devid.zip(p.f.physical).is_some_and(|(d, ph)| {
                !ctx.hold.contains(&d) && vol.device(d).is_ok_and(|dev| ph.checked_add(p.f.len).is_some_and(|end| end <= dev.size))
            })
        });
        if !fits || vol.write_copy(logical, &data, mirror).is_err() {
            continue;
        }
        touched.extend(group.iter().filter_map(|p| p.f.devid));
        written.push((m, first, count));
    }
    // A replacement is flushed once, before its superblocks (supers.rs).
    let synced: std::collections::BTreeSet<u64> = touched
        .into_iter()
        .filter(|d| vol.device(*d).and_then(|dev| if dev.defers_flush() { Ok(()) } else { dev.sync() }).is_ok())
        .collect();
    for (m, first, count) in written {
        let group = &pending[first..first + count];
        if !group.iter().all(|p| p.f.devid.is_some_and(|d| synced.contains(&d))) {
            continue;
        }
        let Some(logical) = group[0].f.logical else { continue };
        let data = gather(group);
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
            } else if p.f.good_mirror.is_none() && p.f.remedy != Some(Remedy::PreferMirror) {
                // Copies nothing decides between are settled by --prefer-mirror: not uncorrectable.
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

pub(super) fn scrub_data_extent(
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
        // Per copy: what is wrong with it (kind, detail), and the remedy when
        // the kind alone does not say it.
        let mut bad: Vec<(usize, FindingKind, &'static str, Option<Remedy>)> = Vec::new();
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
                        Sector::ReadErr => bad.push((m, FindingKind::Read, "read error", None)),
                        Sector::Data(_) if good[m] => {}
                        Sector::Data(_) if source.is_none() && all_alike => {
                            bad.push((m, FindingKind::CsumAllCopies, "every copy agrees and fails its checksum", None))
                        }
                        Sector::Data(_) => bad.push((m, FindingKind::Csum, "data checksum mismatch", None)),
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
                let stale_differs = sec
                    .iter()
                    .enumerate()
                    .any(|(m, c)| stale[m] && matches!(c, Sector::Data(d) if current.and_then(|g| copies[g]).is_none_or(|g| g != *d)));
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
                            Some(_) => bad.push((
                                m,
                                FindingKind::MirrorMismatch,
                                "copy on a stale device differs from the current copy (no checksum)",
                                None,
                            )),
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
                                    None,
                                ));
                            }
                        }
                    }
                }
                match verdict {
                    Verdict::Agree => source = copies.iter().position(|c| c.is_some()).or(source),
                    Verdict::Majority { good, bad: b } => {
                        source = Some(good);
                        bad.extend(
                            b.into_iter().map(|m| (m, FindingKind::MirrorMismatch, "copy differs from the majority (no checksum)", None)),
                        );
                    }
                    Verdict::Preferred { good, bad: b } => {
                        source = Some(good);
                        // Only a repair given the same preference rewrites these.
                        let settle = Some(Remedy::PreferMirror);
                        bad.extend(
                            b.into_iter()
                                .map(|m| (m, FindingKind::MirrorMismatch, "copy differs from the preferred copy (no checksum)", settle)),
                        );
                    }
                    Verdict::NoArbiter { copies } => {
                        uncorrectable = true;
                        // The caller can decide, with --prefer-mirror.
                        let settle = Some(Remedy::PreferMirror);
                        bad.extend(
                            copies
                                .into_iter()
                                .map(|m| (m, FindingKind::MirrorMismatch, "copies differ and there is no checksum to decide", settle)),
                        );
                    }
                }
                for (m, c) in sec.iter().enumerate() {
                    if matches!(c, Sector::ReadErr) {
                        bad.push((m, FindingKind::Read, "read error", None));
                    }
                }
            }
        }
        for (m, kind, detail, remedy) in bad {
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
                    remedy,
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
