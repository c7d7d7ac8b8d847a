//! `btrs mkfs`: make a new btrfs on image files, complete as the kernel would
//! leave it after its first commit: one profile per block group type, every
//! tree written in its final form, superblocks last.
//!
//! The steps:
//! 1. validate options and images (signatures, locks, loop devices);
//! 2. plan chunks per profile on a model of the devices (dev extents keep
//!    clear of the superblock mirrors, so no block group needs super stripes
//!    excluded from its free space);
//! 3. wipe the old superblocks (a crash from here on leaves no valid btrfs);
//! 4. copy `--rootdir` data into data chunks;
//! 5. size every tree (the extent and free space trees describe the blocks
//!    of all trees, themselves included, so their sizes are found by a fixed
//!    point), give blocks addresses, build and write them;
//! 6. fsync, write every superblock copy on every device, fsync again.

use std::fs::File;
use std::path::PathBuf;

use serde::Serialize;
use sha2::Digest;
use zerocopy::{FromZeros, IntoBytes};

use crate::error::{Error, Result};
use crate::format::items::{name_hash, ChunkInfo, StripeInfo};
use crate::format::ondisk::*;
use crate::format::superblock::seal_super;
use crate::format::{CsumType, Key, Profile};
use crate::format::compress::Compression;
use crate::ops::rootdir::{self, DataSink, Scan, ScanOptions};
use crate::tree::builder::{count_blocks, BlockParams, TreeItem};
use crate::volumes::chunks::MapEntry;
use crate::volumes::create::{self, ChunkWriter, NewImages};
pub use crate::volumes::create::MAX_IMAGE_END;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
/// Everything mkfs writes belongs to this one transaction.
const GENERATION: u64 = 1;
/// Where the first chunk starts in the logical address space.
const FIRST_LOGICAL: u64 = MIB;

/// Optional on-disk features mkfs can choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Features {
    pub no_holes: bool,
    pub free_space_tree: bool,
    pub block_group_tree: bool,
}

impl Default for Features {
    /// Today's mkfs.btrfs defaults.
    fn default() -> Self {
        Features { no_holes: true, free_space_tree: true, block_group_tree: false }
    }
}

/// One `-O` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    NoHoles,
    FreeSpaceTree,
    BlockGroupTree,
    /// Always on in btrs images (extref, skinny-metadata, mixed-backref).
    AlwaysOn(&'static str),
}

/// A comma-separated `-O` list: each name turned on, or off with `^`. An
/// unknown name is the caller's typo (a usage error), told apart from a
/// combination btrs refuses, which [`Features::with`] reports.
pub fn parse_features(spec: &str) -> std::result::Result<Vec<(bool, Feature)>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|raw| {
            let (on, name) = match raw.strip_prefix('^') {
                Some(n) => (false, n),
                None => (true, raw),
            };
            let f = match name.to_ascii_lowercase().replace('_', "-").as_str() {
                "no-holes" => Feature::NoHoles,
                "free-space-tree" | "fst" => Feature::FreeSpaceTree,
                "block-group-tree" | "bgt" => Feature::BlockGroupTree,
                "extref" => Feature::AlwaysOn("extref"),
                "skinny-metadata" => Feature::AlwaysOn("skinny-metadata"),
                "mixed-backref" => Feature::AlwaysOn("mixed-backref"),
                _ => return Err(format!("unknown feature {name:?}; known: no-holes, free-space-tree, block-group-tree")),
            };
            Ok((on, f))
        })
        .collect()
}

impl Features {
    /// Apply a comma-separated `-O` list to these features; `^name` turns one off.
    pub fn apply(self, spec: &str) -> Result<Features> {
        self.with(&parse_features(spec).map_err(Error::Invalid)?)
    }

    /// These features with `list` applied in order; refuses what btrs does not make.
    pub fn with(mut self, list: &[(bool, Feature)]) -> Result<Features> {
        for &(on, f) in list {
            match f {
                Feature::NoHoles => self.no_holes = on,
                Feature::FreeSpaceTree => self.free_space_tree = on,
                Feature::BlockGroupTree => self.block_group_tree = on,
                Feature::AlwaysOn(_) if on => {}
                Feature::AlwaysOn(name) => return Err(Error::Unsupported(format!("mkfs without {name}"))),
            }
        }
        if self.block_group_tree && !self.free_space_tree {
            return Err(Error::Invalid("block-group-tree needs free-space-tree".into()));
        }
        Ok(self)
    }

    fn names(self) -> Vec<&'static str> {
        let mut v = vec!["extref", "skinny-metadata"];
        if self.no_holes {
            v.push("no-holes");
        }
        if self.free_space_tree {
            v.push("free-space-tree");
        }
        if self.block_group_tree {
            v.push("block-group-tree");
        }
        v
    }
}

/// Everything `btrs mkfs` can be asked.
#[derive(Clone, Debug)]
pub struct MkfsOptions {
    /// Image files, devid 1, 2, ... in this order.
    pub images: Vec<PathBuf>,
    /// Size each image to this many bytes (creating missing files sparse).
    pub size: Option<u64>,
    pub data_profile: Option<Profile>,
    pub metadata_profile: Option<Profile>,
    pub csum: CsumType,
    pub nodesize: u32,
    pub sectorsize: u32,
    pub label: String,
    pub fsid: Option<[u8; 16]>,
    pub features: Features,
    pub force: bool,
    pub rootdir: Option<PathBuf>,
    /// Populate the top-level subvolume from this tar archive instead (`-`:
    /// standard input); excludes `rootdir`. Everything said of `rootdir`
    /// paths below holds for the archive's member paths.
    pub rootdir_tar: Option<PathBuf>,
    /// Compression of `rootdir` files not under one of `compress_paths`.
    pub compress: Option<(Compression, Option<i32>)>,
    /// Compression (None: none) of a `rootdir` path and everything beneath it,
    /// relative to `rootdir`; the longest matching path wins.
    pub compress_paths: Vec<(PathBuf, rootdir::Compress)>,
    /// Directories of `rootdir` that become subvolumes.
    pub subvols: Vec<rootdir::SubvolSpec>,
    /// Seconds since the epoch used for every timestamp mkfs makes up (`SOURCE_DATE_EPOCH`).
    pub timestamp: Option<u64>,
    /// Inode flags (`INODE_NODATASUM`, `INODE_NODATACOW`) for `rootdir` paths,
    /// relative to it; NODATASUM files get no checksums (see `ScanOptions`).
    pub inode_flags: Vec<(PathBuf, u64)>,
    /// Use `timestamp` as the ctime of the `rootdir` inodes too (ctime cannot be
    /// set on the host, so byte-for-byte reproducible images need this).
    pub fixed_ctime: bool,
    /// Reproducible builds: with `timestamp`, the `rootdir` inodes get it as
    /// atime and ctime, and mtimes later than it are clamped to it.
    pub clamp_times: bool,
    /// Owners, modes and xattrs to store instead of the host's (`--all-root`,
    /// `--owner-map`, `--manifest`).
    pub ownership: rootdir::Ownership,
    /// Size chunks to the content and truncate (or create) each image at the end
    /// of its last dev extent, whatever its starting size.
    pub shrink: bool,
    /// Extra free data space with `shrink`.
    pub slack: Option<Slack>,
    /// Byte offset of the filesystem in every image file (a partition inside
    /// a disk image); a multiple of the sectorsize. Bytes before it are never
    /// written, bytes after it only when `size` says the filesystem reaches them.
    pub offset: u64,
    /// Worker threads for reading, compressing and checksumming rootdir file
    /// data (0: one per core); the image does not depend on it.
    pub threads: usize,
    /// Told the rootdir file bytes written so far and the total.
    pub progress: Progress,
}

/// A callback for [`MkfsOptions::progress`]: (bytes done, bytes in all).
#[derive(Clone, Default)]
pub struct Progress(pub Option<std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Progress(callback)" } else { "Progress(none)" })
    }
}

/// `--slack`: extra free space in a shrunk image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Slack {
    Bytes(u64),
    /// Percent of the minimal image size.
    Percent(u32),
}

/// Parse `--slack SIZE|PERCENT%`.
pub fn parse_slack(s: &str) -> Result<Slack> {
    match s.trim().strip_suffix('%') {
        Some(p) => p
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&p| p <= 10_000)
            .map(Slack::Percent)
            .ok_or_else(|| Error::Invalid(format!("bad --slack {s:?}: want SIZE or PERCENT% (0..10000)"))),
        None => parse_size(s).map(Slack::Bytes),
    }
}

impl MkfsOptions {
    pub fn new(images: Vec<PathBuf>) -> Self {
        MkfsOptions {
            images,
            size: None,
            data_profile: None,
            metadata_profile: None,
            csum: CsumType::Crc32c,
            nodesize: 16384,
            sectorsize: 4096,
            label: String::new(),
            fsid: None,
            features: Features::default(),
            force: false,
            rootdir: None,
            rootdir_tar: None,
            compress: None,
            compress_paths: Vec::new(),
            subvols: Vec::new(),
            timestamp: None,
            inode_flags: Vec::new(),
            fixed_ctime: false,
            clamp_times: false,
            ownership: rootdir::Ownership::default(),
            shrink: false,
            slack: None,
            offset: 0,
            threads: 0,
            progress: Progress::default(),
        }
    }
}

