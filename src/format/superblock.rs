//! Superblock decoding and validation, and the `sys_chunk_array` bootstrap list.

use zerocopy::{FromBytes, IntoBytes};

use super::csum::CsumType;
use super::items::{parse_chunk, ChunkInfo};
use super::ondisk::*;
use super::types::Key;
use super::usize_of;
use crate::error::{CorruptKind, Error, Result};

/// The checksum covers everything after the csum field itself.
pub fn super_csum_region(bytes: &[u8]) -> &[u8] {
    bytes.get(CSUM_SIZE..SUPER_INFO_SIZE).unwrap_or(&[])
}

/// Why a superblock copy was rejected, kept apart from I/O errors so that
/// callers can report "bad copy" and move on to the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuperProblem {
    TooShort,
    BadMagic,
    UnknownCsumType(u16),
    CsumMismatch,
    Insane(String),
}

impl std::fmt::Display for SuperProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SuperProblem::TooShort => write!(f, "short read"),
            SuperProblem::BadMagic => write!(f, "bad magic (not a btrfs superblock)"),
            SuperProblem::UnknownCsumType(t) => write!(f, "unknown checksum type {t}"),
            SuperProblem::CsumMismatch => write!(f, "checksum mismatch"),
            SuperProblem::Insane(s) => write!(f, "{s}"),
        }
    }
}

/// Decode a superblock copy and check magic, checksum and the sizes every
/// later layer relies on. Does not compare `bytenr` with the copy's location:
/// the caller knows where it read from.
pub fn parse_super(bytes: &[u8]) -> std::result::Result<SuperBlock, SuperProblem> {
    let sb = SuperBlock::read_from_prefix(bytes).map_err(|_| SuperProblem::TooShort)?.0;
    if sb.magic != BTRFS_MAGIC {
        return Err(SuperProblem::BadMagic);
    }
    let raw = sb.csum_type.get();
    let ct = CsumType::from_raw(raw).ok_or(SuperProblem::UnknownCsumType(raw))?;
    if !ct.matches(&ct.compute(super_csum_region(bytes)), &sb.csum) {
        return Err(SuperProblem::CsumMismatch);
    }
    check_super_sanity(&sb).map_err(SuperProblem::Insane)?;
    Ok(sb)
}

fn check_super_sanity(sb: &SuperBlock) -> std::result::Result<(), String> {
    let sectorsize = sb.sectorsize.get();
    let nodesize = sb.nodesize.get();
    if !sectorsize.is_power_of_two() || !(4096..=65536).contains(&sectorsize) {
        return Err(format!("sectorsize {sectorsize} is not a power of two in 4KiB..64KiB"));
    }
    if !nodesize.is_power_of_two() || nodesize < sectorsize || nodesize > 65536 {
        return Err(format!("nodesize {nodesize} is not a power of two in sectorsize..64KiB"));
    }
    let sys = usize_of(sb.sys_chunk_array_size.get());
    if sys > SYSTEM_CHUNK_ARRAY_SIZE {
        return Err(format!("sys_chunk_array_size {sys} exceeds {SYSTEM_CHUNK_ARRAY_SIZE}"));
    }
    if sb.root_level >= MAX_LEVEL || sb.chunk_root_level >= MAX_LEVEL || sb.log_root_level >= MAX_LEVEL {
        return Err("tree root level out of range".into());
    }
    for (name, v) in [("root", sb.root.get()), ("chunk_root", sb.chunk_root.get())] {
        // OK: sectorsize is a power of two >= 4096, checked above.
        #[allow(clippy::arithmetic_side_effects)]
        if v % u64::from(sectorsize) != 0 {
            return Err(format!("{name} {v} is not sector aligned"));
        }
    }
    if sb.num_devices.get() == 0 {
        return Err("num_devices is 0".into());
    }
    Ok(())
}

/// Recompute and store the checksum of a superblock (for writers and fixtures).
pub fn seal_super(sb: &mut SuperBlock, csum_type: CsumType) {
    let bytes = sb.as_bytes();
    let c = csum_type.compute(super_csum_region(bytes));
    sb.csum = c;
}

/// Where one tree's root block is, as a backup root slot records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeRootRef {
    pub bytenr: u64,
    pub generation: u64,
    pub level: u8,
}

