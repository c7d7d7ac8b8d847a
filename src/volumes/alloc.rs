//! Where a chunk's stripes go. One plan type ([`ChunkPlan`]) and one reading of
//! the profiles ([`shape`], from the kernel's `btrfs_raid_array` in
//! [`Profile::raid_attr`]) serve both placers: [`plan_chunk`], the kernel's
//! regular policy on a live filesystem (fs/btrfs/volumes.c `btrfs_create_chunk`
//! and friends, so chunks btrs adds look like the ones the kernel would have
//! added), and mkfs's packing of empty devices (ops/mkfs/layout.rs).
//!
//! This module only plans: it works on a model of each device and returns plans.
//! The transaction (or mkfs) records them in the chunk, device, block group and
//! free space trees.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{CorruptKind, Error, Result};
use crate::format::items::{ChunkInfo, StripeInfo};
use crate::format::*;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
/// The kernel's `BTRFS_MAX_DATA_CHUNK_SIZE`.
const MAX_DATA_CHUNK: u64 = 10 * GIB;
// OK: STRIPE_LEN is 64 KiB.
#[allow(clippy::as_conversions)]
const STRIPE_LEN_U32: u32 = STRIPE_LEN as u32;

/// One device as the chunk allocator sees it.
#[derive(Clone, Debug)]
pub(crate) struct DevSpace {
    pub(crate) devid: u64,
    pub(crate) total_bytes: u64,
    pub(crate) uuid: [u8; 16],
    /// Dev extents: physical start -> length.
    pub(crate) extents: BTreeMap<u64, u64>,
}

impl DevSpace {
    /// The kernel's `find_free_dev_extent`: the first hole of at least `want`
    /// bytes at or after the reserved first MiB, else the largest hole.
    /// Returns (start, hole length).
    pub(crate) fn find_hole(&self, want: u64) -> Option<(u64, u64)> {
        let mut best: Option<(u64, u64)> = None;
        let mut pos = DEVICE_RESERVED;
        let holes =
            self.extents.iter().map(|(&s, &l)| (s, s.saturating_add(l))).chain(std::iter::once((self.total_bytes, self.total_bytes)));
        for (s, e) in holes {
            if s > pos {
                let len = s.min(self.total_bytes).saturating_sub(pos);
                if len >= want {
                    return Some((pos, len));
                }
                if len > 0 && best.is_none_or(|(_, l)| len > l) {
                    best = Some((pos, len));
                }
            }
            pos = pos.max(e);
        }
        best
    }
}

/// How a chunk of one profile lies over the devices that have room for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Devices the chunk uses.
    pub(crate) devices: usize,
    /// Stripes on each of them (DUP: 2).
    pub(crate) per_device: usize,
    /// Stripes holding distinct data (the chunk's length is this many stripes).
    pub(crate) data_stripes: usize,
    pub(crate) sub_stripes: u16,
}

/// The shape of a `profile` chunk over `ndevs` devices; refused below the
/// profile's minimum device count (what mkfs and a conversion must have).
pub(crate) fn shape(profile: Profile, ndevs: usize) -> Result<Shape> {
    let need = profile.min_devices();
    if ndevs < need {
        return Err(Error::Invalid(format!("profile {profile} needs at least {need} devices (images), {ndevs} given")));
    }
    let attr = profile.raid_attr().ok_or_else(|| Error::Unsupported(format!("allocating {profile} chunks")))?;
    let spread = if attr.devs_max == 0 { ndevs } else { attr.devs_max.min(ndevs) };
    // OK: devs_increment and ncopies are at least 1 in every RaidAttr.
    #[allow(clippy::arithmetic_side_effects)]
    let devices = spread / attr.devs_increment * attr.devs_increment;
    let stripes = devices.checked_mul(attr.dev_stripes).ok_or_else(|| Error::Invalid(format!("{ndevs} devices")))?;
    #[allow(clippy::arithmetic_side_effects)]
    let data_stripes = stripes / attr.ncopies;
    Ok(Shape { devices, per_device: attr.dev_stripes, data_stripes, sub_stripes: attr.sub_stripes })
}

/// A chunk a placer decided on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChunkPlan {
    pub(crate) logical: u64,
    pub(crate) length: u64,
    /// Block group type and profile bits.
    pub(crate) flags: u64,
    pub(crate) profile: Profile,
    pub(crate) stripe_size: u64,
    pub(crate) sub_stripes: u16,
    /// (devid, physical) in stripe order.
    pub(crate) stripes: Vec<(u64, u64)>,
}

