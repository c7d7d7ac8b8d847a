//! What mkfs is asked to make: options, features, and their checks (none
//! reads a file, so a request that can never work is a usage error).

use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::compress::Compression;
use crate::format::ondisk::*;
use crate::format::{CsumType, Profile};
use crate::ops::rootdir;

pub(super) const MIB: u64 = 1024 * 1024;
pub(super) const GIB: u64 = 1024 * MIB;

/// Optional on-disk features mkfs can choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Features {
    pub(crate) no_holes: bool,
    pub(crate) free_space_tree: bool,
    pub(crate) block_group_tree: bool,
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

    pub(super) fn names(self) -> Vec<&'static str> {
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
    pub(crate) images: Vec<PathBuf>,
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
    pub(crate) fixed_ctime: bool,
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
    /// Bytes of rootdir tree items (and of the list of files to copy) held
    /// in memory before they are sorted into unlinked temporary files in
    /// $TMPDIR; the image does not depend on it.
    pub spill_bytes: usize,
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
            spill_bytes: crate::ops::rootdir::SPILL_BUDGET,
            progress: Progress::default(),
        }
    }
}

/// Parse `--inode-flags FLAGS:PATH` (FLAGS: nodatacow, nodatasum, comma separated).
/// nodatacow implies nodatasum, as `chattr +C` gives both on the kernel.
pub fn parse_inode_flags(s: &(impl AsRef<std::ffi::OsStr> + ?Sized)) -> Result<(PathBuf, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let raw = s.as_ref().as_bytes();
    let s = crate::name::Name(raw);
    let at = raw.iter().position(|&b| b == b':').ok_or_else(|| Error::Invalid(format!("--inode-flags {s:?}: want FLAGS:PATH")))?;
    let (flags, path) = (&raw[..at], &raw[at + 1..]);
    let flags = std::str::from_utf8(flags).map_err(|_| Error::Invalid(format!("--inode-flags {s:?}: FLAGS are not text")))?;
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
    let start = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
    Ok((PathBuf::from(std::ffi::OsStr::from_bytes(&path[start..])), v))
}

/// Parse a size with an optional K/M/G/T/P/E suffix (binary units), e.g. `1G`, `512M`, `4096`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    // 0x…: a byte count in hex, no suffix (as offsets are often written).
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|_| Error::Invalid(format!("bad size {s:?}")));
    }
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
pub fn parse_compress_arg(s: &(impl AsRef<std::ffi::OsStr> + ?Sized)) -> Result<(Option<PathBuf>, rootdir::Compress)> {
    use std::os::unix::ffi::OsStrExt;
    let raw = s.as_ref().as_bytes();
    let s = crate::name::Name(raw);
    // ALGO and LEVEL are text; PATH any bytes.
    let split = |b: &'_ [u8]| -> Option<(Vec<u8>, Vec<u8>)> {
        let at = b.iter().position(|&c| c == b':')?;
        Some((b[..at].to_vec(), b[at + 1..].to_vec()))
    };
    let text = |b: &[u8]| {
        std::str::from_utf8(b).map(str::to_string).map_err(|_| Error::Invalid(format!("--compress {s:?}: ALGO and LEVEL are text")))
    };
    let (name, rest) = match split(raw) {
        Some((n, r)) => (text(&n)?, Some(r)),
        None => (text(raw)?, None),
    };
    let is_level = |v: &[u8]| std::str::from_utf8(v).is_ok_and(|v| v.parse::<i32>().is_ok());
    let (level, path) = match rest {
        None => (None, None),
        Some(r) if is_level(&r) => (Some(text(&r)?), None),
        Some(r) => match split(&r) {
            Some((l, p)) if is_level(&l) => (Some(text(&l)?), Some(p)),
            _ => (None, Some(r)),
        },
    };
    let path = path.map(|p| rootdir::relative_path(std::ffi::OsStr::from_bytes(&p), "--compress")).transpose()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("0x1000").unwrap(), 4096);
        assert_eq!(parse_size("0XfFfF").unwrap(), 65535);
        assert!(parse_size("0x").is_err());
        assert!(parse_size("0x1G").is_err());
        assert!(parse_size("0x10000000000000000").is_err());
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
    fn features_toggle() {
        let f = Features::default().apply("^no-holes,block-group-tree").unwrap();
        assert!(!f.no_holes && f.free_space_tree && f.block_group_tree);
        assert!(Features::default().apply("bogus").is_err());
        assert!(Features::default().apply("^free-space-tree,block-group-tree").is_err());
    }
}