/// One of the superblock's four backup root slots, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackupRootInfo {
    pub tree: TreeRootRef,
    pub chunk: TreeRootRef,
    pub extent: TreeRootRef,
    pub fs: TreeRootRef,
    pub dev: TreeRootRef,
    pub csum: TreeRootRef,
    pub total_bytes: u64,
    pub bytes_used: u64,
    pub num_devices: u64,
}

pub fn parse_backup_root(b: &RootBackup) -> BackupRootInfo {
    let r = |bytenr: zerocopy::little_endian::U64, generation: zerocopy::little_endian::U64, level: u8| TreeRootRef {
        bytenr: bytenr.get(),
        generation: generation.get(),
        level,
    };
    BackupRootInfo {
        tree: r(b.tree_root, b.tree_root_gen, b.tree_root_level),
        chunk: r(b.chunk_root, b.chunk_root_gen, b.chunk_root_level),
        extent: r(b.extent_root, b.extent_root_gen, b.extent_root_level),
        fs: r(b.fs_root, b.fs_root_gen, b.fs_root_level),
        dev: r(b.dev_root, b.dev_root_gen, b.dev_root_level),
        csum: r(b.csum_root, b.csum_root_gen, b.csum_root_level),
        total_bytes: b.total_bytes.get(),
        bytes_used: b.bytes_used.get(),
        num_devices: b.num_devices.get(),
    }
}

/// The trees a commit records in a backup root slot, besides the chunk
/// tree, which the superblock itself names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackupTrees {
    pub tree: TreeRootRef,
    pub extent: TreeRootRef,
    pub fs: TreeRootRef,
    pub dev: TreeRootRef,
    pub csum: TreeRootRef,
}

impl SuperBlock {
    /// The backup root slot the next commit fills: the one after the newest
    /// (by tree root generation; the last of equals), as the kernel rotates
    /// them. A new filesystem's first commit takes slot 0.
    pub fn next_backup_slot(&self) -> usize {
        let newest = self.super_roots.iter().enumerate().max_by_key(|(_, b)| b.tree_root_gen.get()).map_or(0, |(i, _)| i);
        newest.checked_add(1).and_then(|n| n.checked_rem(NUM_BACKUP_ROOTS)).unwrap_or(0)
    }

    /// Record a commit's tree roots in the next backup root slot. The chunk
    /// root, the byte counts and the device count are the superblock's own:
    /// set them first.
    pub fn record_backup_roots(&mut self, trees: &BackupTrees) {
        let info = BackupRootInfo {
            tree: trees.tree,
            chunk: TreeRootRef {
                bytenr: self.chunk_root.get(),
                generation: self.chunk_root_generation.get(),
                level: self.chunk_root_level,
            },
            extent: trees.extent,
            fs: trees.fs,
            dev: trees.dev,
            csum: trees.csum,
            total_bytes: self.total_bytes.get(),
            bytes_used: self.bytes_used.get(),
            num_devices: self.num_devices.get(),
        };
        let slot = self.next_backup_slot();
        if let Some(b) = self.super_roots.get_mut(slot) {
            *b = backup_root(&info);
        }
    }

    pub fn csum_kind(&self) -> Result<CsumType> {
        let raw = self.csum_type.get();
        CsumType::from_raw(raw).ok_or_else(|| Error::Incompatible(format!("unknown checksum type {raw}")))
    }

    pub fn has_incompat(&self, bit: u64) -> bool {
        self.incompat_flags.get() & bit != 0
    }

    pub fn has_compat_ro(&self, bit: u64) -> bool {
        self.compat_ro_flags.get() & bit != 0
    }

    /// The fsid that tree block headers carry: `metadata_uuid` when the
    /// METADATA_UUID feature is set (fsid was changed without rewriting metadata).
    pub fn metadata_fsid(&self) -> [u8; FSID_SIZE] {
        if self.has_incompat(INCOMPAT_METADATA_UUID) {
            self.metadata_uuid
        } else {
            self.fsid
        }
    }

    pub fn label_string(&self) -> String {
        let end = self.label.iter().position(|&b| b == 0).unwrap_or(LABEL_SIZE);
        String::from_utf8_lossy(self.label.get(..end).unwrap_or_default()).into_owned()
    }