/// What was made, for printing.
#[derive(Clone, Debug, Serialize)]
pub struct MkfsSummary {
    pub fsid: String,
    pub label: String,
    pub nodesize: u32,
    pub sectorsize: u32,
    pub csum: String,
    pub features: Vec<&'static str>,
    pub data_profile: String,
    pub metadata_profile: String,
    pub system_profile: String,
    pub total_bytes: u64,
    pub bytes_used: u64,
    pub devices: Vec<DeviceSummary>,
    pub chunks: Vec<ChunkSummary>,
    pub rootdir: Option<RootdirSummary>,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeviceSummary {
    pub devid: u64,
    pub path: String,
    pub size: u64,
    pub uuid: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChunkSummary {
    pub kind: &'static str,
    pub profile: String,
    pub logical: u64,
    pub length: u64,
    pub used: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RootdirSummary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub special: u64,
    pub hardlinks: u64,
    pub data_bytes: u64,
    /// File data bytes (counted once per copy) written by copy_file_range
    /// from the source files, and from memory (compressed or after a refusal).
    pub data_copied_bytes: u64,
    pub data_written_bytes: u64,
    pub subvolumes: Vec<SubvolSummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SubvolSummary {
    pub id: u64,
    /// Relative to the root directory.
    pub path: String,
    pub parent: u64,
    pub uuid: String,
    pub readonly: bool,
    pub default: bool,
}

/// Parse `--inode-flags FLAGS:PATH` (FLAGS: nodatacow, nodatasum, comma separated).
/// nodatacow implies nodatasum, as `chattr +C` gives both on the kernel.
pub fn parse_inode_flags(s: &str) -> Result<(PathBuf, u64)> {
    let (flags, path) = s.split_once(':').ok_or_else(|| Error::Invalid(format!("--inode-flags {s:?}: want FLAGS:PATH")))?;
    let mut v = 0u64;
    for f in flags.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        v |= match f.to_ascii_lowercase().as_str() {
            "nodatacow" => INODE_NODATACOW | INODE_NODATASUM,
            "nodatasum" => INODE_NODATASUM,
            _ => return Err(Error::Invalid(format!("--inode-flags: unknown flag {f:?}; use nodatacow or nodatasum"))),
        };
    }
    if v == 0 || path.is_empty() {
        return Err(Error::Invalid(format!("--inode-flags {s:?}: want FLAGS:PATH")));
    }
    Ok((PathBuf::from(path.trim_start_matches('/')), v))
}

/// Parse a size with an optional K/M/G/T/P/E suffix (binary units), e.g. `1G`, `512M`, `4096`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let t = t.strip_suffix(['b', 'B']).filter(|x| x.ends_with(|c: char| c.is_ascii_alphabetic())).unwrap_or(t);
    let t = t.strip_suffix("i").or_else(|| t.strip_suffix("I")).unwrap_or(t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_lowercase() {
                'k' => 1u64 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                'p' => 1 << 50,
                'e' => 1 << 60,
                _ => return Err(Error::Invalid(format!("bad size {s:?}: unknown suffix {c:?}"))),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| Error::Invalid(format!("bad size {s:?}")))?;
    n.checked_mul(mult).ok_or_else(|| Error::Invalid(format!("size {s:?} is too large")))
}

/// Parse a `--compress` value: `zlib`, `lzo`, `zstd`, optionally `:LEVEL`.
pub fn parse_compress(s: &str) -> Result<(Compression, Option<i32>)> {
    let (name, level) = match s.split_once(':') {
        Some((n, l)) => (n, Some(l.parse::<i32>().map_err(|_| Error::Invalid(format!("bad compression level {l:?}")))?)),
        None => (s, None),
    };
    let kind = match name.to_ascii_lowercase().as_str() {
        "zlib" => Compression::Zlib,
        "lzo" => Compression::Lzo,
        "zstd" => Compression::Zstd,
        _ => return Err(Error::Invalid(format!("unknown compression {name:?}; use zlib, lzo or zstd"))),
    };
    match (kind, level) {
        (Compression::Zlib, Some(l)) if !(1..=9).contains(&l) => Err(Error::Invalid(format!("zlib level {l} not in 1..9"))),
        (Compression::Zstd, Some(l)) if !(-15..=15).contains(&l) || l == 0 => {
            Err(Error::Invalid(format!("zstd level {l} not in 1..15 or -15..-1")))
        }
        (Compression::Lzo, Some(_)) => Err(Error::Invalid("lzo has no compression levels".into())),
        _ => Ok((kind, level)),
    }
}

/// Parse a `--compress` value: `ALGO[:LEVEL]` for every file, or
/// `ALGO[:LEVEL]:PATH` for a path relative to the root directory and what is
/// beneath it (ALGO may then be `none`). Returns (path, compression).
/// A PATH that reads as a number needs a `./` prefix to not be a level.
pub fn parse_compress_arg(s: &str) -> Result<(Option<PathBuf>, rootdir::Compress)> {
    let (name, rest) = match s.split_once(':') {
        Some((n, r)) => (n, Some(r)),
        None => (s, None),
    };
    let is_level = |v: &str| v.parse::<i32>().is_ok();
    let (level, path) = match rest {
        None => (None, None),
        Some(r) if is_level(r) => (Some(r), None),
        Some(r) => match r.split_once(':') {
            Some((l, p)) if is_level(l) => (Some(l), Some(p)),
            _ => (None, Some(r)),
        },
    };
    let path = path.map(|p| rootdir::relative_path(p, "--compress")).transpose()?;
    if name.eq_ignore_ascii_case("none") {
        if level.is_some() {
            return Err(Error::Invalid(format!("--compress {s:?}: `none` takes no level")));
        }
        return Ok((path, None));
    }
    let algo = match level {
        Some(l) => format!("{name}:{l}"),
        None => name.to_string(),
    };
    Ok((path, Some(parse_compress(&algo)?)))
}

fn fmt_uuid(u: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*u).hyphenated().to_string()
}

/// UUIDs: derived from the fsid when the caller fixed it and the time too
/// (reproducible images), random otherwise: two filesystems made with one
/// `-U` alone must not share device uuids, or a device of one would pass for
/// the same device of the other.
struct UuidSource {
    fsid: [u8; 16],
    derived: bool,
}

impl UuidSource {
    fn get(&self, purpose: &str) -> [u8; 16] {
        if !self.derived {
            return *uuid::Uuid::new_v4().as_bytes();
        }
        let mut h = sha2::Sha256::new();
        h.update(self.fsid);
        h.update(b"btrs-mkfs:");
        h.update(purpose.as_bytes());
        let d = h.finalize();
        let mut u = [0u8; 16];
        u.copy_from_slice(&d[..16]);
        // Mark as a version-4 (random) UUID, which it is as good as.
        u[6] = (u[6] & 0x0f) | 0x40;
        u[8] = (u[8] & 0x3f) | 0x80;
        u
    }
}

// ---------------------------------------------------------------------------
// Chunk planning on a model of the devices.

#[derive(Clone, Debug)]
struct DevModel {
    devid: u64,
    size: u64,
    /// Next free physical byte; everything below is allocated or reserved.
    cursor: u64,
}

#[derive(Clone, Debug)]
struct PlannedChunk {
    logical: u64,
    length: u64,
    flags: u64,
    profile: Profile,
    stripe_size: u64,
    sub_stripes: u16,
    /// (devid, physical), in stripe order.
    stripes: Vec<(u64, u64)>,
}

impl PlannedChunk {
    fn kind(&self) -> &'static str {
        if self.flags & BLOCK_GROUP_SYSTEM != 0 {
            "system"
        } else if self.flags & BLOCK_GROUP_METADATA != 0 {
            "metadata"
        } else {
            "data"
        }
    }
}

/// Place `len` bytes at or after `cursor`, stepping over superblock copies
/// (the first one sits in the reserved first MiB).
fn place(cursor: u64, len: u64, size: u64) -> Option<u64> {
    let mut start = cursor.max(DEVICE_RESERVED);
    for &m in &SUPER_MIRROR_OFFSETS[1..] {
        let sb_end = m + STRIPE_LEN;
        if start < sb_end && m < start.checked_add(len)? {
            start = sb_end;
        }
    }
    (start.checked_add(len)? <= size).then_some(start)
}

/// How many devices and stripes per chunk a profile uses with `ndevs` devices:
/// (devices used, stripes per device, data stripes, sub stripes).
fn profile_shape(p: Profile, ndevs: usize) -> Result<(usize, usize, usize, u16)> {
    let need = p.min_devices();
    if ndevs < need {
        return Err(Error::Invalid(format!(
            "profile {p} needs at least {need} devices (images), {ndevs} given"
        )));
    }
    Ok(match p {
        Profile::Single => (1, 1, 1, 1),
        Profile::Dup => (1, 2, 1, 1),
        Profile::Raid1 => (2, 1, 1, 1),
        Profile::Raid1C3 => (3, 1, 1, 1),
        Profile::Raid1C4 => (4, 1, 1, 1),
        Profile::Raid0 => (ndevs, 1, ndevs, 1),
        Profile::Raid10 => {
            let n = ndevs / 2 * 2;
            (n, 1, n / 2, 2)
        }
        Profile::Raid5 | Profile::Raid6 => {
            return Err(Error::Unsupported(format!("mkfs with profile {p}")));
        }
    })
}

fn alloc_chunk(devs: &mut [DevModel], logical: u64, flags: u64, profile: Profile, target: u64) -> Option<PlannedChunk> {
    let (ndev, per_dev, data_stripes, sub_stripes) = profile_shape(profile, devs.len()).ok()?;
    let stripe_size = target.div_ceil(data_stripes as u64).div_ceil(MIB) * MIB;
    // Like the kernel: devices with the most free space first (ties: lowest devid).
    let mut order: Vec<usize> = (0..devs.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(devs[i].size.saturating_sub(devs[i].cursor)), devs[i].devid));
    let mut stripes = Vec::new();
    let mut chosen = 0;
    for &i in &order {
        if chosen == ndev {
            break;
        }
        let (devid, size) = (devs[i].devid, devs[i].size);
        let mut cur = devs[i].cursor;
        let mut placed = Vec::new();
        for _ in 0..per_dev {
            match place(cur, stripe_size, size) {
                Some(s) => {
                    placed.push(s);
                    cur = s + stripe_size;
                }
                None => break,
            }
        }
        if placed.len() < per_dev {
            continue;
        }
        devs[i].cursor = cur;
        stripes.extend(placed.into_iter().map(|p| (devid, p)));
        chosen += 1;
    }
    if chosen < ndev {
        return None;
    }
    // RAID10 pairs mirror stripes next to each other; keep stripe order by devid for readability.
    Some(PlannedChunk {
        logical,
        length: stripe_size * data_stripes as u64,
        flags: flags | profile.flag(),
        profile,
        stripe_size,
        sub_stripes,
        stripes,
    })
}

struct LayoutRequest {
    meta_profile: Profile,
    data_profile: Profile,
    sys_len: u64,
    meta_lens: Vec<u64>,
    data_lens: Vec<u64>,
}

