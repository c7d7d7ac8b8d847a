//! Inode properties, as the kernel keeps them (fs/btrfs/props.c): xattrs
//! named `btrfs.*`, of which only `btrfs.compression` exists. Its value
//! names an algorithm (`zlib`, `lzo`, `zstd`, anything after the name is
//! ignored, as the kernel compares only the prefix) or `no`/`none`. Setting
//! it also changes the inode's flags (COMPRESS, or NOCOMPRESS for none;
//! removing it clears both), and new regular files and directories inherit
//! an algorithm from their directory (stored under its plain name).

use crate::error::{Error, Result};
use crate::format::compress::Compression;
use crate::format::*;

/// The one property xattr the kernel knows.
pub(crate) const COMPRESSION: &[u8] = b"btrfs.compression";

/// What a `btrfs.compression` value asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CompressionProp {
    Algo(Compression),
    /// `no` / `none`: never compress (unless forced).
    No,
}

/// Parse a `btrfs.compression` value as the kernel's
/// btrfs_compress_is_valid_type and prop_compression_apply do: an algorithm
/// name as a prefix, or exactly `no` / `none`. `None`: not a valid value.
pub(crate) fn parse_compression(value: &[u8]) -> Option<CompressionProp> {
    for (name, kind) in [(&b"zlib"[..], Compression::Zlib), (b"lzo", Compression::Lzo), (b"zstd", Compression::Zstd)] {
        if value.starts_with(name) {
            return Some(CompressionProp::Algo(kind));
        }
    }
    match value {
        b"no" | b"none" => Some(CompressionProp::No),
        _ => None,
    }
}

/// The incompat feature an algorithm's extents need (the kernel sets it when
/// the property or the mount option names the algorithm).
pub(crate) fn incompat_for(kind: Compression) -> u64 {
    match kind {
        Compression::Lzo => INCOMPAT_COMPRESS_LZO,
        Compression::Zstd => INCOMPAT_COMPRESS_ZSTD,
        Compression::None | Compression::Zlib => 0,
    }
}

/// A user sets (`Some`, an empty value removes, as in the kernel) or removes
/// (`None`) the `btrfs.*` xattr `name` on an inode with flags `flags`:
/// refused unless the kernel would take it; else the inode's new flags, the
/// incompat feature to turn on (0 for none), and whether the xattr is to be
/// removed rather than stored.
pub(crate) fn apply(name: &[u8], value: Option<&[u8]>, flags: u64) -> Result<(u64, u64, bool)> {
    if name != COMPRESSION {
        return Err(Error::Invalid(format!("{}: not a btrfs property (the kernel knows only btrfs.compression)", crate::name::Name(name))));
    }
    let value = match value {
        None | Some(b"") => return Ok((flags & !(INODE_COMPRESS | INODE_NOCOMPRESS), 0, true)),
        Some(v) => v,
    };
    if flags & (INODE_NODATASUM | INODE_NODATACOW) != 0 {
        return Err(Error::Invalid(
            "btrfs.compression: the inode has no data checksums (nodatasum or nodatacow), and the kernel never compresses such files"
                .into(),
        ));
    }
    match parse_compression(value) {
        Some(CompressionProp::Algo(kind)) => Ok((flags & !INODE_NOCOMPRESS | INODE_COMPRESS, incompat_for(kind), false)),
        Some(CompressionProp::No) => Ok((flags & !INODE_COMPRESS | INODE_NOCOMPRESS, 0, false)),
        None => Err(Error::Invalid(format!("btrfs.compression {:?}: use zlib, lzo, zstd, no or none", crate::name::Name(value)))),
    }
}

/// Flags a new inode of type `mode` gets from its directory's flags
/// `dir_flags` (the kernel's btrfs_inherit_iflags) on top of `flags`.
pub(crate) fn inherit_flags(flags: u64, dir_flags: u64, mode: u32) -> u64 {
    let mut f = flags;
    if dir_flags & INODE_NOCOMPRESS != 0 {
        f = f & !INODE_COMPRESS | INODE_NOCOMPRESS;
    } else if dir_flags & INODE_COMPRESS != 0 {
        f = f & !INODE_NOCOMPRESS | INODE_COMPRESS;
    }
    if dir_flags & INODE_NODATACOW != 0 {
        f |= INODE_NODATACOW;
        if mode & S_IFMT == S_IFREG {
            f |= INODE_NODATASUM;
        }
    }
    f
}

