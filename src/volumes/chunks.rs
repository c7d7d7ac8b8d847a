//! The chunk map: logical address ranges to stripes on devices, per profile.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::error::{CorruptKind, Error, Result};
use crate::format::items::{ChunkInfo, StripeInfo};
use crate::format::u64_of;
use crate::format::Profile;

/// One physical place holding a copy of some logical bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysAddr {
    pub devid: u64,
    pub physical: u64,
}

#[derive(Clone, Debug)]
pub struct MapEntry {
    pub logical: u64,
    pub chunk: ChunkInfo,
    pub(crate) profile: Profile,
}

impl MapEntry {
    pub fn end(&self) -> u64 {
        self.logical.saturating_add(self.chunk.length)
    }

    /// How many copies a read can choose between.
    pub fn num_copies(&self) -> usize {
        match self.profile {
            Profile::Single | Profile::Raid0 => 1,
            Profile::Dup | Profile::Raid1 | Profile::Raid1C3 | Profile::Raid1C4 => self.chunk.stripes.len(),
            Profile::Raid10 => usize::from(self.chunk.sub_stripes.max(1)),
            Profile::Raid5 | Profile::Raid6 => 1,
        }
    }

    /// Where every copy of `logical` lives, and how many bytes from `logical`
    /// stay contiguous on each of them (to the end of the stripe unit or chunk).
    pub fn map(&self, logical: u64) -> Result<(Vec<PhysAddr>, u64)> {
        let at = || format!("chunk {} ({})", self.logical, self.profile);
        let (Some(off), Some(to_chunk_end)) = (logical.checked_sub(self.logical), self.end().checked_sub(logical)) else {
            return Err(Error::corrupt(CorruptKind::ChunkMap, at(), format!("logical {logical} outside chunk")));
        };
        if to_chunk_end == 0 {
            return Err(Error::corrupt(CorruptKind::ChunkMap, at(), format!("logical {logical} outside chunk")));
        }
        let stripes = &self.chunk.stripes;
        // Stripe offsets come from the image: a sum past u64 is corrupt, not a panic.
        let overflow =
            |s: &StripeInfo| Error::corrupt(CorruptKind::Overflow, at(), format!("stripe offset {} + {off} overflows", s.offset));
        match self.profile {
            Profile::Single | Profile::Dup | Profile::Raid1 | Profile::Raid1C3 | Profile::Raid1C4 => {
                let v = stripes
                    .iter()
                    .map(|s| s.offset.checked_add(off).map(|physical| PhysAddr { devid: s.devid, physical }).ok_or_else(|| overflow(s)))
                    .collect::<Result<Vec<_>>>()?;
                Ok((v, to_chunk_end))
            }
            Profile::Raid0 | Profile::Raid10 => {
                let stripe_len = self.chunk.stripe_len;
                let sub = if self.profile == Profile::Raid10 { u64::from(self.chunk.sub_stripes.max(1)) } else { 1 };
                let n = u64_of(stripes.len());
                let shape = || Error::corrupt(CorruptKind::ChunkMap, at(), "bad stripe_len or stripe count");
                if stripe_len == 0 || n.checked_rem(sub) != Some(0) {
                    return Err(shape());
                }
                let factor = n.checked_div(sub).filter(|f| *f > 0).ok_or_else(shape)?;
                // OK: stripe_len and factor are not zero (checked above).
                #[allow(clippy::arithmetic_side_effects)]
                let (stripe_nr, in_stripe) = (off / stripe_len, off % stripe_len);
                #[allow(clippy::arithmetic_side_effects)]
                let (first, row) = ((stripe_nr % factor) * sub, stripe_nr / factor);
                let v = (0..sub)
                    .map(|j| {
                        let s =
                            first.checked_add(j).and_then(|i| usize::try_from(i).ok()).and_then(|i| stripes.get(i)).ok_or_else(shape)?;
                        row.checked_mul(stripe_len)
                            .and_then(|x| x.checked_add(in_stripe))
                            .and_then(|x| x.checked_add(s.offset))
                            .map(|physical| PhysAddr { devid: s.devid, physical })
                            .ok_or_else(|| {
                                Error::corrupt(CorruptKind::Overflow, at(), format!("stripe offset {} + row {row} overflows", s.offset))
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                // OK: in_stripe < stripe_len.
                #[allow(clippy::arithmetic_side_effects)]
                let contiguous = (stripe_len - in_stripe).min(to_chunk_end);
                Ok((v, contiguous))
            }
            Profile::Raid5 | Profile::Raid6 => Err(Error::Unsupported(format!("{}: reading RAID5/RAID6 chunks", at()))),
        }
    }
}

/// Validate a chunk item's shape against its profile.
pub(crate) fn check_chunk(logical: u64, c: &ChunkInfo) -> Result<Profile> {
    let at = format!("chunk item at logical {logical}");
    let profile = Profile::from_flags(c.chunk_type)
        .ok_or_else(|| Error::corrupt(CorruptKind::ChunkMap, &at, format!("several profile bits set in type {:#x}", c.chunk_type)))?;
    if c.length == 0 {
        return Err(Error::corrupt(CorruptKind::ChunkMap, &at, "length 0"));
    }
    if logical.checked_add(c.length).is_none() {
        return Err(Error::corrupt(CorruptKind::Overflow, &at, "length overflows"));
    }
    let n = c.stripes.len();
    let ok = match profile {
        Profile::Single => n == 1,
        Profile::Dup => n == 2,
        Profile::Raid1 => n == 2,
        Profile::Raid1C3 => n == 3,
        Profile::Raid1C4 => n == 4,
        Profile::Raid0 => n >= 1,
        Profile::Raid10 => n >= 2 && n.checked_rem(usize::from(c.sub_stripes)) == Some(0),
        Profile::Raid5 => n >= 2,
        Profile::Raid6 => n >= 3,
    };
    if !ok {
        return Err(Error::corrupt(CorruptKind::ChunkMap, &at, format!("{n} stripes do not fit profile {profile}")));
    }
    if matches!(profile, Profile::Raid0 | Profile::Raid10 | Profile::Raid5 | Profile::Raid6)
        && (c.stripe_len == 0 || !c.stripe_len.is_power_of_two())
    {
        return Err(Error::corrupt(CorruptKind::ChunkMap, &at, format!("stripe_len {} is not a power of two", c.stripe_len)));
    }
    Ok(profile)
}

impl MapEntry {
    /// A chunk's mapping, its shape checked.
    pub(crate) fn new(logical: u64, chunk: ChunkInfo) -> Result<MapEntry> {
        let profile = check_chunk(logical, &chunk)?;
        Ok(MapEntry { logical, chunk, profile })
    }

    /// Bytes each stripe of the chunk takes on its device (the kernel's
    /// `calc_stripe_length`): the whole chunk for mirrored profiles, the
    /// chunk divided among the data stripes for striped ones.
    pub(crate) fn stripe_size(&self) -> Result<u64> {
        let n = u64_of(self.chunk.stripes.len());
        let data_stripes = match self.profile {
            Profile::Single | Profile::Dup | Profile::Raid1 | Profile::Raid1C3 | Profile::Raid1C4 => 1,
            Profile::Raid0 => n,
            Profile::Raid10 => n.checked_div(u64::from(self.chunk.sub_stripes.max(1))).unwrap_or(0),
            Profile::Raid5 => n.saturating_sub(1),
            Profile::Raid6 => n.saturating_sub(2),
        };
        if self.chunk.length.checked_rem(data_stripes) != Some(0) {
            return Err(Error::corrupt(
                CorruptKind::ChunkMap,
                format!("chunk at logical {}", self.logical),
                format!("length {} does not divide among {data_stripes} data stripes", self.chunk.length),
            ));
        }
        Ok(self.chunk.length.checked_div(data_stripes).unwrap_or(0))
    }
}

/// Check that the chunks' stripes fit the devices and share no byte (the
/// kernel's `verify_one_dev_extent` and `verify_dev_extents`): a stripe lying
/// on top of another chunk's would make a repair of one overwrite the other.
/// `device_sizes` are the dev items' total_bytes; `dev_extents` the dev
/// tree's (devid, physical, length, chunk logical), or `None` when the dev
/// tree could not be read. A dev extent overlapping a stripe that is not its
/// own is corrupt; one that overlaps nothing (an orphan, which `btrfs check`
/// before 6.3 accepts) and a stripe without a dev extent are returned as
/// warnings when `strict` is false (a reader is not hurt by them; a writer
/// allocating from the dev tree would be).
pub(crate) fn verify_stripes(
    entries: &[Arc<MapEntry>],
    device_sizes: &BTreeMap<u64, u64>,
    dev_extents: Option<&[(u64, u64, u64, u64)]>,
    strict: bool,
) -> Result<Vec<String>> {
    // (devid, physical) -> (end, chunk logical)
    let mut stripes: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
    for e in entries {
        let len = e.stripe_size()?;
        for s in &e.chunk.stripes {
            let at = || format!("chunk at logical {} stripe on devid {} at {}", e.logical, s.devid, s.offset);
            let end = s
                .offset
                .checked_add(len)
                .ok_or_else(|| Error::corrupt(CorruptKind::Overflow, at(), format!("stripe of {len} bytes overflows")))?;
            match device_sizes.get(&s.devid) {
                None => return Err(Error::corrupt(CorruptKind::MissingItem, at(), "no dev item for this devid")),
                Some(&size) if end > size => {
                    return Err(Error::corrupt(
                        CorruptKind::ChunkMap,
                        at(),
                        format!("stripe ends at {end}, past the device's {size} bytes"),
                    ))
                }
                Some(_) => {}
            }
            if let Some((_, other)) = stripes.insert((s.devid, s.offset), (end, e.logical)) {
                return Err(Error::corrupt(CorruptKind::ChunkMap, at(), format!("stripe starts where a stripe of chunk {other} starts")));
            }
        }
    }
    let mut prev: Option<((u64, u64), (u64, u64))> = None;
    for (&(devid, start), &(end, chunk)) in &stripes {
        if let Some(((pdev, pstart), (pend, pchunk))) = prev {
            if pdev == devid && pend > start {
                return Err(Error::corrupt(
                    CorruptKind::ChunkMap,
                    format!("devid {devid}"),
                    format!("stripe of chunk {chunk} at {start} overlaps stripe of chunk {pchunk} at {pstart}..{pend}"),
                ));
            }
        }
        prev = Some(((devid, start), (end, chunk)));
    }
    let Some(dev_extents) = dev_extents else { return Ok(Vec::new()) };
    let mut loose = Vec::new();
    let mut matched = std::collections::BTreeSet::new();
    for &(devid, physical, length, chunk) in dev_extents {
        let at = || format!("dev extent of devid {devid} at {physical}");
        let end = physical
            .checked_add(length)
            .ok_or_else(|| Error::corrupt(CorruptKind::Overflow, at(), format!("length {length} overflows")))?;
        if stripes.get(&(devid, physical)) == Some(&(end, chunk)) {
            if !matched.insert((devid, physical)) {
                return Err(Error::corrupt(CorruptKind::ChunkMap, at(), "listed twice"));
            }
            continue;
        }
        // The stripes of this device that the extent touches.
        let touched = stripes.range(..(devid, end)).rev().take_while(|((d, _), _)| *d == devid).find(|(_, &(e, _))| e > physical);
        match touched {
            Some((&(_, p), &(e, c))) => {
                return Err(Error::corrupt(
                    CorruptKind::ChunkMap,
                    at(),
                    format!("claims chunk {chunk} for {physical}..{end}, which overlaps the stripe of chunk {c} at {p}..{e}"),
                ))
            }
            None => loose.push(format!("{}: no chunk stripe there (orphan dev extent of chunk {chunk}, {length} bytes)", at())),
        }
    }
    for (&(devid, p), &(_, c)) in &stripes {
        if !matched.contains(&(devid, p)) {
            loose.push(format!("stripe of chunk {c} on devid {devid} at {p} has no dev extent"));
        }
    }
    match loose.first() {
        Some(first) if strict => Err(Error::corrupt(CorruptKind::ChunkMap, "dev tree", first.clone())),
        _ => Ok(loose),
    }
}

/// Logical chunk start -> mapping. Behind a lock because a write transaction
/// adds chunks to the live volume when the existing block groups are full
/// (the new chunk's tree items are only committed later, but its blocks are
/// written through this map before that).
#[derive(Debug, Default)]
pub struct ChunkMap {
    entries: RwLock<BTreeMap<u64, Arc<MapEntry>>>,
}

impl ChunkMap {
    pub fn insert(&self, logical: u64, chunk: ChunkInfo) -> Result<()> {
        let profile = check_chunk(logical, &chunk)?;
        // OK: check_chunk refused a length that overflows.
        #[allow(clippy::arithmetic_side_effects)]
        let end = logical + chunk.length;
        let mut entries = self.entries.write().map_err(|_| Error::Internal("chunk map lock poisoned".into()))?;
        if let Some((_, prev)) = entries.range(..end).next_back() {
            if prev.logical != logical && prev.end() > logical {
                return Err(Error::corrupt(
                    CorruptKind::ChunkMap,
                    format!("chunk at logical {logical}"),
                    format!("overlaps chunk at {}", prev.logical),
                ));
            }
        }
        entries.insert(logical, Arc::new(MapEntry { logical, chunk, profile }));
        Ok(())
    }

    pub fn lookup(&self, logical: u64) -> Result<Arc<MapEntry>> {
        let entries = self.entries.read().map_err(|_| Error::Internal("chunk map lock poisoned".into()))?;
        entries
            .range(..=logical)
            .next_back()
            .map(|(_, e)| e)
            .filter(|e| logical < e.end())
            .cloned()
            .ok_or_else(|| Error::corrupt(CorruptKind::ChunkMap, format!("logical {logical}"), "not inside any chunk"))
    }

    /// Every chunk, in logical order (a snapshot).
    pub fn entries(&self) -> Vec<Arc<MapEntry>> {
        self.entries.read().map(|e| e.values().cloned().collect()).unwrap_or_default()
    }

    /// Forget the chunk at `logical` (a removed empty chunk).
    pub(crate) fn remove(&self, logical: u64) -> Result<()> {
        let mut entries = self.entries.write().map_err(|_| Error::Internal("chunk map lock poisoned".into()))?;
        entries.remove(&logical);
        Ok(())
    }

    /// Forget every chunk (the bootstrap map is replaced by the chunk tree's).
    pub(crate) fn clear(&self) {
        if let Ok(mut e) = self.entries.write() {
            e.clear();
        }
    }
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
mod tests {
    use super::*;
    use crate::format::items::StripeInfo;
    use crate::format::*;

    fn chunk(flags: u64, devs: &[(u64, u64)], sub: u16) -> ChunkInfo {
        ChunkInfo {
            length: 1 << 30,
            owner: 2,
            stripe_len: STRIPE_LEN,
            chunk_type: flags,
            io_align: 65536,
            io_width: 65536,
            sector_size: 4096,
            sub_stripes: sub,
            stripes: devs.iter().map(|&(devid, offset)| StripeInfo { devid, offset, dev_uuid: [0; 16] }).collect(),
        }
    }

    #[test]
    fn raid1_maps_both() {
        let m = ChunkMap::default();
        m.insert(1 << 30, chunk(BLOCK_GROUP_DATA | BLOCK_GROUP_RAID1, &[(1, 1 << 20), (2, 2 << 20)], 1)).unwrap();
        let (v, len) = m.lookup((1 << 30) + 5).unwrap().map((1 << 30) + 5).unwrap();
        assert_eq!(v, vec![PhysAddr { devid: 1, physical: (1 << 20) + 5 }, PhysAddr { devid: 2, physical: (2 << 20) + 5 }]);
        assert_eq!(len, (1 << 30) - 5);
        assert!(m.lookup(5).is_err());
        assert!(m.lookup(2 << 30).is_err());
    }

    /// Regression (fuzz target chunk_map, crash-d1a4926c): a stripe offset near u64::MAX made
    /// `map` overflow (a panic with debug assertions, a wrapped physical address without).
    #[test]
    fn stripe_offset_overflow_is_corrupt() {
        let e = MapEntry { logical: 0, chunk: chunk(BLOCK_GROUP_DATA, &[(1, u64::MAX - 10)], 1), profile: Profile::Single };
        assert!(e.map(5).is_ok());
        assert_eq!(e.map(4096).unwrap_err().corrupt_kind(), Some(CorruptKind::Overflow));
        let e = MapEntry {
            logical: 0,
            chunk: chunk(BLOCK_GROUP_DATA | BLOCK_GROUP_RAID0, &[(1, u64::MAX - 10), (2, 0)], 1),
            profile: Profile::Raid0,
        };
        assert_eq!(e.map(2 * STRIPE_LEN).unwrap_err().corrupt_kind(), Some(CorruptKind::Overflow));
    }

    #[test]
    fn raid10_rotation() {
        let e = MapEntry {
            logical: 0,
            chunk: chunk(BLOCK_GROUP_DATA | BLOCK_GROUP_RAID10, &[(1, 0), (2, 0), (3, 0), (4, 0)], 2),
            profile: Profile::Raid10,
        };
        // Stripe unit 0 on devices 1,2; unit 1 on 3,4; unit 2 back on 1,2 one row down.
        let (v, len) = e.map(10).unwrap();
        assert_eq!(v.iter().map(|p| p.devid).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(len, STRIPE_LEN - 10);
        let (v, _) = e.map(STRIPE_LEN + 1).unwrap();
        assert_eq!(v, vec![PhysAddr { devid: 3, physical: 1 }, PhysAddr { devid: 4, physical: 1 }]);
        let (v, _) = e.map(2 * STRIPE_LEN).unwrap();
        assert_eq!(v, vec![PhysAddr { devid: 1, physical: STRIPE_LEN }, PhysAddr { devid: 2, physical: STRIPE_LEN }]);
    }

    #[test]
    fn raid0_rotation() {
        let e =
            MapEntry { logical: 0, chunk: chunk(BLOCK_GROUP_DATA | BLOCK_GROUP_RAID0, &[(1, 100), (2, 200)], 1), profile: Profile::Raid0 };
        assert_eq!(e.map(STRIPE_LEN * 3 + 7).unwrap().0, vec![PhysAddr { devid: 2, physical: 200 + STRIPE_LEN + 7 }]);
    }

    #[test]
    fn bad_shapes_rejected() {
        assert!(check_chunk(0, &chunk(BLOCK_GROUP_DATA | BLOCK_GROUP_RAID1, &[(1, 0)], 1)).is_err());
        assert!(check_chunk(0, &chunk(BLOCK_GROUP_DATA | BLOCK_GROUP_RAID1 | BLOCK_GROUP_DUP, &[(1, 0), (1, 5)], 1)).is_err());
        let m = ChunkMap::default();
        m.insert(0, chunk(BLOCK_GROUP_DATA, &[(1, 0)], 1)).unwrap();
        assert!(m.insert(1 << 29, chunk(BLOCK_GROUP_DATA, &[(1, 0)], 1)).is_err(), "overlap");
    }

    proptest::proptest! {
        /// Striped profiles never map two different logical sectors to the same
        /// place on a device, and each copy lies inside its stripe's device range.
        #[test]
        fn striping_is_injective(nstripes in 1usize..9, raid10 in proptest::bool::ANY, chunk_mib in 1u64..48) {
            let (flags, sub, n) = if raid10 {
                (BLOCK_GROUP_DATA | BLOCK_GROUP_RAID10, 2u16, nstripes * 2)
            } else {
                (BLOCK_GROUP_DATA | BLOCK_GROUP_RAID0, 1u16, nstripes)
            };
            let devs: Vec<(u64, u64)> = (0..n as u64).map(|i| (i + 1, 1 << 20)).collect();
            let mut c = chunk(flags, &devs, sub);
            // Real chunks are a whole number of full stripes long.
            c.length = chunk_mib * (n as u64 / sub as u64) * STRIPE_LEN;
            let e = MapEntry { logical: 0, profile: check_chunk(0, &c).unwrap(), chunk: c };
            let per_dev = e.chunk.length / (n as u64 / sub as u64);
            let mut seen = std::collections::HashSet::new();
            let mut pos = 0;
            while pos < e.chunk.length {
                let (copies, len) = e.map(pos).unwrap();
                proptest::prop_assert!(len > 0 && len % 4096 == 0);
                proptest::prop_assert_eq!(copies.len(), sub as usize);
                for p in copies {
                    proptest::prop_assert!(p.physical >= 1 << 20 && p.physical < (1 << 20) + per_dev);
                    proptest::prop_assert!(seen.insert((p.devid, p.physical)), "collision");
                }
                pos += 4096;
            }
        }
    }
}