fn plan_layout(sizes: &[u64], req: &LayoutRequest) -> Option<Vec<PlannedChunk>> {
    let mut devs: Vec<DevModel> =
        sizes.iter().enumerate().map(|(i, &s)| DevModel { devid: i as u64 + 1, size: s, cursor: DEVICE_RESERVED }).collect();
    let mut logical = FIRST_LOGICAL;
    let mut out = Vec::new();
    let mut wanted = vec![(BLOCK_GROUP_SYSTEM, req.meta_profile, req.sys_len)];
    wanted.extend(req.meta_lens.iter().map(|&l| (BLOCK_GROUP_METADATA, req.meta_profile, l)));
    wanted.extend(req.data_lens.iter().map(|&l| (BLOCK_GROUP_DATA, req.data_profile, l)));
    for (flags, profile, len) in wanted {
        let c = alloc_chunk(&mut devs, logical, flags, profile, len)?;
        // Keep logical addresses 1 MiB aligned, as the kernel's allocator does.
        logical = (c.logical + c.length).div_ceil(MIB) * MIB;
        out.push(c);
    }
    Some(out)
}

/// Chunk lengths that hold `need` bytes: each at least `default` (there is always one) and at most `max`.
fn chunk_lens(need: u64, default: u64, max: u64) -> Vec<u64> {
    let mut lens = Vec::new();
    let mut rem = need;
    loop {
        let len = default.max(rem.div_ceil(MIB) * MIB).min(max);
        lens.push(len);
        if len >= rem {
            break;
        }
        rem -= len;
    }
    lens
}

// ---------------------------------------------------------------------------
// Writing through the planned chunk map.

struct DataAlloc<'a> {
    writer: &'a ChunkWriter<'a>,
    /// (logical start, end, next free) of each data chunk.
    chunks: Vec<(u64, u64, u64)>,
    current: usize,
}

impl DataSink for DataAlloc<'_> {
    fn reserve(&mut self, len: u64, whole: bool) -> Result<(u64, u64)> {
        while let Some(c) = self.chunks.get_mut(self.current) {
            let free = c.1 - c.2;
            if free >= len || (!whole && free > 0) {
                let n = len.min(free);
                let at = c.2;
                c.2 += n;
                return Ok((at, n));
            }
            self.current += 1;
        }
        Err(Error::Invalid("data chunks are full (internal sizing error)".into()))
    }

    fn write(&mut self, logical: u64, data: &[u8]) -> Result<()> {
        self.writer.write_from(logical, data, Some(None))
    }

    fn write_copy(&mut self, logical: u64, data: &[u8], from: (&File, u64, u64)) -> Result<()> {
        self.writer.write_from(logical, data, Some(Some(from)))
    }
}

// ---------------------------------------------------------------------------
// Validation of images.

// ---------------------------------------------------------------------------
// Item makers.

fn key(o: u64, t: u8, off: u64) -> Key {
    Key::new(o, t, off)
}

fn root_item(bytenr: u64, level: u8, bytes_used: u64, root_dirid: u64, uuid: [u8; 16], time: (u64, u32), nodesize: u32) -> Vec<u8> {
    new_root_item(bytenr, level, bytes_used, root_dirid, uuid, time, nodesize).as_bytes().to_vec()
}

fn new_root_item(bytenr: u64, level: u8, bytes_used: u64, root_dirid: u64, uuid: [u8; 16], time: (u64, u32), nodesize: u32) -> RootItem {
    let mut r = RootItem::new_zeroed();
    // The embedded inode is what btrfs-progs and the kernel put there: a directory with one link.
    r.inode.generation = 1.into();
    r.inode.size = 3.into();
    r.inode.nlink = 1.into();
    r.inode.nbytes = (nodesize as u64).into();
    r.inode.mode = (S_IFDIR | 0o755).into();
    r.generation = GENERATION.into();
    r.root_dirid = root_dirid.into();
    r.bytenr = bytenr.into();
    r.bytes_used = bytes_used.into();
    r.refs = 1.into();
    r.level = level;
    r.generation_v2 = GENERATION.into();
    r.uuid = uuid;
    if uuid != [0; 16] {
        r.ctransid = GENERATION.into();
        r.otransid = GENERATION.into();
        r.ctime = Timespec::new(time.0, time.1);
        r.otime = Timespec::new(time.0, time.1);
    }
    r
}

/// The root item of a subvolume `--subvol` made: like the kernel's
/// create_subvol, its inode carries ROOT_ITEM_INIT (generation_v2 is valid),
/// and a read-only subvolume has ROOT_SUBVOL_RDONLY.
fn subvol_root_item(tree: (u64, u8, u64), uuid: [u8; 16], readonly: bool, time: (u64, u32), nodesize: u32) -> Vec<u8> {
    let mut r = new_root_item(tree.0, tree.1, tree.2, FIRST_FREE_OBJECTID, uuid, time, nodesize);
    r.inode.flags = INODE_ROOT_ITEM_INIT.into();
    if readonly {
        r.flags = ROOT_SUBVOL_RDONLY.into();
    }
    r.as_bytes().to_vec()
}

/// ROOT_REF / ROOT_BACKREF data: the directory and DIR_INDEX of the entry that
/// links a subvolume, and its name.
fn root_ref(dirid: u64, index: u64, name: &[u8]) -> Vec<u8> {
    let mut v = RootRef { dirid: dirid.into(), sequence: index.into(), name_len: (name.len() as u16).into() }.as_bytes().to_vec();
    v.extend_from_slice(name);
    v
}

/// A UUID_KEY_SUBVOL item of the uuid tree: the uuid split into key halves.
fn uuid_item(uuid: &[u8; 16], subvol: u64) -> TreeItem {
    let half = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    TreeItem::new(key(half(&uuid[..8]), UUID_KEY_SUBVOL, half(&uuid[8..])), subvol.to_le_bytes().to_vec())
}

fn dir_inode(time: (u64, u32), otime: (u64, u32)) -> Vec<u8> {
    let mut i = InodeItem::new_zeroed();
    i.generation = GENERATION.into();
    i.transid = GENERATION.into();
    i.nlink = 1.into();
    i.mode = (S_IFDIR | 0o755).into();
    let t = Timespec::new(time.0, time.1);
    i.atime = t;
    i.ctime = t;
    i.mtime = t;
    i.otime = Timespec::new(otime.0, otime.1);
    i.as_bytes().to_vec()
}

fn inode_ref(index: u64, name: &[u8]) -> Vec<u8> {
    let mut v = InodeRef { index: index.into(), name_len: (name.len() as u16).into() }.as_bytes().to_vec();
    v.extend_from_slice(name);
    v
}

fn chunk_item(c: &PlannedChunk, dev_uuids: &[[u8; 16]], sectorsize: u32) -> Vec<u8> {
    let mut info = map_entry(c).chunk;
    info.sector_size = sectorsize;
    for s in info.stripes.iter_mut() {
        s.dev_uuid = dev_uuids.get((s.devid - 1) as usize).copied().unwrap_or([0; 16]);
    }
    info.to_bytes()
}

fn map_entry(c: &PlannedChunk) -> MapEntry {
    MapEntry {
        logical: c.logical,
        profile: c.profile,
        chunk: ChunkInfo {
            length: c.length,
            owner: EXTENT_TREE_OBJECTID,
            stripe_len: STRIPE_LEN,
            chunk_type: c.flags,
            io_align: STRIPE_LEN as u32,
            io_width: STRIPE_LEN as u32,
            sector_size: 4096,
            sub_stripes: c.sub_stripes,
            stripes: c.stripes.iter().map(|&(devid, offset)| StripeInfo { devid, offset, dev_uuid: [0; 16] }).collect(),
        },
    }
}

fn metadata_extent_item(owner: u64) -> Vec<u8> {
    let mut v = ExtentItem { refs: 1.into(), generation: GENERATION.into(), flags: EXTENT_FLAG_TREE_BLOCK.into() }
        .as_bytes()
        .to_vec();
    v.extend_from_slice(ExtentInlineRef { ref_type: TREE_BLOCK_REF_KEY, offset: owner.into() }.as_bytes());
    v
}

// ---------------------------------------------------------------------------

/// The trees mkfs writes, in the order their blocks are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum TreeId {
    Chunk,
    Root,
    Extent,
    Dev,
    /// A subvolume tree: 5 (the top level) or one `--subvol` made.
    Fs(u64),
    Csum,
    Uuid,
    DataReloc,
    FreeSpace,
    BlockGroup,
}

impl TreeId {
    fn objectid(self) -> u64 {
        match self {
            TreeId::Chunk => CHUNK_TREE_OBJECTID,
            TreeId::Root => ROOT_TREE_OBJECTID,
            TreeId::Extent => EXTENT_TREE_OBJECTID,
            TreeId::Dev => DEV_TREE_OBJECTID,
            TreeId::Fs(id) => id,
            TreeId::Csum => CSUM_TREE_OBJECTID,
            TreeId::Uuid => UUID_TREE_OBJECTID,
            TreeId::DataReloc => DATA_RELOC_TREE_OBJECTID,
            TreeId::FreeSpace => FREE_SPACE_TREE_OBJECTID,
            TreeId::BlockGroup => BLOCK_GROUP_TREE_OBJECTID,
        }
    }
}

struct Ctx<'a> {
    opts: &'a MkfsOptions,
    fsid: [u8; 16],
    chunk_uuid: [u8; 16],
    fs_uuid: [u8; 16],
    dev_uuids: Vec<[u8; 16]>,
    dev_sizes: Vec<u64>,
    chunks: Vec<PlannedChunk>,
    now: (u64, u32),
    /// The `--subvol` subvolumes and their UUIDs.
    subvols: Vec<(rootdir::ScanSubvol, [u8; 16])>,
}

/// Make the filesystem. On error nothing on the images looks like a valid btrfs
/// (old superblocks are wiped before anything else is written; new ones are written last).
pub fn mkfs(opts: &MkfsOptions) -> Result<MkfsSummary> {
    // Image files this run creates are removed again if it fails, so that a failed
    // mkfs leaves no half-made image behind.
    let created = create::not_yet_there(&opts.images);
    let r = make(opts);
    if r.is_err() {
        create::remove_created(created);
    }
    r
}