/// The `btrfs.compression` value a new inode of type `mode` with flags
/// `flags` inherits from its directory's value `dir_value`, and its flags
/// then (the kernel's inherit_props: only an algorithm passes on, under its
/// plain name, to regular files and directories that may be compressed).
pub(crate) fn inherit_compression(dir_value: Option<&[u8]>, flags: u64, mode: u32) -> Option<(&'static [u8], u64)> {
    let t = mode & S_IFMT;
    if t != S_IFREG && t != S_IFDIR || flags & (INODE_NODATASUM | INODE_NODATACOW) != 0 {
        return None;
    }
    match parse_compression(dir_value?)? {
        CompressionProp::Algo(kind) => Some((kind.name().as_bytes(), flags & !INODE_NOCOMPRESS | INODE_COMPRESS)),
        CompressionProp::No => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_as_the_kernel_reads_them() {
        assert_eq!(parse_compression(b"zstd"), Some(CompressionProp::Algo(Compression::Zstd)));
        assert_eq!(parse_compression(b"zstd:9"), Some(CompressionProp::Algo(Compression::Zstd)));
        assert_eq!(parse_compression(b"lzo"), Some(CompressionProp::Algo(Compression::Lzo)));
        assert_eq!(parse_compression(b"zlib"), Some(CompressionProp::Algo(Compression::Zlib)));
        assert_eq!(parse_compression(b"none"), Some(CompressionProp::No));
        assert_eq!(parse_compression(b"no"), Some(CompressionProp::No));
        assert_eq!(parse_compression(b"nonesuch"), None);
        assert_eq!(parse_compression(b"zst"), None);
        assert_eq!(parse_compression(b""), None);
    }

    #[test]
    fn setting_and_removing_changes_the_flags() {
        let (f, inc, remove) = apply(COMPRESSION, Some(b"zstd"), INODE_NOCOMPRESS).unwrap();
        assert_eq!((f, inc, remove), (INODE_COMPRESS, INCOMPAT_COMPRESS_ZSTD, false));
        assert_eq!(apply(COMPRESSION, Some(b"none"), INODE_COMPRESS).unwrap(), (INODE_NOCOMPRESS, 0, false));
        assert_eq!(apply(COMPRESSION, None, INODE_COMPRESS).unwrap(), (0, 0, true));
        assert_eq!(apply(COMPRESSION, Some(b""), INODE_NOCOMPRESS).unwrap(), (0, 0, true));
        assert!(apply(COMPRESSION, Some(b"bzip2"), 0).is_err());
        assert!(apply(COMPRESSION, Some(b"zlib"), INODE_NODATASUM).is_err());
        assert!(apply(b"btrfs.other", Some(b"1"), 0).is_err());
    }

    #[test]
    fn inheritance() {
        assert_eq!(inherit_flags(0, INODE_COMPRESS | INODE_NODATACOW, S_IFREG), INODE_COMPRESS | INODE_NODATACOW | INODE_NODATASUM);
        assert_eq!(inherit_flags(0, INODE_NODATACOW, S_IFDIR), INODE_NODATACOW);
        assert_eq!(inherit_flags(INODE_COMPRESS, INODE_NOCOMPRESS, S_IFREG), INODE_NOCOMPRESS);
        assert_eq!(inherit_compression(Some(b"zstd:3"), 0, S_IFREG), Some((&b"zstd"[..], INODE_COMPRESS)));
        assert_eq!(inherit_compression(Some(b"zstd"), 0, S_IFLNK), None);
        assert_eq!(inherit_compression(Some(b"none"), 0, S_IFDIR), None);
        assert_eq!(inherit_compression(Some(b"lzo"), INODE_NODATASUM, S_IFREG), None);
    }
}
