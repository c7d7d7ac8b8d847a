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
//!
//! The files: `options` (what is asked, checked without reading a file),
//! `layout` (step 2 and the sizes of `--shrink`), `items` (what mkfs makes up
//! itself), `build` (steps 4 to 6), this one (steps 1 and 3, the summary).

use serde::Serialize;
use sha2::Digest;

use crate::error::{Error, Result};
use crate::format::ondisk::*;
use crate::format::Profile;
use crate::ops::rootdir::{self, Scan, ScanOptions};
pub(crate) use crate::volumes::create::MAX_IMAGE_END;
use crate::volumes::create::{self, NewImages};

mod build;
mod items;
mod layout;
mod options;

use build::{build_and_write, Ctx};
use items::GENERATION;
use layout::{plan_for_sizes, shrink_plan, MAX_SLACK};
pub use options::{
    parse_compress, parse_compress_arg, parse_features, parse_inode_flags, parse_size, parse_slack, Feature, Features, MkfsOptions,
    Progress, Slack,
};

/// What was made, for printing.
#[derive(Clone, Debug, Serialize)]
pub struct MkfsSummary {
    pub fsid: String,
    pub label: String,
    pub nodesize: u32,
    pub sectorsize: u32,
    pub csum: String,
    pub features: Vec<&'static str>,
    pub(crate) data_profile: String,
    pub(crate) metadata_profile: String,
    pub(crate) system_profile: String,
    pub total_bytes: u64,
    pub(crate) bytes_used: u64,
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
    pub(crate) uuid: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChunkSummary {
    pub kind: &'static str,
    pub profile: String,
    pub(crate) logical: u64,
    pub length: u64,
    pub(crate) used: u64,
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
    pub(crate) data_copied_bytes: u64,
    pub(crate) data_written_bytes: u64,
    pub subvolumes: Vec<SubvolSummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SubvolSummary {
    pub id: u64,
    /// Relative to the root directory.
    pub path: String,
    pub parent: u64,
    pub(crate) uuid: String,
    pub readonly: bool,
    pub default: bool,
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

// ---------------------------------------------------------------------------
// Writing through the planned chunk map.

// ---------------------------------------------------------------------------
// Validation of images.

// ---------------------------------------------------------------------------
// Item makers.

// ---------------------------------------------------------------------------

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
pub(super) fn validate(opts: &MkfsOptions) -> Result<(Profile, Profile, (u64, u32))> {
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
        crate::volumes::alloc::shape(p, ndevs).map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(format!("{what}: {m}")),
            Error::Unsupported(_) => Error::Unsupported(format!("mkfs with profile {p}")),
            other => other,
        })?;
    }
    if let Some((i, j)) = crate::volumes::create::same_file_twice(&opts.images) {
        let (a, b) = (&opts.images[i], &opts.images[j]);
        return Err(Error::Invalid(if a == b {
            format!("{} given twice", a.display())
        } else {
            format!("{} and {} are one file, given twice", a.display(), b.display())
        }));
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

    // ---- open images (their lengths change only once a layout fits) ----
    // Before the root directory is scanned: an image that is missing, holds
    // a filesystem or is locked is refused at once, not after a scan of
    // a million files; and one created here is already there to be left out
    // of the scan when it lies inside the root directory.
    let devs = NewImages::open(&opts.images, opts.size.is_some() || opts.shrink, opts.force, opts.offset)?;
    if opts.shrink {
        devs.allow_cut();
    }
    for (p, &len) in opts.images.iter().zip(devs.file_lens()) {
        if opts.offset > 0 && len <= opts.offset && opts.size.is_none() && !opts.shrink {
            return Err(Error::Invalid(format!("{}: {len} bytes long, nothing after --offset {}", p.display(), opts.offset)));
        }
    }
    let scan = scan_rootdir(opts, now)?;
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
        spill_bytes: opts.spill_bytes,
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

/// What `--print-size` reports: the size each image needs with `--shrink`.
#[derive(Clone, Debug, Serialize)]
pub struct SizeReport {
    pub images: Vec<DeviceSize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeviceSize {
    pub(crate) devid: u64,
    pub(crate) path: String,
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