/// Check the options; returns the metadata and data profiles and the time
/// every made-up timestamp gets.
///
/// Touches no file: [`check_options`] lets a caller tell a request that can
/// never work (a usage error) from a failure on the images.
fn validate(opts: &MkfsOptions) -> Result<(Profile, Profile, (u64, u32))> {
    if opts.images.is_empty() {
        return Err(Error::Invalid("no image given".into()));
    }
    if opts.sectorsize != 4096 {
        return Err(Error::Unsupported(format!("sectorsize {} (only 4096 is supported)", opts.sectorsize)));
    }
    if !opts.nodesize.is_power_of_two() || opts.nodesize < opts.sectorsize || opts.nodesize > 65536 {
        return Err(Error::Invalid(format!(
            "nodesize {} must be a power of two between the sectorsize ({}) and 65536",
            opts.nodesize, opts.sectorsize
        )));
    }
    if opts.label.len() >= LABEL_SIZE {
        return Err(Error::Invalid(format!("label is {} bytes; at most {} allowed", opts.label.len(), LABEL_SIZE - 1)));
    }
    let ndevs = opts.images.len();
    let (def_meta, def_data) = if ndevs == 1 { (Profile::Dup, Profile::Single) } else { (Profile::Raid1, Profile::Single) };
    let meta_profile = opts.metadata_profile.unwrap_or(def_meta);
    let data_profile = opts.data_profile.unwrap_or(def_data);
    for (what, p) in [("metadata", meta_profile), ("data", data_profile)] {
        profile_shape(p, ndevs).map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(format!("{what}: {m}")),
            other => other,
        })?;
    }
    for (i, a) in opts.images.iter().enumerate() {
        if opts.images[..i].iter().any(|b| b == a) {
            return Err(Error::Invalid(format!("{} given twice", a.display())));
        }
    }
    let now = match opts.timestamp {
        Some(t) => (t, 0),
        None => {
            let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            (d.as_secs(), d.subsec_nanos())
        }
    };
    if opts.shrink && opts.size.is_some() {
        return Err(Error::Invalid("--shrink and --size exclude each other".into()));
    }
    if opts.offset % opts.sectorsize as u64 != 0 {
        return Err(Error::Invalid(format!("--offset {} is not a multiple of the sectorsize {}", opts.offset, opts.sectorsize)));
    }
    // Where the filesystem ends in the image file must be a file size the
    // host can have: checked here, before any file is touched (an offset
    // that wrapped around once truncated an image it was never meant to).
    let end = opts.offset.checked_add(opts.size.unwrap_or(0)).filter(|&e| e <= MAX_IMAGE_END);
    if end.is_none() {
        return Err(Error::Invalid(match opts.size {
            Some(s) if opts.offset == 0 => format!("--size {s} is past the largest file size ({MAX_IMAGE_END} bytes)"),
            Some(s) => format!("--offset {} plus --size {s} is past the largest file size ({MAX_IMAGE_END} bytes)", opts.offset),
            None => format!("--offset {} is past the largest file size ({MAX_IMAGE_END} bytes)", opts.offset),
        }));
    }
    if opts.slack.is_some() && !opts.shrink {
        return Err(Error::Invalid("--slack needs --shrink".into()));
    }
    if let Some(Slack::Bytes(b)) = opts.slack {
        if b > MAX_SLACK {
            return Err(Error::Invalid(format!("--slack of {b} bytes: at most {MAX_SLACK} (16 TiB); for a larger image give --size")));
        }
    }
    if opts.rootdir.is_some() && opts.rootdir_tar.is_some() {
        return Err(Error::Invalid("--rootdir and --rootdir-tar exclude each other".into()));
    }
    if opts.rootdir.is_none() && opts.rootdir_tar.is_none() {
        let needs = [
            ("--subvol", !opts.subvols.is_empty()),
            ("--compress", opts.compress.is_some() || !opts.compress_paths.is_empty()),
            ("--inode-flags", !opts.inode_flags.is_empty()),
        ];
        if let Some((what, _)) = needs.iter().find(|n| n.1) {
            return Err(Error::Invalid(format!("{what} needs --rootdir or --rootdir-tar")));
        }
    }
    Ok((meta_profile, data_profile, now))
}

/// The options alone, before any image is looked at: what mkfs would refuse
/// whatever the images hold.
pub fn check_options(opts: &MkfsOptions) -> Result<()> {
    validate(opts).map(|_| ())
}

fn make(opts: &MkfsOptions) -> Result<MkfsSummary> {
    let (meta_profile, data_profile, now) = validate(opts)?;
    let ndevs = opts.images.len();
    let scan = scan_rootdir(opts, now)?;

    // ---- open images (their lengths change only once a layout fits) ----
    let devs = NewImages::open(&opts.images, opts.size.is_some() || opts.shrink, opts.force, opts.offset)?;
    for (p, &len) in opts.images.iter().zip(devs.file_lens()) {
        if opts.offset > 0 && len <= opts.offset && opts.size.is_none() && !opts.shrink {
            return Err(Error::Invalid(format!("{}: {len} bytes long, nothing after --offset {}", p.display(), opts.offset)));
        }
    }
    // The filesystem's device is what follows the offset.
    let cur_lens: Vec<u64> = devs.file_lens().iter().map(|len| len.saturating_sub(opts.offset)).collect();
    let sector = opts.sectorsize as u64;

    // ---- plan chunks ----
    let (chunks, sizes) = if opts.shrink {
        let (chunks, ends) = shrink_plan(opts, scan.as_ref(), meta_profile, data_profile)?;
        (chunks, ends)
    } else {
        let sizes: Vec<u64> = match opts.size {
            Some(s) => vec![s / sector * sector; ndevs],
            None => cur_lens.iter().map(|l| l / sector * sector).collect(),
        };
        (plan_for_sizes(opts, scan.as_ref(), &sizes, meta_profile, data_profile)?, sizes)
    };
    if opts.shrink || opts.size.is_some() {
        devs.resize(&sizes)?;
    }
    let total: u64 = sizes.iter().sum();

    // ---- identities ----
    let fsid = opts.fsid.unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes());
    let uuids = UuidSource { fsid, derived: opts.fsid.is_some() && opts.timestamp.is_some() };
    let ctx = Ctx {
        opts,
        fsid,
        chunk_uuid: uuids.get("chunk-tree"),
        fs_uuid: uuids.get("subvolume/5"),
        dev_uuids: (1..=ndevs).map(|d| uuids.get(&format!("device/{d}"))).collect(),
        dev_sizes: sizes.clone(),
        chunks,
        now,
        subvols: scan
            .as_ref()
            .map(|s| s.subvolumes().iter().map(|sv| (sv.clone(), uuids.get(&format!("subvolume/{}", sv.id)))).collect())
            .unwrap_or_default(),
    };

    // ---- wipe: from here on a failure leaves no valid btrfs behind ----
    // The wipe must reach the disk before any tree block only when an old btrfs
    // superblock could otherwise survive a crash next to half-written trees.
    let had_btrfs = devs.hold_btrfs(&sizes);
    for (i, size) in sizes.iter().enumerate() {
        let devid = i as u64 + 1;
        devs.zero_phys(devid, 0, (*size).min(DEVICE_RESERVED))?;
        for &m in &SUPER_MIRROR_OFFSETS[1..] {
            if m + SUPER_INFO_SIZE as u64 <= *size {
                devs.zero_phys(devid, m, SUPER_INFO_SIZE as u64)?;
            }
        }
    }
    if had_btrfs {
        devs.sync()?;
    }

    let (summary_used, per_chunk_used, warnings) = build_and_write(&ctx, &devs, scan.as_ref())?;

    let summary = MkfsSummary {
        fsid: fmt_uuid(&fsid),
        label: opts.label.clone(),
        nodesize: opts.nodesize,
        sectorsize: opts.sectorsize,
        csum: opts.csum.name().to_string(),
        features: opts.features.names(),
        data_profile: data_profile.to_string(),
        metadata_profile: meta_profile.to_string(),
        system_profile: meta_profile.to_string(),
        total_bytes: total,
        bytes_used: summary_used,
        devices: opts
            .images
            .iter()
            .enumerate()
            .map(|(i, p)| DeviceSummary {
                devid: i as u64 + 1,
                path: p.display().to_string(),
                size: sizes[i],
                uuid: fmt_uuid(&ctx.dev_uuids[i]),
            })
            .collect(),
        chunks: ctx
            .chunks
            .iter()
            .zip(&per_chunk_used)
            .map(|(c, &used)| ChunkSummary { kind: c.kind(), profile: c.profile.to_string(), logical: c.logical, length: c.length, used })
            .collect(),
        rootdir: scan.as_ref().map(|s| RootdirSummary {
            files: s.files,
            dirs: s.dirs,
            symlinks: s.symlinks,
            special: s.special,
            hardlinks: s.hardlinks,
            data_bytes: s.data_bytes,
            data_copied_bytes: devs.data_copied_and_written().0,
            data_written_bytes: devs.data_copied_and_written().1,
            subvolumes: ctx
                .subvols
                .iter()
                .map(|(sv, uuid)| SubvolSummary {
                    id: sv.id,
                    path: sv.path.display().to_string(),
                    parent: sv.parent,
                    uuid: fmt_uuid(uuid),
                    readonly: sv.readonly,
                    default: sv.default,
                })
                .collect(),
        }),
        warnings,
    };
    Ok(summary)
}


fn scan_rootdir(opts: &MkfsOptions, now: (u64, u32)) -> Result<Option<Scan>> {
    let scan_opts = ScanOptions {
        sectorsize: opts.sectorsize,
        nodesize: opts.nodesize,
        compress: opts.compress,
        compress_paths: opts.compress_paths.clone(),
        subvols: opts.subvols.clone(),
        otime: now,
        generation: GENERATION,
        no_holes: opts.features.no_holes,
        csum: opts.csum,
        exclude: opts
            .images
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| (std::os::unix::fs::MetadataExt::dev(&m), std::os::unix::fs::MetadataExt::ino(&m)))
            .collect(),
        inode_flags: opts.inode_flags.clone(),
        ctime: if opts.fixed_ctime { Some(now) } else { None },
        clamp_time: if opts.clamp_times { opts.timestamp.map(|t| (t, 0)) } else { None },
        ownership: opts.ownership.clone(),
        threads: opts.threads,
    };
    if let Some(archive) = &opts.rootdir_tar {
        // The archive is read again while the images are written: it must not be one of them.
        if let Ok(a) = std::fs::metadata(archive) {
            let id = |m: &std::fs::Metadata| (std::os::unix::fs::MetadataExt::dev(m), std::os::unix::fs::MetadataExt::ino(m));
            if a.is_file() && scan_opts.exclude.contains(&id(&a)) {
                return Err(Error::Invalid(format!("--rootdir-tar {}: is one of the images being made", archive.display())));
            }
        }
        return Ok(Some(rootdir::scan_tar(archive, &scan_opts)?));
    }
    match &opts.rootdir {
        Some(dir) => Ok(Some(rootdir::scan(dir, &scan_opts)?)),
        None => Ok(None),
    }
}

