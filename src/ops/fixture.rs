//! `btrs fixture`: deterministic clean and damaged images for tests.
//!
//! Every fixture is made the way a user would make it, then hurt the way a
//! real fault would hurt it:
//! 1. content is generated from the seed (a small PRNG) into a staging
//!    directory with fixed modes and times;
//! 2. `mkfs` copies it in (`rootdir`) with an fsid derived from name and seed
//!    and a fixed timestamp, so two runs give identical bytes;
//! 3. damage goes through the chunk map: the physical address of one copy is
//!    found with [`Volume::locate`](crate::volumes::Volume::locate) and the
//!    image file is written there with plain file I/O, like a bad disk or a
//!    racing direct-IO writer would leave it;
//! 4. `manifest.json` records the files and exactly what `btrs scrub` must find.

use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::format::compress::Compression;
use crate::format::items::FileExtentKind;
use crate::format::ondisk::{FS_TREE_OBJECTID, INODE_NODATACOW, INODE_NODATASUM, SUPER_INFO_SIZE};
use crate::format::{CsumType, Profile};
use crate::fs::Filesystem;
use crate::ops::mkfs::{mkfs, MkfsOptions};
use crate::volumes::OpenOptions;

/// Every image is this big (sparse): room for the 64 MiB superblock copy.
const IMAGE_SIZE: u64 = 128 << 20;
/// The second superblock copy.
const SUPER_MIRROR_1: u64 = 64 << 20;
/// Every timestamp mkfs makes up, and the base of the generated files' times
/// (2023-11-14T22:13:20Z).
const EPOCH: u64 = 1_700_000_000;
const SECTOR: u64 = 4096;
/// The staging directory inside DIR when memory cannot hold it; removed when the images are made.
const STAGING: &str = ".fixture-rootdir";
/// Preferred parent of the staging directory: creating thousands of files on a
/// busy disk costs seconds, in memory milliseconds. Nothing of its path reaches the image.
const MEMORY_STAGING_PARENT: &str = "/dev/shm";

/// What the content generator makes besides the common files.
#[derive(Clone, Copy, Debug)]
enum Extra {
    None,
    /// This many small files of random sizes in nested directories.
    ManyFiles(usize),
    /// This many empty files in one directory (many leaves under a 4K nodesize).
    DeepTree(usize),
}

/// The harm done after mkfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    None,
    /// Two sectors of the nodatasum file differ between mirror 1 and 2.
    NodatasumMismatch,
    /// One sector of checksummed data bad in mirror 2.
    CsumError,
    /// One sector of checksummed data changed identically in every copy.
    StaleCsum,
    /// Copy 1 of the fs tree root block corrupted.
    MetadataError,
    /// The 64 MiB superblock copy of devid 2 corrupted.
    SuperError,
    /// One sector of the nodatasum file differs in copy 3 of 3.
    Majority,
    /// dev2.img deleted.
    Degraded,
}

struct Spec {
    name: &'static str,
    description: &'static str,
    devices: usize,
    data: Profile,
    metadata: Profile,
    csum: CsumType,
    nodesize: u32,
    compress: Option<(Compression, Option<i32>)>,
    extra: Extra,
    damage: Damage,
}

const fn spec(name: &'static str, description: &'static str, devices: usize, profile: Profile, damage: Damage) -> Spec {
    Spec {
        name,
        description,
        devices,
        data: profile,
        metadata: profile,
        csum: CsumType::Crc32c,
        nodesize: 16384,
        compress: None,
        extra: Extra::None,
        damage,
    }
}

const fn with_csum(mut s: Spec, csum: CsumType) -> Spec {
    s.csum = csum;
    s
}