    /// The (key, chunk) pairs of the system chunk array: enough of the chunk
    /// map to read the chunk tree itself.
    pub fn sys_chunks(&self) -> Result<Vec<(Key, ChunkInfo)>> {
        let size = usize_of(self.sys_chunk_array_size.get());
        let arr = self
            .sys_chunk_array
            .get(..size)
            .ok_or_else(|| Error::corrupt(CorruptKind::Superblock, "superblock sys_chunk_array", format!("size {size} too large")))?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos < arr.len() {
            let at = format!("superblock sys_chunk_array offset {pos}");
            let (dk, rest) = DiskKey::read_from_prefix(arr.get(pos..).unwrap_or_default())
                .map_err(|_| Error::corrupt(CorruptKind::Superblock, &at, "truncated key"))?;
            let key = Key::from_disk(&dk);
            if key.item_type != CHUNK_ITEM_KEY {
                return Err(Error::corrupt(CorruptKind::Superblock, &at, format!("key type {} is not CHUNK_ITEM", key.item_type)));
            }
            let (chunk, used) = parse_chunk(rest).map_err(|e| e.within(&at))?;
            out.push((key, chunk));
            pos = pos.saturating_add(std::mem::size_of::<DiskKey>()).saturating_add(used);
        }
        Ok(out)
    }

    /// Incompat bits set that btrs does not know how to read.
    pub fn unsupported_incompat(&self) -> u64 {
        self.incompat_flags.get() & !INCOMPAT_SUPPORTED
    }
}

/// Names of the incompat / compat_ro feature bits, as btrfs-progs prints them.
pub fn incompat_names(flags: u64) -> Vec<String> {
    let table: &[(u64, &str)] = &[
        (INCOMPAT_MIXED_BACKREF, "MIXED_BACKREF"),
        (INCOMPAT_DEFAULT_SUBVOL, "DEFAULT_SUBVOL"),
        (INCOMPAT_MIXED_GROUPS, "MIXED_GROUPS"),
        (INCOMPAT_COMPRESS_LZO, "COMPRESS_LZO"),
        (INCOMPAT_COMPRESS_ZSTD, "COMPRESS_ZSTD"),
        (INCOMPAT_BIG_METADATA, "BIG_METADATA"),
        (INCOMPAT_EXTENDED_IREF, "EXTENDED_IREF"),
        (INCOMPAT_RAID56, "RAID56"),
        (INCOMPAT_SKINNY_METADATA, "SKINNY_METADATA"),
        (INCOMPAT_NO_HOLES, "NO_HOLES"),
        (INCOMPAT_METADATA_UUID, "METADATA_UUID"),
        (INCOMPAT_RAID1C34, "RAID1C34"),
        (INCOMPAT_ZONED, "ZONED"),
        (INCOMPAT_EXTENT_TREE_V2, "EXTENT_TREE_V2"),
        (INCOMPAT_RAID_STRIPE_TREE, "RAID_STRIPE_TREE"),
        (INCOMPAT_SIMPLE_QUOTA, "SIMPLE_QUOTA"),
    ];
    flag_names(flags, table)
}

pub fn compat_ro_names(flags: u64) -> Vec<String> {
    let table: &[(u64, &str)] = &[
        (COMPAT_RO_FREE_SPACE_TREE, "FREE_SPACE_TREE"),
        (COMPAT_RO_FREE_SPACE_TREE_VALID, "FREE_SPACE_TREE_VALID"),
        (COMPAT_RO_VERITY, "VERITY"),
        (COMPAT_RO_BLOCK_GROUP_TREE, "BLOCK_GROUP_TREE"),
    ];
    flag_names(flags, table)
}

/// Names of the superblock flags, in the order btrfs-progs prints them.
pub fn super_flag_names(flags: u64) -> Vec<String> {
    let table: &[(u64, &str)] = &[
        (SUPER_FLAG_WRITTEN, "WRITTEN"),
        (SUPER_FLAG_RELOC, "RELOC"),
        (SUPER_FLAG_CHANGING_FSID, "CHANGING_FSID"),
        (SUPER_FLAG_SEEDING, "SEEDING"),
        (SUPER_FLAG_METADUMP, "METADUMP"),
        (SUPER_FLAG_METADUMP_V2, "METADUMP_V2"),
        (SUPER_FLAG_CHANGING_FSID_V2, "CHANGING_FSID_V2"),
    ];
    flag_names(flags, table)
}