impl ChunkPlan {
    /// The chunk as the chunk map and the chunk item describe it; `dev_uuid`
    /// gives each stripe's device uuid.
    pub(crate) fn info(&self, dev_uuid: impl Fn(u64) -> [u8; 16], sectorsize: u32) -> ChunkInfo {
        ChunkInfo {
            length: self.length,
            owner: EXTENT_TREE_OBJECTID,
            stripe_len: STRIPE_LEN,
            chunk_type: self.flags,
            io_align: STRIPE_LEN_U32,
            io_width: STRIPE_LEN_U32,
            sector_size: sectorsize,
            sub_stripes: self.sub_stripes,
            stripes: self.stripes.iter().map(|&(devid, offset)| StripeInfo { devid, offset, dev_uuid: dev_uuid(devid) }).collect(),
        }
    }

    /// "system", "metadata" or "data", for messages.
    pub(crate) fn kind(&self) -> &'static str {
        if self.flags & BLOCK_GROUP_SYSTEM != 0 {
            "system"
        } else if self.flags & BLOCK_GROUP_METADATA != 0 {
            "metadata"
        } else {
            "data"
        }
    }
}

/// The uuid of device `devid` among `devs` (zeros for one not there).
pub(crate) fn uuid_in(devs: &[DevSpace]) -> impl Fn(u64) -> [u8; 16] + '_ {
    |devid| devs.iter().find(|d| d.devid == devid).map(|d| d.uuid).unwrap_or([0; 16])
}

/// Plan a chunk of type `flags` (type | profile bits) at `logical`. `None`
/// when the devices have no room for one (ENOSPC).
pub(crate) fn plan_chunk(devs: &[DevSpace], logical: u64, flags: u64) -> Result<Option<ChunkPlan>> {
    let profile = Profile::from_flags(flags)
        .ok_or_else(|| Error::corrupt(CorruptKind::ChunkMap, format!("block group flags {flags:#x}"), "several profile bits"))?;
    let attr = profile.raid_attr().ok_or_else(|| Error::Unsupported(format!("allocating {profile} chunks")))?;
    // Device sizes and dev extents come from the image: sums saturate, and the
    // plan never leaves the hole it was cut from (open checked every dev extent
    // against its device).
    let total_rw = devs.iter().fold(0u64, |a, d| a.saturating_add(d.total_bytes));
    // calc_chunk_size + init_alloc_chunk_ctl_policy_regular.
    let chunk_size = if flags & BLOCK_GROUP_DATA != 0 {
        MAX_DATA_CHUNK
    } else if flags & BLOCK_GROUP_SYSTEM != 0 {
        32 * MIB
    } else if total_rw > 50 * GIB {
        GIB
    } else {
        256 * MIB
    };
    let max_stripe = chunk_size.min(GIB);
    // No chunk larger than 10 % of the writable space.
    let max_chunk = (total_rw / 10).min(chunk_size);
    let dev_stripes = u64_of(attr.dev_stripes);
    let dev_extent_min = STRIPE_LEN.saturating_mul(dev_stripes);
    let want = max_stripe.saturating_mul(dev_stripes);

    // gather_device_info: each device's best hole, largest first.
    let mut avail: Vec<(u64, u64, u64)> = devs
        .iter()
        .filter_map(|d| {
            let (start, len) = d.find_hole(want)?;
            (len >= dev_extent_min).then_some((d.devid, start, len.min(want)))
        })
        .collect();
    avail.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    let mut ndevs = avail.len();
    if attr.devs_max != 0 {
        ndevs = ndevs.min(attr.devs_max);
    }
    ndevs = ndevs.checked_div(attr.devs_increment).unwrap_or(0).saturating_mul(attr.devs_increment);
    if ndevs < attr.devs_min || ndevs == 0 {
        return Ok(None);
    }
    // decide_stripe_size_regular: the smallest hole of the devices taken.
    let Some(&(_, _, max_avail)) = ndevs.checked_sub(1).and_then(|i| avail.get(i)) else { return Ok(None) };
    let num_stripes = ndevs.saturating_mul(attr.dev_stripes);
    let data_stripes = u64_of(num_stripes.checked_div(attr.ncopies).unwrap_or(0).max(1));
    let mut stripe_size = max_avail.checked_div(dev_stripes).unwrap_or(0);
    if stripe_size.saturating_mul(data_stripes) > max_chunk {
        let per_stripe = max_chunk.checked_div(data_stripes).unwrap_or(0);
        stripe_size = per_stripe.div_ceil(16 * MIB).saturating_mul(16 * MIB).min(stripe_size);
    }
    stripe_size = round_down(stripe_size.min(GIB), STRIPE_LEN);
    if stripe_size == 0 {
        return Ok(None);
    }
    let mut stripes = Vec::with_capacity(num_stripes);
    for &(devid, start, _) in avail.iter().take(ndevs) {
        for j in 0..dev_stripes {
            // Inside the hole: dev_stripes * stripe_size <= its length.
            stripes.push((devid, start.saturating_add(j.saturating_mul(stripe_size))));
        }
    }
    let length = stripe_size.saturating_mul(data_stripes);
    Ok(Some(ChunkPlan { logical, length, flags, profile, stripe_size, sub_stripes: attr.sub_stripes, stripes }))
}