const SPECS: &[Spec] = &[
    spec("raid1-clean", "two devices, data and metadata raid1, no damage", 2, Profile::Raid1, Damage::None),
    spec("dup-clean", "one device, data and metadata dup, no damage", 1, Profile::Dup, Damage::None),
    spec("raid1c3-clean", "three devices, data and metadata raid1c3, no damage", 3, Profile::Raid1C3, Damage::None),
    with_csum(
        spec("raid1-csum-crc32c", "raid1-every-csum family: raid1 with crc32c checksums, no damage", 2, Profile::Raid1, Damage::None),
        CsumType::Crc32c,
    ),
    with_csum(
        spec("raid1-csum-xxhash", "raid1-every-csum family: raid1 with xxhash64 checksums, no damage", 2, Profile::Raid1, Damage::None),
        CsumType::Xxhash64,
    ),
    with_csum(
        spec("raid1-csum-sha256", "raid1-every-csum family: raid1 with sha256 checksums, no damage", 2, Profile::Raid1, Damage::None),
        CsumType::Sha256,
    ),
    with_csum(
        spec("raid1-csum-blake2", "raid1-every-csum family: raid1 with blake2b checksums, no damage", 2, Profile::Raid1, Damage::None),
        CsumType::Blake2b256,
    ),
    Spec {
        compress: Some((Compression::Zstd, Some(3))),
        ..spec("raid1-compressed", "raid1, file data zstd-compressed where it shrinks, no damage", 2, Profile::Raid1, Damage::None)
    },
    Spec {
        nodesize: 4096,
        extra: Extra::DeepTree(4000),
        ..spec(
            "raid1-deep-tree",
            "raid1, nodesize 4K, 4000 entries in one directory: fs tree of 3+ levels, no damage",
            2,
            Profile::Raid1,
            Damage::None,
        )
    },
    Spec {
        extra: Extra::ManyFiles(1500),
        ..spec(
            "raid1-many-files",
            "raid1, 1500 small files (inline and regular) in nested directories, no damage",
            2,
            Profile::Raid1,
            Damage::None,
        )
    },
    spec(
        "raid1-nodatasum-mismatch",
        "raid1, two sectors of the nodatasum file differ between the copies (a direct-IO race): mirror_mismatch on both copies",
        2,
        Profile::Raid1,
        Damage::NodatasumMismatch,
    ),
    spec("raid1-csum-error", "raid1, one sector of checksummed data bad in copy 2: csum", 2, Profile::Raid1, Damage::CsumError),
    spec(
        "raid1-stale-csum",
        "raid1, one sector of checksummed data changed the same way in both copies: csum_all_copies",
        2,
        Profile::Raid1,
        Damage::StaleCsum,
    ),
    spec(
        "raid1-metadata-error",
        "raid1, copy 1 of the fs tree root block corrupted: csum (metadata)",
        2,
        Profile::Raid1,
        Damage::MetadataError,
    ),
    spec("raid1-super-error", "raid1, the 64 MiB superblock copy of devid 2 corrupted: super", 2, Profile::Raid1, Damage::SuperError),
    spec(
        "raid1c3-majority",
        "raid1c3, one sector of the nodatasum file differs in copy 3 of 3: mirror_mismatch on copy 3 only",
        3,
        Profile::Raid1C3,
        Damage::Majority,
    ),
    spec("raid1-degraded", "raid1 with dev2.img deleted: open with --degraded; read (device missing)", 2, Profile::Raid1, Damage::Degraded),
];

/// Name and one-line description of every fixture.
pub fn list() -> Vec<(&'static str, &'static str)> {
    SPECS.iter().map(|s| (s.name, s.description)).collect()
}

/// A group: its name, a description, and (subdirectory, fixture) members.
pub(crate) type Group = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

/// Groups of fixtures made together, each member in `DIR/<suffix>/`.
pub const GROUPS: &[Group] = &[(
    "raid1-every-csum",
    "one raid1 fixture per checksum type, in DIR/crc32c, DIR/xxhash, DIR/sha256, DIR/blake2",
    &[("crc32c", "raid1-csum-crc32c"), ("xxhash", "raid1-csum-xxhash"), ("sha256", "raid1-csum-sha256"), ("blake2", "raid1-csum-blake2")],
)];