/// Chunks for images of the given sizes: the usual generous chunk sizes when
/// they fit, else smaller ones, else chunks sized exactly to the content; if
/// even that does not fit, an error naming the size each image needs.
fn plan_for_sizes(
    opts: &MkfsOptions,
    scan: Option<&Scan>,
    sizes: &[u64],
    meta_profile: Profile,
    data_profile: Profile,
) -> Result<Vec<PlannedChunk>> {
    let ndevs = sizes.len();
    let total: u64 = sizes.iter().sum();
    let tenth = (total / 10) / MIB * MIB;
    let meta_default = if total >= 50 * GIB { GIB } else { tenth.clamp(32 * MIB, 256 * MIB) };
    let data_default = tenth.clamp(64 * MIB, GIB);
    let (data_need, meta_need) = match scan {
        Some(s) => (s.data_bytes + s.data_bytes / 64 + 4 * MIB, s.metadata_bytes * 3 + 4 * MIB),
        None => (0, 0),
    };
    let request = |scale: u64| {
        let shrink = |v: u64, min: u64| (v / scale / MIB * MIB).max(min);
        let meta_len = shrink(meta_default, 8 * MIB);
        let data_len = shrink(data_default, 8 * MIB);
        LayoutRequest {
            meta_profile,
            data_profile,
            sys_len: if scale > 1 { 4 * MIB } else { 8 * MIB },
            meta_lens: chunk_lens(meta_need, meta_len, if meta_len >= GIB { GIB } else { 256 * MIB }.max(meta_len)),
            data_lens: chunk_lens(data_need, data_len, GIB),
        }
    };
    let scales = [1u64, 2, 4, 8, 16, 32, 64, 128];
    if let Some(c) = scales.iter().find_map(|&s| plan_layout(sizes, &request(s))) {
        return Ok(c);
    }
    // With --rootdir, chunks sized to the content (what --shrink makes) before
    // giving up. An empty filesystem keeps the usual minimum chunk sizes: room
    // to grow is all it is for.
    let last = match scan {
        Some(_) => minimal_request(opts, scan, meta_profile, data_profile, 0)?,
        None => request(*scales.last().unwrap_or(&1)),
    };
    if let Some(c) = plan_layout(sizes, &last) {
        return Ok(c);
    }
    let need = needed_size(ndevs, &last);
    // The size asked for, when one was: the files' lengths say nothing then.
    let small = match opts.size {
        Some(s) => vec![format!("--size {s} bytes")],
        None => opts.images.iter().zip(sizes).map(|(p, s)| format!("{} ({s} bytes)", p.display())).collect::<Vec<_>>(),
    };
    Err(Error::Invalid(format!(
        "images too small for this filesystem: {}; each of the {ndevs} image(s) needs at least {need} bytes ({} MiB) with data {data_profile}, metadata {meta_profile}{}",
        small.join(", "),
        need.div_ceil(MIB),
        if scan.is_some() { " and the --rootdir content" } else { "" }
    )))
}