/// `v` rounded down to a multiple of `align` (a power of two).
/// Where a re-striped chunk's stripes may lie (`device remove`, `resize`
/// below the last stripe, `balance --convert`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Placement {
    /// Devices that must hold no stripe (being removed).
    pub(crate) avoid: BTreeSet<u64>,
    /// Per device: where its stripes must end at the latest (being shrunk).
    pub(crate) cap: BTreeMap<u64, u64>,
    /// New stripes may cover a superblock copy (the caller then checks
    /// that nothing is allocated at the logical addresses over it).
    pub(crate) supers_inside: bool,
}

impl Placement {
    pub(crate) fn allows(&self, devid: u64, phys: u64, len: u64) -> bool {
        !self.avoid.contains(&devid) && self.cap.get(&devid).is_none_or(|&c| phys.checked_add(len).is_some_and(|end| end <= c))
    }

    /// A device's free space as this placement may use it: no further than
    /// its cap, and over no superblock copy unless `supers_inside`. A chunk
    /// keeps its logical addresses when re-striped, so a copy inside a new
    /// stripe may lie under blocks already allocated there (the allocator
    /// only steers new allocations around superblock copies).
    fn space(&self, d: &DevSpace) -> DevSpace {
        let mut d = d.clone();
        if let Some(&cap) = self.cap.get(&d.devid) {
            d.total_bytes = d.total_bytes.min(cap);
        }
        if self.supers_inside {
            return d;
        }
        for &off in SUPER_MIRROR_OFFSETS.iter().filter(|&&o| o >= DEVICE_RESERVED && o < d.total_bytes) {
            let start = round_down(off, STRIPE_LEN);
            let end = off.saturating_add(u64_of(SUPER_INFO_SIZE)).div_ceil(STRIPE_LEN).saturating_mul(STRIPE_LEN);
            let len = end.saturating_sub(start);
            let cur = d.extents.get(&start).copied().unwrap_or(0);
            d.extents.insert(start, cur.max(len));
        }
        d
    }
}

/// An existing chunk as a plan (what [`plan_restripe`] starts from).
pub(crate) fn plan_of(logical: u64, chunk: &ChunkInfo, stripe_size: u64) -> Result<ChunkPlan> {
    let profile = Profile::from_flags(chunk.chunk_type).ok_or_else(|| {
        Error::corrupt(CorruptKind::ChunkMap, format!("chunk at logical {logical}"), format!("type {:#x}", chunk.chunk_type))
    })?;
    Ok(ChunkPlan {
        logical,
        length: chunk.length,
        flags: chunk.chunk_type,
        profile,
        stripe_size,
        sub_stripes: chunk.sub_stripes,
        stripes: chunk.stripes.iter().map(|s| (s.devid, s.offset)).collect(),
    })
}

/// Why a chunk cannot be re-striped as asked.
fn no_room(old: &ChunkPlan, to: Profile, why: String) -> Error {
    Error::NoSpace(format!(
        "{} chunk at logical {} ({} bytes, {}) cannot become {to}: {why}",
        old.kind(),
        old.logical,
        old.length,
        old.profile
    ))
}