fn flag_names(flags: u64, table: &[(u64, &str)]) -> Vec<String> {
    let mut out: Vec<String> = table.iter().filter(|(b, _)| flags & b != 0).map(|(_, n)| n.to_string()).collect();
    let known: u64 = table.iter().map(|(b, _)| b).fold(0, |a, b| a | b);
    if flags & !known != 0 {
        out.push(format!("unknown flag: {:#x}", flags & !known));
    }
    out
}

/// One backup root slot of the superblock (inverse of `superblock::parse_backup_root`).
pub fn backup_root(b: &BackupRootInfo) -> RootBackup {
    let mut out = <RootBackup as zerocopy::FromZeros>::new_zeroed();
    let set = |r: &TreeRootRef| (r.bytenr.into(), r.generation.into(), r.level);
    (out.tree_root, out.tree_root_gen, out.tree_root_level) = set(&b.tree);
    (out.chunk_root, out.chunk_root_gen, out.chunk_root_level) = set(&b.chunk);
    (out.extent_root, out.extent_root_gen, out.extent_root_level) = set(&b.extent);
    (out.fs_root, out.fs_root_gen, out.fs_root_level) = set(&b.fs);
    (out.dev_root, out.dev_root_gen, out.dev_root_level) = set(&b.dev);
    (out.csum_root, out.csum_root_gen, out.csum_root_level) = set(&b.csum);
    out.total_bytes = b.total_bytes.into();
    out.bytes_used = b.bytes_used.into();
    out.num_devices = b.num_devices.into();
    out
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tree_root() -> impl Strategy<Value = TreeRootRef> {
        (any::<u64>(), any::<u64>(), any::<u8>()).prop_map(|(bytenr, generation, level)| TreeRootRef { bytenr, generation, level })
    }

    proptest! {
        #[test]
        fn backup_roots_round_trip(
            r in (tree_root(), tree_root(), tree_root(), tree_root(), tree_root(), tree_root()),
            n in any::<[u64; 3]>(),
        ) {
            let b = BackupRootInfo { tree: r.0, chunk: r.1, extent: r.2, fs: r.3, dev: r.4, csum: r.5, total_bytes: n[0], bytes_used: n[1], num_devices: n[2] };
            prop_assert_eq!(parse_backup_root(&backup_root(&b)), b);
        }

        /// A commit's backup goes in the slot after the newest, with the
        /// chunk root and sizes of the superblock it is recorded in.
        #[test]
        fn backup_roots_recorded_in_the_next_slot(gens in any::<[u8; 4]>(), r in (tree_root(), tree_root(), tree_root(), tree_root(), tree_root()), chunk in tree_root()) {
            let mut sb = <SuperBlock as zerocopy::FromZeros>::new_zeroed();
            for (b, g) in sb.super_roots.iter_mut().zip(gens) {
                b.tree_root_gen = u64::from(g).into();
            }
            (sb.chunk_root, sb.chunk_root_generation, sb.chunk_root_level) = (chunk.bytenr.into(), chunk.generation.into(), chunk.level);
            (sb.total_bytes, sb.bytes_used, sb.num_devices) = (7.into(), 8.into(), 9.into());
            let newest = (0..NUM_BACKUP_ROOTS).max_by_key(|&i| gens[i]).unwrap();
            let before = sb.super_roots;
            let trees = BackupTrees { tree: r.0, extent: r.1, fs: r.2, dev: r.3, csum: r.4 };
            sb.record_backup_roots(&trees);
            let slot = (newest + 1) % NUM_BACKUP_ROOTS;
            let got = parse_backup_root(&sb.super_roots[slot]);
            let want = BackupRootInfo { tree: r.0, chunk, extent: r.1, fs: r.2, dev: r.3, csum: r.4, total_bytes: 7, bytes_used: 8, num_devices: 9 };
            prop_assert_eq!(got, want);
            for i in (0..NUM_BACKUP_ROOTS).filter(|&i| i != slot) {
                prop_assert_eq!(sb.super_roots[i].as_bytes(), before[i].as_bytes());
            }
        }
    }
}