/// Make every member of group `name` under `dir`; `None` when `name` is not a group.
pub fn generate_group(name: &str, dir: &Path, seed: u64) -> Option<Result<Vec<Manifest>>> {
    let (_, _, members) = GROUPS.iter().find(|(g, _, _)| *g == name)?;
    Some(members.iter().map(|(sub, member)| generate(member, &dir.join(sub), seed)).collect())
}

/// One file of the fixture, as the kernel should show it.
#[derive(Clone, Debug, Serialize)]
pub struct ManifestFile {
    /// Relative to the filesystem root, no leading slash (as scrub names files).
    pub(crate) path: String,
    /// "file", "dir" or "symlink".
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    /// Bytes (files), target length (symlinks), 0 (directories).
    pub(crate) size: u64,
    /// Of the file's content; null for directories and symlinks.
    pub(crate) sha256: Option<String>,
    /// Permission bits (st_mode & 0o7777).
    pub(crate) mode: u32,
    pub(crate) mtime: u64,
    pub(crate) mtime_nsec: u32,
    /// Symlink target.
    pub(crate) target: Option<String>,
    /// Inode flags: "nodatasum", "nodatacow".
    pub(crate) flags: Vec<&'static str>,
}

/// A finding `btrs scrub --json` must report (the fields compared; others ignored).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ExpectedFinding {
    pub(crate) kind: &'static str,
    pub(crate) devid: Option<u64>,
    pub(crate) logical: Option<u64>,
    /// 1-based copy (superblock copy index + 1 for "super").
    pub(crate) mirror: Option<u64>,
    /// The paths scrub names (every name of the file; none for metadata).
    pub(crate) paths: Vec<String>,
    pub(crate) file_offset: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Profiles {
    pub(crate) data: &'static str,
    pub(crate) metadata: &'static str,
    pub(crate) system: &'static str,
}

/// `DIR/manifest.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Manifest {
    pub name: &'static str,
    pub(crate) seed: u64,
    pub(crate) description: &'static str,
    pub(crate) fsid: String,
    pub(crate) csum: &'static str,
    pub(crate) nodesize: u32,
    pub(crate) sectorsize: u32,
    pub(crate) compress: Option<&'static str>,
    pub(crate) profiles: Profiles,
    /// Bytes of every image file.
    pub(crate) image_size: u64,
    /// Image files present in DIR, devid 1, 2, ... (a missing one is skipped).
    pub devices: Vec<String>,
    /// Image files of the filesystem deliberately not written (deleted after mkfs).
    pub missing_devices: Vec<String>,
    /// Levels of the top-level subvolume's tree (1 = the root is a leaf).
    pub(crate) fs_tree_levels: u8,
    pub files: Vec<ManifestFile>,
    pub expected_findings: Vec<ExpectedFinding>,
    /// Exit code of `btrs scrub` (with `--degraded` when devices are missing).
    pub(crate) expected_exit: i32,
    pub(crate) clean: bool,
}

/// SplitMix64: tiny, fast and the same everywhere, so content depends on the seed alone.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    /// Compressible text: lines made of a small vocabulary.
    fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: [&str; 16] = [
            "btrfs",
            "extent",
            "chunk",
            "stripe",
            "mirror",
            "scrub",
            "leaf",
            "node",
            "csum",
            "inode",
            "subvolume",
            "device",
            "superblock",
            "transaction",
            "generation",
            "block",
        ];
        let mut v = Vec::with_capacity(n + 64);
        let mut line = 0u64;
        while v.len() < n {
            v.extend_from_slice(format!("{line:06} ").as_bytes());
            for _ in 0..(4 + self.below(8)) {
                v.extend_from_slice(WORDS[self.below(16) as usize].as_bytes());
                v.push(b' ');
            }
            v.push(b'\n');
            line += 1;
        }
        v.truncate(n);
        v
    }
}