/// New stripes for the chunk `old`, in profile `to`, for the same logical
/// range (so the trees that address it stay as they are). Same profile:
/// the stripes `place` allows stay where they are and only the others
/// move, to their own device when allowed (resize), else to the device with
/// most room that holds no other stripe of the chunk. Another profile: every
/// stripe anew, on as many devices as the profile spreads over that divide
/// the chunk into whole 64 KiB units. `devs` must list the old stripes as
/// used: they stay readable until the new mapping is committed.
pub(crate) fn plan_restripe(devs: &[DevSpace], old: &ChunkPlan, to: Profile, place: &Placement) -> Result<ChunkPlan> {
    let attr = to.raid_attr().ok_or_else(|| Error::Unsupported(format!("{to} chunks")))?;
    let mut space: Vec<DevSpace> = devs.iter().filter(|d| !place.avoid.contains(&d.devid)).map(|d| place.space(d)).collect();
    let flags = (old.flags & !BLOCK_GROUP_PROFILE_MASK) | to.flag();
    if let (Some(from_n), Some(to_n)) = (mirror_copies(old.profile), mirror_copies(to)) {
        return plan_mirrors(&mut space, old, to, to_n, from_n, flags, place);
    }
    if to == old.profile {
        let ss = old.stripe_size;
        let moving: Vec<usize> = old.stripes.iter().enumerate().filter(|(_, &(d, p))| !place.allows(d, p, ss)).map(|(i, _)| i).collect();
        if moving.is_empty() {
            return Ok(old.clone());
        }
        let mut stripes = old.stripes.clone();
        if to == Profile::Dup {
            // Both copies on one device: move them together.
            let home = old.stripes.first().map(|s| s.0).unwrap_or(0);
            let want = ss.saturating_mul(2);
            let mut order: Vec<&DevSpace> = space.iter().collect();
            order.sort_by_key(|d| (d.devid != home, std::cmp::Reverse(d.find_hole(want).map(|h| h.1).unwrap_or(0)), d.devid));
            let (devid, pos) = order
                .iter()
                .find_map(|d| d.find_hole(want).filter(|h| h.1 >= want).map(|h| (d.devid, h.0)))
                .ok_or_else(|| no_room(old, to, format!("no device has {want} contiguous free bytes")))?;
            return Ok(ChunkPlan { flags, stripes: vec![(devid, pos), (devid, pos.saturating_add(ss))], ..old.clone() });
        }
        for i in moving {
            let Some(&(from, _)) = old.stripes.get(i) else { continue };
            let taken: BTreeSet<u64> = stripes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, s)| s.0).collect();
            let mut order: Vec<&mut DevSpace> = space.iter_mut().filter(|d| !taken.contains(&d.devid)).collect();
            order.sort_by_key(|d| (d.devid != from, std::cmp::Reverse(d.find_hole(ss).map(|h| h.1).unwrap_or(0)), d.devid));
            let Some(d) = order.into_iter().find(|d| d.find_hole(ss).is_some_and(|h| h.1 >= ss)) else {
                return Err(no_room(
                    old,
                    to,
                    format!("no device without another copy of it has {ss} contiguous free bytes for its stripe on devid {from}"),
                ));
            };
            let pos = d.find_hole(ss).map(|h| h.0).unwrap_or(0);
            d.extents.insert(pos, ss);
            if let Some(slot) = stripes.get_mut(i) {
                *slot = (d.devid, pos);
            }
        }
        return Ok(ChunkPlan { flags, stripes, ..old.clone() });
    }
    let dev_stripes = u64_of(attr.dev_stripes);
    let most = if attr.devs_max == 0 { space.len() } else { attr.devs_max.min(space.len()) };
    let fewest = to.min_devices().max(attr.devs_min);
    if most < fewest {
        return Err(no_room(old, to, format!("{to} needs {fewest} devices, {} can take stripes", space.len())));
    }
    let mut last = String::new();
    for ndevs in (fewest..=most).rev().filter(|n| n.checked_rem(attr.devs_increment) == Some(0)) {
        let num_stripes = ndevs.saturating_mul(attr.dev_stripes);
        let data_stripes = u64_of(num_stripes.checked_div(attr.ncopies).unwrap_or(0).max(1));
        let unit = data_stripes.saturating_mul(STRIPE_LEN);
        if old.length.checked_rem(unit) != Some(0) {
            last = format!("its length is not a whole number of 64 KiB units per stripe over {ndevs} devices");
            continue;
        }
        let stripe_size = old.length.checked_div(data_stripes).unwrap_or(0);
        let want = stripe_size.saturating_mul(dev_stripes);
        space.sort_by_key(|d| (std::cmp::Reverse(d.find_hole(want).map(|h| h.1).unwrap_or(0)), d.devid));
        let fits: Vec<(u64, u64)> =
            space.iter().filter_map(|d| d.find_hole(want).filter(|h| h.1 >= want).map(|h| (d.devid, h.0))).take(ndevs).collect();
        if fits.len() < ndevs {
            last = format!("{ndevs} devices with {want} contiguous free bytes each are needed, {} have them", fits.len());
            continue;
        }
        let mut stripes = Vec::with_capacity(num_stripes);
        for (devid, start) in fits {
            for j in 0..dev_stripes {
                stripes.push((devid, start.saturating_add(j.saturating_mul(stripe_size))));
            }
        }
        return Ok(ChunkPlan {
            logical: old.logical,
            length: old.length,
            flags,
            profile: to,
            stripe_size,
            sub_stripes: attr.sub_stripes,
            stripes,
        });
    }
    Err(no_room(old, to, last))
}