/// The smallest equal image size that `req` fits on (MiB granularity).
fn needed_size(ndevs: usize, req: &LayoutRequest) -> u64 {
    let (mut lo, mut hi) = (MIB, 1u64 << 50);
    while lo + MIB < hi {
        let mid = (lo + hi) / 2 / MIB * MIB;
        if plan_layout(&vec![mid; ndevs], req).is_some() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// Chunk sizes that hold exactly the content, plus `slack` free data bytes.
///
/// The data pass runs dry (nothing written; only compressed files are read)
/// to learn the exact data extents, fs items and checksums: hard links count
/// once, holes not at all, compressed data as compressed.
fn minimal_request(
    opts: &MkfsOptions,
    scan: Option<&Scan>,
    meta_profile: Profile,
    data_profile: Profile,
    slack: u64,
) -> Result<LayoutRequest> {
    let nodesize = opts.nodesize;
    let sizes_of = |items: &[TreeItem]| items.iter().map(|i| i.data.len()).collect::<Vec<_>>();
    let (data_bytes, fs_blocks, csum_blocks, mut ext_items) = match scan {
        Some(s) => {
            let mut sink = rootdir::CountingSink::default();
            let r = rootdir::write_data(s, &mut sink, &mut |_, _| {})?;
            // Every subvolume is a tree of its own, each at least one leaf.
            let fs_blocks = r.fs_trees.iter().map(|(_, items)| count_blocks(&sizes_of(items), nodesize)).sum::<Result<usize>>()?;
            (sink.next, fs_blocks, count_blocks(&sizes_of(&r.csum_items), nodesize)?, sizes_of(&r.extent_items))
        }
        None => (0, 1, 1, Vec::new()),
    };
    // Compressed extents are never split, so each data chunk boundary may waste
    // up to one extent's worth.
    let data_chunks = data_bytes.div_ceil(GIB).max(1);
    let waste = if scan.is_some_and(Scan::any_compression) { data_chunks * rootdir::MAX_UNCOMPRESSED } else { 0 };
    let data_need = data_bytes + waste + slack;
    let data_lens = chunk_lens(data_need, MIB, GIB);
    // Root, dev, uuid, data reloc, free space and block group trees take one or
    // two blocks each at this size; count them generously. Each subvolume adds
    // a root item and two refs (under 700 bytes) to the root tree and an item
    // to the uuid tree.
    let subvols = scan.map_or(0, |s| s.subvolumes().len());
    let small_trees = 8usize + (subvols * 800).div_ceil(crate::tree::builder::leaf_data_size(nodesize));
    let chunk_count = 2 + data_lens.len();
    ext_items.extend(std::iter::repeat_n(24usize, chunk_count));
    let mut ext_blocks = 1usize;
    for _ in 0..4 {
        let blocks = fs_blocks + csum_blocks + small_trees + ext_blocks;
        let mut items = ext_items.clone();
        items.extend(std::iter::repeat_n(33usize, blocks));
        ext_blocks = count_blocks(&items, nodesize)?;
    }
    let meta_bytes = (fs_blocks + csum_blocks + small_trees + ext_blocks) as u64 * nodesize as u64;
    // Headroom for the kernel's first transactions after mount (its global
    // block reserve and copy-on-write of the roots): a quarter, at least 2 MiB.
    let mut meta_len = (meta_bytes + (meta_bytes / 4).max(2 * MIB)).div_ceil(MIB) * MIB;
    if slack > 0 {
        // Free data space is useless without metadata space to create files in:
        // the kernel holds back its global block reserve (several MiB) first.
        meta_len += (slack / 10).max(8 * MIB).div_ceil(MIB) * MIB;
    }
    Ok(LayoutRequest {
        meta_profile,
        data_profile,
        sys_len: MIB,
        meta_lens: chunk_lens(meta_len, meta_len.min(256 * MIB), 256 * MIB),
        data_lens,
    })
}

/// Devices large enough for any layout, for planning `--shrink` before the
/// image sizes are known.
const UNBOUNDED: u64 = 1 << 50;

/// Most `--slack`: its space is laid out in chunks of at most 1 GiB (and a
/// tenth of it in metadata chunks), so an unbounded slack meant billions of
/// chunks planned in memory; 16 TiB is ext4's largest file besides.
const MAX_SLACK: u64 = 16 << 40;

/// `--shrink`: the minimal chunks and, per image, the end of its last dev extent.
fn shrink_plan(
    opts: &MkfsOptions,
    scan: Option<&Scan>,
    meta_profile: Profile,
    data_profile: Profile,
) -> Result<(Vec<PlannedChunk>, Vec<u64>)> {
    let ndevs = opts.images.len();
    let plan = |slack: u64| -> Result<(Vec<PlannedChunk>, Vec<u64>)> {
        let req = minimal_request(opts, scan, meta_profile, data_profile, slack)?;
        let chunks = plan_layout(&vec![UNBOUNDED; ndevs], &req)
            .ok_or_else(|| Error::Invalid("content too large to lay out (internal error)".into()))?;
        let mut ends = vec![DEVICE_RESERVED; ndevs];
        for c in &chunks {
            for &(devid, phys) in &c.stripes {
                let e = &mut ends[(devid - 1) as usize];
                *e = (*e).max(phys + c.stripe_size);
            }
        }
        Ok((chunks, ends))
    };
    let bounded = |b: u64| {
        if b > MAX_SLACK {
            return Err(Error::Invalid(format!("--slack of {b} bytes: at most {MAX_SLACK} (16 TiB); for a larger image give --size")));
        }
        plan(b)
    };
    match opts.slack {
        None => plan(0),
        Some(Slack::Bytes(b)) => bounded(b),
        Some(Slack::Percent(p)) => {
            let (_, ends) = plan(0)?;
            let base = ends.iter().copied().max().unwrap_or(0);
            bounded(base.saturating_mul(p as u64) / 100)
        }
    }
}

/// What `--print-size` reports: the size each image needs with `--shrink`.
#[derive(Clone, Debug, Serialize)]
pub struct SizeReport {
    pub images: Vec<DeviceSize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeviceSize {
    pub devid: u64,
    pub path: String,
    pub size: u64,
}

/// Dry run of `--shrink`: scan the root directory and compute the size each
/// image would have, writing nothing (the images need not exist).
pub fn print_size(opts: &MkfsOptions) -> Result<SizeReport> {
    let (meta_profile, data_profile, now) = validate(opts)?;
    let scan = scan_rootdir(opts, now)?;
    let (_, ends) = shrink_plan(opts, scan.as_ref(), meta_profile, data_profile)?;
    Ok(SizeReport {
        images: opts
            .images
            .iter()
            .zip(ends)
            .enumerate()
            .map(|(i, (p, size))| DeviceSize { devid: i as u64 + 1, path: p.display().to_string(), size })
            .collect(),
    })
}

/// Hands out tree block addresses in order, filling one chunk after another.
struct MetaAlloc {
    /// (start, end) of each chunk of one kind.
    chunks: Vec<(u64, u64)>,
    current: usize,
    next: u64,
    nodesize: u64,
}

impl MetaAlloc {
    fn new(chunks: Vec<(u64, u64)>, nodesize: u64) -> Self {
        let next = chunks.first().map(|c| c.0).unwrap_or(0);
        MetaAlloc { chunks, current: 0, next, nodesize }
    }

    fn take(&mut self, n: usize) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let c = self
                .chunks
                .get(self.current)
                .ok_or_else(|| Error::Invalid("metadata chunks are full (internal sizing error)".into()))?;
            if self.next + self.nodesize <= c.1 {
                out.push(self.next);
                self.next += self.nodesize;
            } else {
                self.current += 1;
                if let Some(c) = self.chunks.get(self.current) {
                    self.next = c.0;
                }
            }
        }
        Ok(out)
    }
}

type BuildResult = (u64, Vec<u64>, Vec<String>);

fn build_and_write(ctx: &Ctx<'_>, devs: &NewImages, scan: Option<&Scan>) -> Result<BuildResult> {
    let opts = ctx.opts;
    let nodesize = opts.nodesize;
    let features = opts.features;
    let writer = ChunkWriter { devs, map: ctx.chunks.iter().map(map_entry).collect() };
    let mut warnings = Vec::new();

    // ---- file data ----
    let (fs_trees, data_extent_items, csum_items, data_extents) = match scan {
        Some(s) => {
            warnings.extend(s.warnings.iter().cloned());
            let mut alloc = DataAlloc {
                writer: &writer,
                chunks: ctx
                    .chunks
                    .iter()
                    .filter(|c| c.flags & BLOCK_GROUP_DATA != 0)
                    .map(|c| (c.logical, c.logical + c.length, c.logical))
                    .collect(),
                current: 0,
            };
            let r = rootdir::write_data(s, &mut alloc, &mut |done, total| {
                if let Some(p) = &opts.progress.0 {
                    p(done, total)
                }
            })?;
            (r.fs_trees, r.extent_items, r.csum_items, r.extents)
        }
        None => {
            let items = vec![
                TreeItem::new(key(256, INODE_ITEM_KEY, 0), dir_inode(ctx.now, ctx.now)),
                TreeItem::new(key(256, INODE_REF_KEY, 256), inode_ref(0, b"..")),
            ];
            (vec![(FS_TREE_OBJECTID, items)], Vec::new(), Vec::new(), Vec::new())
        }
    };
    let fs_tree_ids: Vec<TreeId> = fs_trees.iter().map(|(id, _)| TreeId::Fs(*id)).collect();
    let fs_items_of = |id: u64| fs_trees.iter().find(|t| t.0 == id).map(|t| t.1.as_slice()).unwrap_or_default();

    // ---- fixed trees ----
    let chunk_items = |dev_used: &[u64]| -> Vec<TreeItem> {
        let mut v = Vec::new();
        for (i, size) in ctx.dev_sizes.iter().enumerate() {
            let devid = i as u64 + 1;
            v.push(TreeItem::new(key(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, devid), dev_item(ctx, devid, *size, dev_used[i]).as_bytes().to_vec()));
        }
        for c in &ctx.chunks {
            v.push(TreeItem::new(key(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, c.logical), chunk_item(c, &ctx.dev_uuids, opts.sectorsize)));
        }
        v
    };
    let mut dev_used = vec![0u64; ctx.dev_sizes.len()];
    let mut dev_tree = Vec::new();
    for i in 0..ctx.dev_sizes.len() {
        // Zeroed error counters, as the kernel creates them on first mount.
        dev_tree.push(TreeItem::new(key(DEV_STATS_OBJECTID, PERSISTENT_ITEM_KEY, i as u64 + 1), vec![0u8; 8 * DEV_STAT_VALUES_MAX]));
    }
    let mut dev_extents = Vec::new();
    for c in &ctx.chunks {
        for &(devid, phys) in &c.stripes {
            dev_used[(devid - 1) as usize] += c.stripe_size;
            let de = DevExtent {
                chunk_tree: CHUNK_TREE_OBJECTID.into(),
                chunk_objectid: FIRST_CHUNK_TREE_OBJECTID.into(),
                chunk_offset: c.logical.into(),
                length: c.stripe_size.into(),
                chunk_tree_uuid: ctx.chunk_uuid,
            };
            dev_extents.push(TreeItem::new(key(devid, DEV_EXTENT_KEY, phys), de.as_bytes().to_vec()));
        }
    }
    dev_extents.sort_by_key(|i| i.key);
    dev_tree.extend(dev_extents);
    let chunk_tree = chunk_items(&dev_used);

    let mut uuid_tree = vec![uuid_item(&ctx.fs_uuid, FS_TREE_OBJECTID)];
    uuid_tree.extend(ctx.subvols.iter().map(|(sv, uuid)| uuid_item(uuid, sv.id)));
    uuid_tree.sort_by_key(|i| i.key);
    let default_subvol = ctx.subvols.iter().find(|(sv, _)| sv.default).map(|(sv, _)| sv.id);
    let data_reloc_tree = vec![
        TreeItem::new(key(256, INODE_ITEM_KEY, 0), dir_inode(ctx.now, (0, 0))),
        TreeItem::new(key(256, INODE_REF_KEY, 256), inode_ref(0, b"..")),
    ];

    // The root tree needs the other roots; the extent tree needs every block's level,
    // so both come after the rest. Neither's shape depends on those values.
    let root_tree_items = |built: &std::collections::HashMap<TreeId, crate::tree::builder::BuiltTree>, extent: (u64, u8, u64)| {
        let bytes_of = |t: TreeId| built.get(&t).map(|b| b.blocks.len() as u64 * nodesize as u64).unwrap_or(0);
        let place = |t: TreeId| {
            let b = built.get(&t);
            (b.map(|b| b.root).unwrap_or(0), b.map(|b| b.level).unwrap_or(0), bytes_of(t))
        };
        let ri = |t: TreeId, dirid: u64, uuid: [u8; 16]| {
            let (bytenr, level, used) = place(t);
            root_item(bytenr, level, used, dirid, uuid, ctx.now, nodesize)
        };
        // "default" in the root tree directory names the subvolume mounted
        // without subvol=/subvolid=: the top level (offset -1, as mkfs.btrfs
        // writes it) unless a --subvol is the default.
        let default_location = match default_subvol {
            Some(id) => key(id, ROOT_ITEM_KEY, 0),
            None => key(FS_TREE_OBJECTID, ROOT_ITEM_KEY, u64::MAX),
        };
        let mut v = vec![
            TreeItem::new(key(EXTENT_TREE_OBJECTID, ROOT_ITEM_KEY, 0), {
                root_item(extent.0, extent.1, extent.2, 0, [0; 16], ctx.now, nodesize)
            }),
            TreeItem::new(key(DEV_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::Dev, 0, [0; 16])),
            TreeItem::new(key(FS_TREE_OBJECTID, INODE_REF_KEY, ROOT_TREE_DIR_OBJECTID), inode_ref(0, b"default")),
            TreeItem::new(key(FS_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::Fs(FS_TREE_OBJECTID), 256, ctx.fs_uuid)),
            TreeItem::new(key(ROOT_TREE_DIR_OBJECTID, INODE_ITEM_KEY, 0), dir_inode(ctx.now, ctx.now)),
            TreeItem::new(key(ROOT_TREE_DIR_OBJECTID, INODE_REF_KEY, ROOT_TREE_DIR_OBJECTID), inode_ref(0, b"..")),
            TreeItem::new(key(ROOT_TREE_DIR_OBJECTID, DIR_ITEM_KEY, name_hash(b"default")), {
                let mut d = DirItem {
                    location: default_location.to_disk(),
                    transid: GENERATION.into(),
                    data_len: 0.into(),
                    name_len: 7.into(),
                    dir_type: FT_DIR,
                }
                .as_bytes()
                .to_vec();
                d.extend_from_slice(b"default");
                d
            }),
            TreeItem::new(key(CSUM_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::Csum, 0, [0; 16])),
            TreeItem::new(key(UUID_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::Uuid, 0, [0; 16])),
        ];
        if features.free_space_tree {
            v.push(TreeItem::new(key(FREE_SPACE_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::FreeSpace, 0, [0; 16])));
        }
        if features.block_group_tree {
            v.push(TreeItem::new(key(BLOCK_GROUP_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::BlockGroup, 0, [0; 16])));
        }
        v.push(TreeItem::new(key(DATA_RELOC_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::DataReloc, 256, [0; 16])));
        // Each subvolume: its root item, and the pair of refs that say where it
        // is linked (ROOT_REF under the parent, ROOT_BACKREF under the child).
        for (sv, uuid) in &ctx.subvols {
            let item = subvol_root_item(place(TreeId::Fs(sv.id)), *uuid, sv.readonly, ctx.now, nodesize);
            let r = root_ref(sv.dirid, sv.index, &sv.name);
            v.push(TreeItem::new(key(sv.id, ROOT_ITEM_KEY, 0), item));
            v.push(TreeItem::new(key(sv.id, ROOT_BACKREF_KEY, sv.parent), r.clone()));
            v.push(TreeItem::new(key(sv.parent, ROOT_REF_KEY, sv.id), r));
        }
        v.sort_by_key(|i| i.key);
        v
    };
    // Trees in block layout order; the chunk tree lives in the system chunk.
    let mut meta_trees = vec![TreeId::Root, TreeId::Extent, TreeId::Dev];
    meta_trees.extend(fs_tree_ids.iter().copied());
    meta_trees.extend([TreeId::Csum, TreeId::Uuid, TreeId::DataReloc]);
    if features.free_space_tree {
        meta_trees.push(TreeId::FreeSpace);
    }
    if features.block_group_tree {
        meta_trees.push(TreeId::BlockGroup);
    }
    let sizes_of = |items: &[TreeItem]| items.iter().map(|i| i.data.len()).collect::<Vec<_>>();
    let fixed_count = |t: TreeId| -> Result<usize> {
        match t {
            TreeId::Chunk => count_blocks(&sizes_of(&chunk_tree), nodesize),
            TreeId::Dev => count_blocks(&sizes_of(&dev_tree), nodesize),
            TreeId::Fs(id) => count_blocks(&sizes_of(fs_items_of(id)), nodesize),
            TreeId::Csum => count_blocks(&sizes_of(&csum_items), nodesize),
            TreeId::Uuid => count_blocks(&sizes_of(&uuid_tree), nodesize),
            TreeId::DataReloc => count_blocks(&sizes_of(&data_reloc_tree), nodesize),
            // Root tree: one root item per tree plus the "default" dir entries; sizes are fixed.
            TreeId::Root => count_blocks(&sizes_of(&root_tree_items(&std::collections::HashMap::new(), (0, 0, 0))), nodesize),
            _ => Ok(1),
        }
    };

    let sys_chunks: Vec<(u64, u64)> =
        ctx.chunks.iter().filter(|c| c.flags & BLOCK_GROUP_SYSTEM != 0).map(|c| (c.logical, c.logical + c.length)).collect();
    let meta_chunks: Vec<(u64, u64)> =
        ctx.chunks.iter().filter(|c| c.flags & BLOCK_GROUP_METADATA != 0).map(|c| (c.logical, c.logical + c.length)).collect();

    // ---- fixed point: block counts of the extent, free space and block group trees ----
    let mut counts: std::collections::HashMap<TreeId, usize> = std::collections::HashMap::new();
    for &t in meta_trees.iter().chain([TreeId::Chunk].iter()) {
        counts.insert(t, fixed_count(t)?);
    }
    let mut iterations = 0;
    let (addrs, extent_tree, fst_tree, bg_items, chunk_used) = loop {
        iterations += 1;
        if iterations > 32 {
            return Err(Error::Invalid("tree sizes do not settle (internal error)".into()));
        }
        let mut addrs: Vec<(TreeId, Vec<u64>)> = Vec::new();
        let mut sys = MetaAlloc::new(sys_chunks.clone(), nodesize as u64);
        addrs.push((TreeId::Chunk, sys.take(counts[&TreeId::Chunk])?));
        let mut meta = MetaAlloc::new(meta_chunks.clone(), nodesize as u64);
        for &t in &meta_trees {
            addrs.push((t, meta.take(counts[&t])?));
        }
        // Used bytes per chunk.
        let mut used: Vec<u64> = vec![0; ctx.chunks.len()];
        let chunk_of = |a: u64| ctx.chunks.iter().position(|c| c.logical <= a && a < c.logical + c.length);
        for (_, list) in &addrs {
            for &a in list {
                if let Some(i) = chunk_of(a) {
                    used[i] += nodesize as u64;
                }
            }
        }
        for &(a, len) in &data_extents {
            if let Some(i) = chunk_of(a) {
                used[i] += len;
            }
        }
        let bg_items: Vec<TreeItem> = ctx
            .chunks
            .iter()
            .zip(&used)
            .map(|(c, &u)| {
                let bg = BlockGroupItem { used: u.into(), chunk_objectid: FIRST_CHUNK_TREE_OBJECTID.into(), flags: c.flags.into() };
                TreeItem::new(key(c.logical, BLOCK_GROUP_ITEM_KEY, c.length), bg.as_bytes().to_vec())
            })
            .collect();
        let mut ext = Vec::new();
        if !features.block_group_tree {
            ext.extend(bg_items.iter().cloned());
        }
        for (t, list) in &addrs {
            for &a in list {
                // Skinny metadata: the key offset is the block's level, filled in below.
                ext.push(TreeItem::new(key(a, METADATA_ITEM_KEY, 0), metadata_extent_item(t.objectid())));
            }
        }
        ext.extend(data_extent_items.iter().cloned());
        // Free space: everything allocated sits at the start of each chunk, except
        // data, which may leave unused tails where a compressed extent did not fit.
        let mut fst = Vec::new();
        if features.free_space_tree {
            for (ci, c) in ctx.chunks.iter().enumerate() {
                let mut taken: Vec<(u64, u64)> = Vec::new();
                for (_, list) in &addrs {
                    taken.extend(list.iter().filter(|&&a| chunk_of(a) == Some(ci)).map(|&a| (a, nodesize as u64)));
                }
                taken.extend(data_extents.iter().filter(|e| chunk_of(e.0) == Some(ci)).copied());
                taken.sort();
                let mut free = Vec::new();
                let mut pos = c.logical;
                for (a, l) in taken {
                    if a > pos {
                        free.push((pos, a - pos));
                    }
                    pos = pos.max(a + l);
                }
                if pos < c.logical + c.length {
                    free.push((pos, c.logical + c.length - pos));
                }
                let info = FreeSpaceInfo { extent_count: (free.len() as u32).into(), flags: 0.into() };
                fst.push(TreeItem::new(key(c.logical, FREE_SPACE_INFO_KEY, c.length), info.as_bytes().to_vec()));
                for (s, l) in free {
                    fst.push(TreeItem::new(key(s, FREE_SPACE_EXTENT_KEY, l), Vec::new()));
                }
            }
        }
        let mut new_counts = counts.clone();
        new_counts.insert(TreeId::Extent, count_blocks(&sizes_of(&ext), nodesize)?);
        if features.free_space_tree {
            new_counts.insert(TreeId::FreeSpace, count_blocks(&sizes_of(&fst), nodesize)?);
        }
        if features.block_group_tree {
            new_counts.insert(TreeId::BlockGroup, count_blocks(&sizes_of(&bg_items), nodesize)?);
        }
        if new_counts == counts {
            break (addrs, ext, fst, bg_items, used);
        }
        counts = new_counts;
    };

    // ---- build every tree ----
    // Every block mkfs seals passes the kernel's tree-checker rules (the
    // incompat bits they look at: skinny metadata, never mixed groups).
    let format = crate::tree::leaf::BlockFormat::new(nodesize, opts.csum, ctx.fsid, ctx.chunk_uuid)?
        .checked(opts.sectorsize, INCOMPAT_MIXED_BACKREF | INCOMPAT_EXTENDED_IREF | INCOMPAT_SKINNY_METADATA);
    let params = |owner: u64| BlockParams { format, generation: GENERATION, owner };
    let addr_of = |t: TreeId| addrs.iter().find(|a| a.0 == t).map(|a| a.1.clone()).unwrap_or_default();
    let mut built: std::collections::HashMap<TreeId, crate::tree::builder::BuiltTree> = std::collections::HashMap::new();
    // Each tree's blocks go to the images as they are made and only their
    // addresses and levels are kept: holding every block of every tree until
    // the end doubled the peak memory of a large --rootdir. Nothing is
    // reachable before the superblocks, written last after a flush.
    let write_out = |items: &[TreeItem], params: &BlockParams, addrs: &[u64]| -> Result<crate::tree::builder::BuiltTree> {
        let mut blocks = Vec::new();
        let (root, level) = crate::tree::builder::build_tree_into(items, params, addrs, &mut |a, l, bytes| {
            writer.write(a, &bytes)?;
            blocks.push((a, l, Vec::new()));
            Ok(())
        })?;
        Ok(crate::tree::builder::BuiltTree { root, level, blocks })
    };
    let mut simple: Vec<(TreeId, &[TreeItem])> = vec![(TreeId::Chunk, &chunk_tree), (TreeId::Dev, &dev_tree)];
    simple.extend(fs_trees.iter().map(|(id, items)| (TreeId::Fs(*id), items.as_slice())));
    simple.extend([
        (TreeId::Csum, csum_items.as_slice()),
        (TreeId::Uuid, &uuid_tree),
        (TreeId::DataReloc, &data_reloc_tree),
        (TreeId::FreeSpace, &fst_tree),
        (TreeId::BlockGroup, &bg_items),
    ]);
    for (t, items) in simple {
        if (t == TreeId::FreeSpace && !features.free_space_tree) || (t == TreeId::BlockGroup && !features.block_group_tree) {
            continue;
        }
        built.insert(t, write_out(items, &params(t.objectid()), &addr_of(t))?);
    }
    // Levels of every block, for the skinny METADATA_ITEM offsets. Root and extent
    // trees: their levels follow from their (already planned) shapes.
    let root_plan = {
        let probe = root_tree_items(&built, (0, 0, 0));
        crate::tree::builder::plan_tree(&sizes_of(&probe), nodesize)?
    };
    if root_plan.block_count() != counts[&TreeId::Root] {
        return Err(Error::Invalid("root tree size estimate was wrong (internal error)".into()));
    }
    let ext_plan = crate::tree::builder::plan_tree(&sizes_of(&extent_tree), nodesize)?;
    let mut levels: std::collections::HashMap<u64, u8> = std::collections::HashMap::new();
    for b in built.values() {
        for (a, l, _) in &b.blocks {
            levels.insert(*a, *l);
        }
    }
    let plan_levels = |plan: &crate::tree::builder::TreePlan, list: &[u64], levels: &mut std::collections::HashMap<u64, u8>| {
        let mut i = 0;
        for _ in &plan.leaves {
            if let Some(&a) = list.get(i) {
                levels.insert(a, 0);
            }
            i += 1;
        }
        for (lvl, nodes) in plan.nodes.iter().enumerate() {
            for _ in nodes {
                if let Some(&a) = list.get(i) {
                    levels.insert(a, lvl as u8 + 1);
                }
                i += 1;
            }
        }
    };
    plan_levels(&root_plan, &addr_of(TreeId::Root), &mut levels);
    plan_levels(&ext_plan, &addr_of(TreeId::Extent), &mut levels);
    let mut extent_tree = extent_tree;
    for it in extent_tree.iter_mut() {
        if it.key.item_type == METADATA_ITEM_KEY {
            it.key.offset = levels.get(&it.key.objectid).copied().unwrap_or(0) as u64;
        }
    }
    extent_tree.sort_by_key(|i| i.key);
    let ext_built = write_out(&extent_tree, &params(EXTENT_TREE_OBJECTID), &addr_of(TreeId::Extent))?;
    let ext_info = (ext_built.root, ext_built.level, ext_built.blocks.len() as u64 * nodesize as u64);
    built.insert(TreeId::Extent, ext_built);
    let root_items = root_tree_items(&built, ext_info);
    built.insert(TreeId::Root, write_out(&root_items, &params(ROOT_TREE_OBJECTID), &addr_of(TreeId::Root))?);

    // ---- every tree block is written: sync, then superblocks ----
    devs.sync()?;

    let bytes_used: u64 = chunk_used.iter().sum();
    let get = |t: TreeId| built.get(&t).map(|b| (b.root, b.level)).unwrap_or((0, 0));
    let (root, root_level) = get(TreeId::Root);
    let (chunk_root, chunk_level) = get(TreeId::Chunk);
    let mut sys_array = Vec::new();
    for c in ctx.chunks.iter().filter(|c| c.flags & BLOCK_GROUP_SYSTEM != 0) {
        sys_array.extend_from_slice(key(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, c.logical).to_disk().as_bytes());
        sys_array.extend_from_slice(&chunk_item(c, &ctx.dev_uuids, opts.sectorsize));
    }
    if sys_array.len() > SYSTEM_CHUNK_ARRAY_SIZE {
        return Err(Error::Unsupported("system chunk array overflow".into()));
    }
    let mut incompat = INCOMPAT_MIXED_BACKREF | INCOMPAT_EXTENDED_IREF | INCOMPAT_SKINNY_METADATA;
    if features.no_holes {
        incompat |= INCOMPAT_NO_HOLES;
    }
    if nodesize > 4096 {
        incompat |= INCOMPAT_BIG_METADATA;
    }
    if ctx.chunks.iter().map(|c| c.profile).any(|p| matches!(p, Profile::Raid1C3 | Profile::Raid1C4)) {
        incompat |= INCOMPAT_RAID1C34;
    }
    if scan.is_some_and(|s| s.uses_compression(Compression::Lzo)) {
        incompat |= INCOMPAT_COMPRESS_LZO;
    }
    if scan.is_some_and(|s| s.uses_compression(Compression::Zstd)) {
        incompat |= INCOMPAT_COMPRESS_ZSTD;
    }
    // As mkfs.btrfs and `btrfs subvolume set-default` do: older kernels must
    // not mount the top level when another subvolume is the default.
    if default_subvol.is_some() {
        incompat |= INCOMPAT_DEFAULT_SUBVOL;
    }
    let mut compat_ro = 0;
    if features.free_space_tree {
        compat_ro |= COMPAT_RO_FREE_SPACE_TREE | COMPAT_RO_FREE_SPACE_TREE_VALID;
    }
    if features.block_group_tree {
        compat_ro |= COMPAT_RO_BLOCK_GROUP_TREE;
    }
    let total: u64 = ctx.dev_sizes.iter().sum();
    for (i, size) in ctx.dev_sizes.iter().enumerate() {
        let devid = i as u64 + 1;
        let mut sb = SuperBlock::new_zeroed();
        sb.fsid = ctx.fsid;
        sb.flags = SUPER_FLAG_WRITTEN.into();
        sb.magic = BTRFS_MAGIC;
        sb.generation = GENERATION.into();
        sb.root = root.into();
        sb.chunk_root = chunk_root.into();
        sb.total_bytes = total.into();
        sb.bytes_used = bytes_used.into();
        sb.root_dir_objectid = ROOT_TREE_DIR_OBJECTID.into();
        sb.num_devices = (ctx.dev_sizes.len() as u64).into();
        sb.sectorsize = opts.sectorsize.into();
        sb.nodesize = nodesize.into();
        sb.unused_leafsize = nodesize.into();
        sb.stripesize = opts.sectorsize.into();
        sb.sys_chunk_array_size = (sys_array.len() as u32).into();
        sb.chunk_root_generation = GENERATION.into();
        sb.compat_ro_flags = compat_ro.into();
        sb.incompat_flags = incompat.into();
        sb.csum_type = opts.csum.raw().into();
        sb.root_level = root_level;
        sb.chunk_root_level = chunk_level;
        sb.dev_item = dev_item(ctx, devid, *size, dev_used[i]);
        sb.label[..opts.label.len()].copy_from_slice(opts.label.as_bytes());
        // The uuid tree is complete: no rescan needed on first mount.
        sb.uuid_tree_generation = GENERATION.into();
        // metadata_uuid stays zero: it only means something with INCOMPAT_METADATA_UUID.
        sb.sys_chunk_array[..sys_array.len()].copy_from_slice(&sys_array);
        let b = &mut sb.super_roots[0];
        let set = |t: TreeId| get(t);
        (b.tree_root, b.tree_root_gen, b.tree_root_level) = (root.into(), GENERATION.into(), root_level);
        (b.chunk_root, b.chunk_root_gen, b.chunk_root_level) = (chunk_root.into(), GENERATION.into(), chunk_level);
        let (a, l) = set(TreeId::Extent);
        (b.extent_root, b.extent_root_gen, b.extent_root_level) = (a.into(), GENERATION.into(), l);
        let (a, l) = set(TreeId::Fs(FS_TREE_OBJECTID));
        (b.fs_root, b.fs_root_gen, b.fs_root_level) = (a.into(), GENERATION.into(), l);
        let (a, l) = set(TreeId::Dev);
        (b.dev_root, b.dev_root_gen, b.dev_root_level) = (a.into(), GENERATION.into(), l);
        let (a, l) = set(TreeId::Csum);
        (b.csum_root, b.csum_root_gen, b.csum_root_level) = (a.into(), GENERATION.into(), l);
        b.total_bytes = total.into();
        b.bytes_used = bytes_used.into();
        b.num_devices = (ctx.dev_sizes.len() as u64).into();
        for &off in &SUPER_MIRROR_OFFSETS {
            if off + SUPER_INFO_SIZE as u64 > *size {
                continue;
            }
            sb.bytenr = off.into();
            seal_super(&mut sb, opts.csum);
            devs.write_phys(devid, off, sb.as_bytes())?;
        }
    }
    devs.sync()?;
    Ok((bytes_used, chunk_used, warnings))
}

fn dev_item(ctx: &Ctx<'_>, devid: u64, size: u64, used: u64) -> DevItem {
    DevItem {
        devid: devid.into(),
        total_bytes: size.into(),
        bytes_used: used.into(),
        io_align: ctx.opts.sectorsize.into(),
        io_width: ctx.opts.sectorsize.into(),
        sector_size: ctx.opts.sectorsize.into(),
        dev_type: 0.into(),
        generation: 0.into(),
        start_offset: 0.into(),
        dev_group: 0.into(),
        seek_speed: 0,
        bandwidth: 0,
        uuid: ctx.dev_uuids.get((devid - 1) as usize).copied().unwrap_or([0; 16]),
        fsid: ctx.fsid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1G").unwrap(), GIB);
        assert_eq!(parse_size("512m").unwrap(), 512 * MIB);
        assert_eq!(parse_size("2KiB").unwrap(), 2048);
        assert!(parse_size("1Q").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn compress_args_parse() {
        let z = Some((Compression::Zstd, None));
        assert_eq!(parse_compress_arg("zstd").unwrap(), (None, z));
        assert_eq!(parse_compress_arg("zstd:3").unwrap(), (None, Some((Compression::Zstd, Some(3)))));
        assert_eq!(parse_compress_arg("zstd:a/b").unwrap(), (Some(PathBuf::from("a/b")), z));
        assert_eq!(parse_compress_arg("zlib:9:/a/").unwrap(), (Some(PathBuf::from("a")), Some((Compression::Zlib, Some(9)))));
        assert_eq!(parse_compress_arg("zstd:./3").unwrap(), (Some(PathBuf::from("3")), z));
        assert_eq!(parse_compress_arg("none:c").unwrap(), (Some(PathBuf::from("c")), None));
        for bad in ["gzip:a", "zlib:10:a", "lzo:1:a", "none:1:a", "zstd:../x"] {
            assert!(parse_compress_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn placement_skips_superblock_mirrors() {
        let s = place(60 * MIB, 8 * MIB, GIB).unwrap();
        assert_eq!(s, 64 * MIB + STRIPE_LEN);
        assert_eq!(place(MIB, 8 * MIB, GIB), Some(MIB));
        assert_eq!(place(MIB, GIB, GIB), None);
    }

    #[test]
    fn features_toggle() {
        let f = Features::default().apply("^no-holes,block-group-tree").unwrap();
        assert!(!f.no_holes && f.free_space_tree && f.block_group_tree);
        assert!(Features::default().apply("bogus").is_err());
        assert!(Features::default().apply("^free-space-tree,block-group-tree").is_err());
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    fn devs(n: usize, size: u64) -> Vec<DevModel> {
        (0..n).map(|i| DevModel { devid: i as u64 + 1, size, cursor: DEVICE_RESERVED }).collect()
    }

    #[test]
    fn profile_shapes() {
        let c = alloc_chunk(&mut devs(5, GIB), MIB, BLOCK_GROUP_DATA, Profile::Raid10, 256 * MIB).unwrap();
        assert_eq!((c.stripes.len(), c.sub_stripes, c.length), (4, 2, 256 * MIB));
        let c = alloc_chunk(&mut devs(3, GIB), MIB, BLOCK_GROUP_DATA, Profile::Raid0, 96 * MIB).unwrap();
        assert_eq!((c.stripes.len(), c.stripe_size, c.length), (3, 32 * MIB, 96 * MIB));
        let c = alloc_chunk(&mut devs(1, GIB), MIB, BLOCK_GROUP_METADATA, Profile::Dup, 16 * MIB).unwrap();
        assert_eq!(c.stripes, vec![(1, MIB), (1, 17 * MIB)]);
        // The second copy would cover the superblock copy at 64 MiB: it moves past it.
        let c = alloc_chunk(&mut devs(1, GIB), MIB, BLOCK_GROUP_METADATA, Profile::Dup, 40 * MIB).unwrap();
        assert_eq!(c.stripes, vec![(1, MIB), (1, 64 * MIB + STRIPE_LEN)]);
        let c = alloc_chunk(&mut devs(2, GIB), MIB, BLOCK_GROUP_SYSTEM, Profile::Raid1, 8 * MIB).unwrap();
        let on: Vec<u64> = c.stripes.iter().map(|s| s.0).collect();
        assert_eq!(on, vec![1, 2], "system raid1 must be on both devices");
        assert!(alloc_chunk(&mut devs(2, GIB), MIB, BLOCK_GROUP_DATA, Profile::Raid1C3, MIB).is_none());
    }

    #[test]
    fn big_content_gets_several_data_chunks() {
        assert_eq!(chunk_lens(0, 64 * MIB, GIB), vec![64 * MIB]);
        assert_eq!(chunk_lens(2500 * MIB, 64 * MIB, GIB), vec![GIB, GIB, 452 * MIB]);
    }
}
