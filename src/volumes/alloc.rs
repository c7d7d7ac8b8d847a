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

use std::collections::BTreeMap;

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