/// Copies of a profile whose every stripe holds the whole chunk (single,
/// dup, raid1, raid1c3, raid1c4); None for striped profiles.
fn mirror_copies(p: Profile) -> Option<usize> {
    match p {
        Profile::Single => Some(1),
        Profile::Dup | Profile::Raid1 => Some(2),
        Profile::Raid1C3 => Some(3),
        Profile::Raid1C4 => Some(4),
        _ => None,
    }
}

/// [`plan_restripe`] between profiles whose stripes each hold the whole
/// chunk: old stripes the placement allows are kept (as many as the new
/// profile has room for, on distinct devices but for dup), so going to
/// fewer copies moves nothing and going to more copies writes only the
/// new ones. A kept stripe keeps its index where it can.
fn plan_mirrors(
    space: &mut [DevSpace],
    old: &ChunkPlan,
    to: Profile,
    n: usize,
    _from_n: usize,
    flags: u64,
    place: &Placement,
) -> Result<ChunkPlan> {
    let ss = old.stripe_size;
    let allowed: Vec<(usize, (u64, u64))> = old.stripes.iter().copied().enumerate().filter(|&(_, (d, p))| place.allows(d, p, ss)).collect();
    let mut slots: Vec<Option<(u64, u64)>> = vec![None; n];
    let put = |slots: &mut Vec<Option<(u64, u64)>>, j: usize, s: (u64, u64)| {
        let at = if slots.get(j).is_some_and(Option::is_none) { Some(j) } else { slots.iter().position(Option::is_none) };
        if let Some(slot) = at.and_then(|i| slots.get_mut(i)) {
            *slot = Some(s);
        }
    };
    if to == Profile::Dup {
        // One device holds both: the one with most kept stripes (the first
        // stripe's on a tie), else the one with most room.
        let count = |d: u64| allowed.iter().filter(|(_, s)| s.0 == d).count();
        let mut homes: Vec<u64> = space.iter().map(|d| d.devid).collect();
        let first = allowed.first().map(|(_, s)| s.0);
        homes.sort_by_key(|&d| {
            let room = space.iter().find(|x| x.devid == d).and_then(|x| x.find_hole(ss)).map(|h| h.1).unwrap_or(0);
            (std::cmp::Reverse(count(d).min(2)), Some(d) != first, std::cmp::Reverse(room), d)
        });
        for home in homes {
            let mut try_slots = vec![None; n];
            for &(j, s) in allowed.iter().filter(|(_, s)| s.0 == home).take(2) {
                put(&mut try_slots, j, s);
            }
            let Some(d) = space.iter_mut().find(|x| x.devid == home) else { continue };
            let mut trial = d.clone();
            let mut ok = true;
            for slot in try_slots.iter_mut().filter(|s| s.is_none()) {
                match trial.find_hole(ss).filter(|h| h.1 >= ss) {
                    Some((pos, _)) => {
                        trial.extents.insert(pos, ss);
                        *slot = Some((home, pos));
                    }
                    None => ok = false,
                }
            }
            if ok {
                *d = trial;
                slots = try_slots;
                break;
            }
        }
        if slots.iter().any(Option::is_none) {
            return Err(no_room(old, to, format!("no device has room for two stripes of {ss} bytes")));
        }
    } else {
        let mut used = BTreeSet::new();
        for &(j, s) in &allowed {
            if used.len() < n && used.insert(s.0) {
                put(&mut slots, j, s);
            }
        }
        for i in 0..n {
            if slots.get(i).is_some_and(Option::is_some) {
                continue;
            }
            // The device of the old stripe of this number first (a stripe
            // moved lower on its own device), then the one with most room.
            let home = old.stripes.get(i).map(|s| s.0);
            let mut order: Vec<&mut DevSpace> = space.iter_mut().filter(|d| !used.contains(&d.devid)).collect();
            order.sort_by_key(|d| (Some(d.devid) != home, std::cmp::Reverse(d.find_hole(ss).map(|h| h.1).unwrap_or(0)), d.devid));
            let Some(d) = order.into_iter().find(|d| d.find_hole(ss).is_some_and(|h| h.1 >= ss)) else {
                return Err(no_room(
                    old,
                    to,
                    format!(
                        "{to} needs {n} devices with {ss} contiguous free bytes each (or a copy already there), {} have them",
                        used.len()
                    ),
                ));
            };
            let pos = d.find_hole(ss).map(|h| h.0).unwrap_or(0);
            d.extents.insert(pos, ss);
            used.insert(d.devid);
            if let Some(slot) = slots.get_mut(i) {
                *slot = Some((d.devid, pos));
            }
        }
    }
    let stripes: Vec<(u64, u64)> = slots.into_iter().flatten().collect();
    let attr = to.raid_attr().ok_or_else(|| Error::Unsupported(format!("{to} chunks")))?;
    Ok(ChunkPlan { logical: old.logical, length: old.length, flags, profile: to, stripe_size: ss, sub_stripes: attr.sub_stripes, stripes })
}