#[derive(Clone, Debug)]
enum Node {
    Dir,
    /// Content and the (offset, len) ranges actually written (the rest are holes).
    File {
        data: Vec<u8>,
        written: Option<Vec<(u64, u64)>>,
    },
    Symlink(String),
}

#[derive(Clone, Debug)]
struct Entry {
    path: String,
    node: Node,
    mode: u32,
    mtime: (u64, u32),
    atime: (u64, u32),
    flags: u64,
}

/// The nodatasum file the mismatch fixtures damage.
const NODATASUM_FILE: &str = "nodatasum/raw.bin";
/// The checksummed file the csum fixtures damage.
const CSUM_FILE: &str = "data/random.bin";

fn content(seed: u64, extra: Extra) -> Vec<Entry> {
    let mut r = Prng(seed);
    let mut out: Vec<Entry> = Vec::new();
    let mut add = |r: &mut Prng, path: &str, node: Node, mode: u32, flags: u64| {
        let mtime = (EPOCH - 86_400 * 30 + r.below(86_400 * 30), r.below(1_000_000_000) as u32);
        let atime = (mtime.0 + r.below(86_400), r.below(1_000_000_000) as u32);
        out.push(Entry { path: path.to_string(), node, mode, mtime, atime, flags });
    };
    let file = |data: Vec<u8>| Node::File { data, written: None };
    let readme = format!("btrs fixture content, seed {seed}.\nGenerated; every byte follows from the seed.\n").into_bytes();
    add(&mut r, "README", file(readme), 0o644, 0);
    add(&mut r, "data", Node::Dir, 0o755, 0);
    let small = r.bytes(3000);
    add(&mut r, "data/small.bin", file(small), 0o644, 0);
    let random = r.bytes(192 * 1024);
    add(&mut r, CSUM_FILE, file(random), 0o644, 0);
    let text = r.text(256 * 1024);
    add(&mut r, "data/text.log", file(text), 0o640, 0);
    // 1 MiB with data at 0 and 512 KiB, holes elsewhere.
    let mut sparse = vec![0u8; 1 << 20];
    let a = r.bytes(64 * 1024);
    let b = r.bytes(64 * 1024);
    sparse[..a.len()].copy_from_slice(&a);
    sparse[512 * 1024..512 * 1024 + b.len()].copy_from_slice(&b);
    add(&mut r, "data/sparse.img", Node::File { data: sparse, written: Some(vec![(0, 65536), (512 * 1024, 65536)]) }, 0o600, 0);
    add(&mut r, "empty", file(Vec::new()), 0o600, 0);
    add(&mut r, "exec.sh", file(b"#!/bin/sh\necho fixture\n".to_vec()), 0o755, 0);
    add(&mut r, "link", Node::Symlink("data/small.bin".into()), 0o777, 0);
    add(&mut r, "nested", Node::Dir, 0o750, 0);
    add(&mut r, "nested/a", Node::Dir, 0o755, 0);
    add(&mut r, "nested/a/b", Node::Dir, 0o700, 0);
    let leaf = r.text(5000);
    add(&mut r, "nested/a/b/leaf.txt", file(leaf), 0o644, 0);
    add(&mut r, "nodatasum", Node::Dir, 0o755, 0);
    let raw = r.bytes(128 * 1024);
    add(&mut r, NODATASUM_FILE, file(raw), 0o644, INODE_NODATASUM);
    match extra {
        Extra::None => {}
        Extra::ManyFiles(n) => {
            add(&mut r, "many", Node::Dir, 0o755, 0);
            let dirs = 25;
            for d in 0..dirs {
                add(&mut r, &format!("many/d{d:02}"), Node::Dir, 0o755, 0);
            }
            for i in 0..n {
                // Mostly small (inline), some a few sectors (regular extents).
                let size = if r.below(4) == 0 { 2049 + r.below(12 * 1024) } else { r.below(2048) } as usize;
                let data = r.bytes(size);
                add(&mut r, &format!("many/d{:02}/f{i:05}", i % dirs), file(data), 0o644, 0);
            }
        }
        Extra::DeepTree(n) => {
            add(&mut r, "deep", Node::Dir, 0o755, 0);
            for i in 0..n {
                let tag = r.next() & 0xffff_ffff;
                add(&mut r, &format!("deep/entry-{i:05}-{tag:08x}"), file(Vec::new()), 0o644, 0);
            }
        }
    }
    out
}

