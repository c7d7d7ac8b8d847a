//! Tree-block copies: verify each (checksum, header, owner), compare the
//! verified ones byte for byte (two histories when current copies differ),
//! and repair a bad copy from a good one.

use super::arbitrate::{arbitrate, Verdict};
use super::report::{Finding, FindingKind};
use super::state::{Acc, Ctx};
use crate::format::*;
use crate::tree::block::BlockProblem;
use crate::tree::{Expect, TreeBlock};
use crate::volumes::MapEntry;

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
    let block =
        TreeBlock::parse(logical, raw.to_vec(), ctx.fs.csum, &ctx.fsid, Expect { level, generation, max_generation: Some(ctx.sb_gen) })?;
    if block.header.chunk_tree_uuid != ctx.chunk_tree_uuid {
        return Err(BlockProblem::Structure("header chunk tree uuid does not match the chunk tree's".into()));
    }
    if !owner_sane(block.owner()) {
        return Err(BlockProblem::Structure(format!("owner {} is not a tree", block.owner())));
    }
    Ok(())
}

pub(super) fn scrub_tree_block(ctx: &Ctx<'_>, entry: &MapEntry, logical: u64, level: Option<u8>, generation: Option<u64>, acc: &mut Acc) {
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
            remedy: None,
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
    // A replacement is flushed once, before its superblocks (supers.rs).
    if vol.device(devid).and_then(|d| if d.defers_flush() { Ok(()) } else { d.sync() }).is_err() {
        return false;
    }
    let mut back = vec![0u8; data.len()];
    vol.read_copy(logical, &mut back, mirror).is_ok() && back == data
}