fn round_down(v: u64, align: u64) -> u64 {
    v & !align.saturating_sub(1)
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev(devid: u64, total: u64, extents: &[(u64, u64)]) -> DevSpace {
        DevSpace { devid, total_bytes: total, uuid: [devid as u8; 16], extents: extents.iter().copied().collect() }
    }

    #[test]
    fn shapes_follow_the_raid_table() {
        let sh = |p, n| shape(p, n).map(|s| (s.devices, s.per_device, s.data_stripes, s.sub_stripes));
        assert_eq!(sh(Profile::Single, 3).unwrap(), (1, 1, 1, 1));
        assert_eq!(sh(Profile::Dup, 1).unwrap(), (1, 2, 1, 1));
        assert_eq!(sh(Profile::Raid1, 3).unwrap(), (2, 1, 1, 1));
        assert_eq!(sh(Profile::Raid1C3, 4).unwrap(), (3, 1, 1, 1));
        assert_eq!(sh(Profile::Raid1C4, 4).unwrap(), (4, 1, 1, 1));
        assert_eq!(sh(Profile::Raid0, 3).unwrap(), (3, 1, 3, 1));
        assert_eq!(sh(Profile::Raid10, 5).unwrap(), (4, 1, 2, 2));
        assert_eq!(sh(Profile::Raid10, 4).unwrap(), (4, 1, 2, 2));
        assert!(matches!(shape(Profile::Raid10, 3), Err(Error::Invalid(m)) if m.contains("at least 4")));
        assert!(matches!(shape(Profile::Raid0, 1), Err(Error::Invalid(_))));
        assert!(matches!(shape(Profile::Raid5, 3), Err(Error::Unsupported(_))));
    }

    #[test]
    fn first_fitting_hole_else_largest() {
        let d = dev(1, 1000 * MIB, &[(MIB, 99 * MIB), (200 * MIB, 100 * MIB), (310 * MIB, 690 * MIB)]);
        assert_eq!(d.find_hole(50 * MIB), Some((100 * MIB, 100 * MIB)));
        assert_eq!(d.find_hole(150 * MIB), Some((100 * MIB, 100 * MIB)), "largest when none fits");
        let full = dev(1, 100 * MIB, &[(MIB, 99 * MIB)]);
        assert_eq!(full.find_hole(MIB), None);
    }

    #[test]
    fn raid1_pair_data_chunk_is_ten_percent() {
        let devs = [dev(1, 4 * GIB, &[(MIB, 900 * MIB)]), dev(2, 4 * GIB, &[(MIB, 900 * MIB)])];
        let p = plan_chunk(&devs, 5 * GIB, BLOCK_GROUP_DATA | BLOCK_GROUP_RAID1).unwrap().unwrap();
        // 10 % of 8 GiB, rounded up to 16 MiB: 832 MiB.
        assert_eq!(p.stripe_size, 832 * MIB);
        assert_eq!(p.length, 832 * MIB);
        assert_eq!(p.stripes, vec![(1, 901 * MIB), (2, 901 * MIB)]);
    }

    #[test]
    fn dup_puts_both_stripes_in_one_hole() {
        let devs = [dev(1, 2 * GIB, &[(MIB, 1023 * MIB)])];
        let p = plan_chunk(&devs, GIB, BLOCK_GROUP_METADATA | BLOCK_GROUP_DUP).unwrap().unwrap();
        // 10 % of 2 GiB caps the 256 MiB metadata chunk.
        assert_eq!(p.length, 208 * MIB);
        assert_eq!(p.stripes, vec![(1, GIB), (1, GIB + 208 * MIB)]);
    }

    #[test]
    fn raid1_needs_two_devices_with_room() {
        let devs = [dev(1, GIB, &[(MIB, GIB - MIB)]), dev(2, GIB, &[])];
        assert_eq!(plan_chunk(&devs, GIB, BLOCK_GROUP_DATA | BLOCK_GROUP_RAID1).unwrap(), None);
        let p = plan_chunk(&devs, GIB, BLOCK_GROUP_DATA).unwrap().unwrap();
        assert_eq!(p.stripes[0].0, 2, "single goes where the room is");
    }

    #[test]
    fn raid10_uses_an_even_number_of_devices() {
        let devs: Vec<DevSpace> = (1..=5).map(|i| dev(i, 4 * GIB, &[])).collect();
        let p = plan_chunk(&devs, GIB, BLOCK_GROUP_DATA | BLOCK_GROUP_RAID10).unwrap().unwrap();
        assert_eq!(p.stripes.len(), 4);
        assert_eq!(p.length, p.stripe_size * 2);
        assert!(plan_chunk(&devs, GIB, BLOCK_GROUP_DATA | BLOCK_GROUP_RAID5).is_err());
    }

    proptest! {
        /// Whatever the devices hold, a plan's stripes lie in free space,
        /// inside the device, past the reserved MiB, 64 KiB aligned, and do
        /// not overlap each other.
        #[test]
        fn plans_fit_free_space(
            sizes in proptest::collection::vec(64u64..4096, 1..5),
            used in proptest::collection::vec((1u64..4000, 1u64..600), 0..12),
            kind in 0usize..3,
            prof in 0usize..7,
        ) {
            let devs: Vec<DevSpace> = sizes.iter().enumerate().map(|(i, &s)| {
                let total = s * MIB;
                let mut ext = BTreeMap::new();
                let mut next = DEVICE_RESERVED;
                for &(at, len) in used.iter().filter(|u| u.0 as usize % sizes.len() == i) {
                    let start = (at * MIB).max(next);
                    let len = len * MIB;
                    if start + len <= total {
                        ext.insert(start, len);
                        next = start + len;
                    }
                }
                DevSpace { devid: i as u64 + 1, total_bytes: total, uuid: [0; 16], extents: ext }
            }).collect();
            let kinds = [BLOCK_GROUP_DATA, BLOCK_GROUP_METADATA, BLOCK_GROUP_SYSTEM];
            let profile = [Profile::Single, Profile::Dup, Profile::Raid0, Profile::Raid1, Profile::Raid1C3, Profile::Raid1C4, Profile::Raid10][prof];
            if let Some(p) = plan_chunk(&devs, 0, kinds[kind] | profile.flag()).unwrap() {
                prop_assert!(p.stripe_size > 0 && p.stripe_size % STRIPE_LEN == 0);
                let mut taken: Vec<(u64, u64, u64)> = Vec::new();
                for &(devid, phys) in &p.stripes {
                    let d = &devs[devid as usize - 1];
                    let end = phys + p.stripe_size;
                    prop_assert!(phys >= DEVICE_RESERVED && end <= d.total_bytes);
                    for (&s, &l) in &d.extents {
                        prop_assert!(end <= s || phys >= s + l, "stripe over dev extent");
                    }
                    for &(od, os, oe) in &taken {
                        prop_assert!(od != devid || end <= os || phys >= oe, "stripes overlap");
                    }
                    taken.push((devid, phys, end));
                }
                let info = p.info(uuid_in(&devs), 4096);
                prop_assert!(crate::volumes::chunks::check_chunk(0, &info).is_ok());
            }
        }
    }
}