fn io(path: &Path, op: &str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    let op = op.to_string();
    move |e| Error::io(path, op, e)
}

fn set_times(path: &Path, e: &Entry) -> Result<()> {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    let t = |(s, n): (u64, u32)| Timespec { tv_sec: s as i64, tv_nsec: n as _ };
    let times = Timestamps { last_access: t(e.atime), last_modification: t(e.mtime) };
    utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|err| Error::io(path, "utimensat", err.into()))
}

/// Write the entries under `root` with their modes and times.
fn stage(root: &Path, entries: &[Entry], root_entry: &Entry) -> Result<()> {
    std::fs::create_dir(root).map_err(io(root, "mkdir"))?;
    for e in entries {
        let p = root.join(&e.path);
        match &e.node {
            Node::Dir => std::fs::create_dir(&p).map_err(io(&p, "mkdir"))?,
            Node::File { data, written } => {
                let f = File::create(&p).map_err(io(&p, "create"))?;
                match written {
                    None => f.write_all_at(data, 0).map_err(io(&p, "write"))?,
                    Some(ranges) => {
                        for &(off, len) in ranges {
                            f.write_all_at(&data[off as usize..(off + len) as usize], off).map_err(io(&p, "write"))?;
                        }
                        f.set_len(data.len() as u64).map_err(io(&p, "truncate"))?;
                    }
                }
            }
            Node::Symlink(t) => std::os::unix::fs::symlink(t, &p).map_err(io(&p, "symlink"))?,
        }
        if !matches!(e.node, Node::Symlink(_)) {
            // Explicit, so the umask does not leak into the image.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).map_err(io(&p, "chmod"))?;
        }
    }
    // Times last, children before parents: creating an entry changes its directory's mtime.
    for e in entries.iter().rev() {
        set_times(&root.join(&e.path), e)?;
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(root_entry.mode)).map_err(io(root, "chmod"))?;
    set_times(root, root_entry)
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The fsid: the first 16 bytes of sha256("btrs-fixture" name seed), shaped as a v4 UUID.
fn fsid_for(name: &str, seed: u64) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"btrs-fixture\0");
    h.update(name.as_bytes());
    h.update(b"\0");
    h.update(seed.to_le_bytes());
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// Removes the staging directory however generation ends.
struct StagingGuard(PathBuf);

impl Drop for StagingGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A raw write to one image: what a fault would do.
struct Patch {
    /// The image file of the device, as the volume found it.
    image: PathBuf,
    physical: u64,
    bytes: Vec<u8>,
}

fn image_name(devid: u64) -> String {
    format!("dev{devid}.img")
}

/// Make fixture `name` in `dir` (created; must be missing or empty).
pub fn generate(name: &str, dir: &Path, seed: u64) -> Result<Manifest> {
    let spec = SPECS
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::NotFound(format!("fixture {name:?} (`btrs fixture list` names them)")))?;
    let created = match std::fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                // Never mix a fixture with older files (or clobber something else).
                return Err(Error::Invalid(format!("{}: directory is not empty", dir.display())));
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io(dir, "mkdir"))?;
            true
        }
        Err(e) => return Err(Error::io(dir, "readdir", e)),
    };
    let r = make_in(spec, dir, seed);
    if r.is_err() {
        // A half-made fixture must not pass for a whole one: remove what this run wrote.
        for d in 1..=spec.devices as u64 {
            let _ = std::fs::remove_file(dir.join(image_name(d)));
        }
        let _ = std::fs::remove_file(dir.join("manifest.json"));
        if created {
            let _ = std::fs::remove_dir(dir);
        }
    }
    r
}

fn make_in(spec: &'static Spec, dir: &Path, seed: u64) -> Result<Manifest> {
    let entries = content(seed, spec.extra);
    let root_entry = Entry { path: String::new(), node: Node::Dir, mode: 0o755, mtime: (EPOCH, 0), atime: (EPOCH, 0), flags: 0 };
    let in_memory = Path::new(MEMORY_STAGING_PARENT).join(format!(
        "btrs-fixture-{}-{}-{}",
        std::process::id(),
        spec.name,
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    let mut staged = None;
    let memory = Path::new(MEMORY_STAGING_PARENT).is_dir().then_some(in_memory);
    for candidate in memory.into_iter().chain([dir.join(STAGING)]) {
        let guard = StagingGuard(candidate.clone());
        let in_dir = candidate.starts_with(dir);
        match stage(&candidate, &entries, &root_entry) {
            Ok(()) => {
                staged = Some((candidate, guard));
                break;
            }
            // No /dev/shm, or too small: stage inside DIR instead.
            Err(_) if !in_dir => drop(guard),
            Err(e) => return Err(e),
        }
    }
    let Some((staging, guard)) = staged else {
        return Err(Error::Invalid("no staging directory could be written".into()));
    };

    let images: Vec<PathBuf> = (1..=spec.devices as u64).map(|d| dir.join(image_name(d))).collect();
    let mut o = MkfsOptions::new(images.clone());
    o.size = Some(IMAGE_SIZE);
    o.data_profile = Some(spec.data);
    o.metadata_profile = Some(spec.metadata);
    o.csum = spec.csum;
    o.nodesize = spec.nodesize;
    o.label = spec.name.to_string();
    let fsid = fsid_for(spec.name, seed);
    o.fsid = Some(fsid);
    o.rootdir = Some(staging.clone());
    o.compress = spec.compress;
    o.timestamp = Some(EPOCH);
    o.fixed_ctime = true;
    // Owned by root whoever runs btrs, so images match across users and machines.
    o.ownership.all_root = true;
    o.inode_flags = entries.iter().filter(|e| e.flags != 0).map(|e| (PathBuf::from(&e.path), e.flags)).collect();
    let summary = mkfs(&o)?;
    drop(guard);

    let (patches, expected, levels) = plan_damage(spec, &images, &entries, seed)?;
    for p in &patches {
        let path = &p.image;
        crate::volumes::raw::patch(path, p.physical, &p.bytes)?;
    }
    let mut missing = Vec::new();
    if spec.damage == Damage::Degraded {
        let p = dir.join(image_name(2));
        std::fs::remove_file(&p).map_err(io(&p, "remove"))?;
        missing.push(image_name(2));
    }

    let files = entries
        .iter()
        .map(|e| {
            let (kind, size, sha, target) = match &e.node {
                Node::Dir => ("dir", 0, None, None),
                Node::File { data, .. } => ("file", data.len() as u64, Some(sha256_hex(data)), None),
                Node::Symlink(t) => ("symlink", t.len() as u64, None, Some(t.clone())),
            };
            let mut flags = Vec::new();
            if e.flags & INODE_NODATASUM != 0 {
                flags.push("nodatasum");
            }
            if e.flags & INODE_NODATACOW != 0 {
                flags.push("nodatacow");
            }
            ManifestFile {
                path: e.path.clone(),
                kind,
                size,
                sha256: sha,
                mode: e.mode,
                mtime: e.mtime.0,
                mtime_nsec: e.mtime.1,
                target,
                flags,
            }
        })
        .collect();
    let clean = expected.is_empty();
    let m = Manifest {
        name: spec.name,
        seed,
        description: spec.description,
        fsid: summary.fsid.clone(),
        csum: spec.csum.name(),
        nodesize: spec.nodesize,
        sectorsize: SECTOR as u32,
        compress: spec.compress.map(|(c, _)| c.name()),
        profiles: Profiles { data: spec.data.name(), metadata: spec.metadata.name(), system: spec.metadata.name() },
        image_size: IMAGE_SIZE,
        devices: (1..=spec.devices as u64).map(image_name).filter(|n| !missing.contains(n)).collect(),
        missing_devices: missing,
        fs_tree_levels: levels,
        files,
        expected_findings: expected,
        expected_exit: if clean { 0 } else { 3 },
        clean,
    };
    let path = dir.join("manifest.json");
    let mut text = serde_json::to_vec_pretty(&m).map_err(|e| Error::Invalid(format!("manifest: {e}")))?;
    text.push(b'\n');
    std::fs::write(&path, text).map_err(io(&path, "write"))?;
    Ok(m)
}

/// Where file bytes live: the logical address of `file_offset` in `path`
/// (an uncompressed regular extent; the fixtures choose such files).
fn file_logical(fs: &Filesystem, path: &str, file_offset: u64) -> Result<u64> {
    let ent = fs.resolve(path)?;
    for (key_off, fe) in fs.file_extents(ent.id)? {
        if let FileExtentKind::Regular { disk_bytenr, offset, num_bytes, .. } = fe.kind {
            let inside = file_offset.checked_sub(key_off).filter(|&rel| rel < num_bytes);
            if let (0, false, Some(rel)) = (fe.compression, disk_bytenr == 0, inside) {
                if let Some(l) = disk_bytenr.checked_add(offset).and_then(|l| l.checked_add(rel)) {
                    return Ok(l);
                }
            }
        }
    }
    Err(Error::NotFound(format!("{path}: no uncompressed extent at file offset {file_offset}")))
}

/// Decide the raw writes and what scrub must report for them. The filesystem is
/// opened read-only and closed again before anything is written.
fn plan_damage(spec: &Spec, images: &[PathBuf], entries: &[Entry], seed: u64) -> Result<(Vec<Patch>, Vec<ExpectedFinding>, u8)> {
    let first = images.first().ok_or_else(|| Error::Invalid("fixture without devices".into()))?;
    let fs = Filesystem::open(&OpenOptions {
        image: first.clone(),
        devices: images.to_vec(),
        degraded: false,
        writable: false,
        ..Default::default()
    })?;
    let vol = fs.volume();
    let fs_root = fs.tree_root(FS_TREE_OBJECTID)?;
    let levels = fs_root.level + 1;
    if matches!(spec.extra, Extra::DeepTree(_)) && levels < 3 {
        return Err(Error::Invalid(format!("{}: fs tree has {levels} levels, the fixture promises 3 or more", spec.name)));
    }
    // Damage bytes follow from the seed too, so runs stay identical.
    let mut r = Prng(seed ^ 0xD4A4_6E00_5EED_0001);
    let content_of = |path: &str| -> Result<&[u8]> {
        match entries.iter().find(|e| e.path == path).map(|e| &e.node) {
            Some(Node::File { data, .. }) => Ok(data),
            _ => Err(Error::NotFound(format!("fixture file {path}"))),
        }
    };
    let mut patches = Vec::new();
    let mut expected = Vec::new();
    let data_finding = |kind: &'static str, logical: u64, mirror: usize, path: &str, off: u64| -> Result<ExpectedFinding> {
        let loc = vol.locate(logical, mirror)?;
        Ok(ExpectedFinding {
            kind,
            devid: Some(loc.devid),
            logical: Some(logical),
            mirror: Some(mirror as u64 + 1),
            paths: vec![path.to_string()],
            file_offset: Some(off),
        })
    };
    // A sector of `path` rewritten in copy `mirror` (0-based) with `bytes`.
    let sector_patch = |logical: u64, mirror: usize, bytes: Vec<u8>| -> Result<Patch> {
        let loc = vol.locate(logical, mirror)?;
        Ok(Patch { image: vol.device(loc.devid)?.path.clone(), physical: loc.physical, bytes })
    };
    // Original sector flipped: guaranteed to differ, the same in every copy it is applied to.
    let flipped = |path: &str, off: u64| -> Result<Vec<u8>> {
        let data = content_of(path)?;
        let s = data.get(off as usize..(off + SECTOR) as usize).ok_or_else(|| Error::Invalid(format!("{path}: too short")))?;
        Ok(s.iter().map(|b| b ^ 0x5a).collect())
    };
    match spec.damage {
        Damage::None | Damage::Degraded => {}
        Damage::NodatasumMismatch => {
            // The direct-IO race: copy 2 got the buffer's new bytes, copy 1 the old.
            for off in [4096, 65536] {
                let logical = file_logical(&fs, NODATASUM_FILE, off)?;
                patches.push(sector_patch(logical, 1, r.bytes(SECTOR as usize))?);
                for m in 0..2 {
                    expected.push(data_finding("mirror_mismatch", logical, m, NODATASUM_FILE, off)?);
                }
            }
        }
        Damage::Majority => {
            let off = 8192;
            let logical = file_logical(&fs, NODATASUM_FILE, off)?;
            patches.push(sector_patch(logical, 2, r.bytes(SECTOR as usize))?);
            expected.push(data_finding("mirror_mismatch", logical, 2, NODATASUM_FILE, off)?);
        }
        Damage::CsumError => {
            let off = 8192;
            let logical = file_logical(&fs, CSUM_FILE, off)?;
            patches.push(sector_patch(logical, 1, flipped(CSUM_FILE, off)?)?);
            expected.push(data_finding("csum", logical, 1, CSUM_FILE, off)?);
        }
        Damage::StaleCsum => {
            let off = 20480;
            let logical = file_logical(&fs, CSUM_FILE, off)?;
            let bytes = flipped(CSUM_FILE, off)?;
            for m in 0..vol.num_copies(logical)? {
                patches.push(sector_patch(logical, m, bytes.clone())?);
                expected.push(data_finding("csum_all_copies", logical, m, CSUM_FILE, off)?);
            }
        }
        Damage::MetadataError => {
            // Bytes inside the block (past the header), so only the checksum can tell.
            let loc = vol.locate(fs_root.bytenr, 0)?;
            patches.push(Patch { image: vol.device(loc.devid)?.path.clone(), physical: loc.physical + 1024, bytes: r.bytes(64) });
            expected.push(ExpectedFinding {
                kind: "csum",
                devid: Some(loc.devid),
                logical: Some(fs_root.bytenr),
                mirror: Some(1),
                paths: Vec::new(),
                file_offset: None,
            });
        }
        Damage::SuperError => {
            // Inside the checksummed part of the superblock (past the csum field).
            const AT: usize = 0x200;
            const _: () = assert!(AT + 64 <= SUPER_INFO_SIZE);
            let at = SUPER_MIRROR_1 + AT as u64;
            patches.push(Patch { image: vol.device(2)?.path.clone(), physical: at, bytes: r.bytes(64) });
            expected.push(ExpectedFinding {
                kind: "super",
                devid: Some(2),
                logical: None,
                mirror: Some(2),
                paths: Vec::new(),
                file_offset: None,
            });
        }
    }
    if spec.damage == Damage::Degraded {
        expected.push(ExpectedFinding { kind: "read", devid: Some(2), logical: None, mirror: None, paths: Vec::new(), file_offset: None });
    }
    Ok((patches, expected, levels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_content_is_deterministic() {
        let names: std::collections::BTreeSet<_> = SPECS.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), SPECS.len());
        let a = content(7, Extra::ManyFiles(50));
        let b = content(7, Extra::ManyFiles(50));
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_ne!(format!("{a:?}"), format!("{:?}", content(8, Extra::ManyFiles(50))));
    }

    #[test]
    fn fsid_depends_on_name_and_seed() {
        assert_ne!(fsid_for("a", 1), fsid_for("a", 2));
        assert_ne!(fsid_for("a", 1), fsid_for("b", 1));
        assert_eq!(fsid_for("a", 1), fsid_for("a", 1));
    }
}
