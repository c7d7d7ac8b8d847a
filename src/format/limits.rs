//! The kernel's size limits on names, xattrs, symlink targets and files, and
//! checks that refuse a request beyond them with an error naming what is
//! wrong. The item-size limits follow from the node size (a leaf holds the
//! header, then item headers and bodies): ctree.h's BTRFS_MAX_ITEM_SIZE,
//! BTRFS_MAX_XATTR_SIZE and BTRFS_MAX_INLINE_DATA_SIZE.

use super::ondisk::*;
use super::usize_of;
use crate::error::{Error, Result};

const HEADER_SIZE: usize = std::mem::size_of::<Header>();
const ITEM_SIZE: usize = std::mem::size_of::<Item>();
const DIR_ITEM_SIZE: usize = std::mem::size_of::<DirItem>();

/// Longest file or directory entry name (BTRFS_NAME_LEN).
pub const MAX_NAME_LEN: usize = NAME_LEN;
/// Longest xattr name (the VFS's XATTR_NAME_MAX).
pub const MAX_XATTR_NAME_LEN: usize = 255;
/// Largest file size and file offset (the VFS's MAX_LFS_FILESIZE): a write
/// may not end past it, a file may not be truncated beyond it.
pub const MAX_FILE_SIZE: u64 = u64::MAX >> 1;

/// Most links of one inode (BTRFS_LINK_MAX).
pub const LINK_MAX: u32 = 65535;

/// Largest item body one leaf holds (BTRFS_MAX_ITEM_SIZE).
pub fn max_item_size(nodesize: u32) -> usize {
    usize_of(nodesize).saturating_sub(HEADER_SIZE.saturating_add(ITEM_SIZE))
}

/// Largest xattr name plus value (BTRFS_MAX_XATTR_SIZE): one dir item alone in a leaf.
pub fn max_xattr_size(nodesize: u32) -> usize {
    max_item_size(nodesize).saturating_sub(DIR_ITEM_SIZE)
}

/// Largest inline extent data (BTRFS_MAX_INLINE_DATA_SIZE).
pub fn max_inline_data_size(nodesize: u32) -> usize {
    max_item_size(nodesize).saturating_sub(FILE_EXTENT_INLINE_DATA_START)
}

/// Longest symlink target: the kernel's btrfs_symlink stores it as one
/// uncompressed inline extent, which must fit a leaf and stay below a sector.
pub fn max_symlink_len(nodesize: u32, sectorsize: u32) -> usize {
    max_inline_data_size(nodesize).min(usize_of(sectorsize).saturating_sub(1))
}

/// A name for a message, cut after its first 40 characters as shown.
fn shown(name: &[u8]) -> String {
    let s = crate::name::Name(name).to_string();
    if s.chars().count() > 40 {
        format!("\"{}\"...", s.chars().take(40).collect::<String>().replace('"', "\\\""))
    } else {
        format!("{:?}", crate::name::Name(name))
    }
}

/// A directory entry name: 1..=255 bytes, no '/' or NUL, not "." or "..".
pub fn check_entry_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Invalid("empty file name".into()));
    }
    // Every directory has them already (the VFS makes them): an entry of
    // that name could never be reached.
    if name == b"." || name == b".." {
        return Err(Error::Invalid(format!("file name {} is reserved", shown(name))));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::Invalid(format!("file name {} of {} bytes: at most {MAX_NAME_LEN}", shown(name), name.len())));
    }
    if name.contains(&b'/') {
        return Err(Error::Invalid(format!("file name {} contains '/'", shown(name))));
    }
    if name.contains(&0) {
        return Err(Error::Invalid(format!("file name {} contains a NUL byte", shown(name))));
    }
    if name == b"." || name == b".." {
        return Err(Error::Invalid(format!("file name {} is reserved", shown(name))));
    }
    Ok(())
}

/// An xattr: name of 1..=255 bytes without NUL, value of at most 64 KiB, and
/// name plus value within what one leaf holds.
pub fn check_xattr(name: &[u8], value: Option<&[u8]>, nodesize: u32) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Invalid("empty xattr name".into()));
    }
    if name.len() > MAX_XATTR_NAME_LEN {
        return Err(Error::Invalid(format!("xattr name of {} bytes: at most {MAX_XATTR_NAME_LEN}", name.len())));
    }
    if name.contains(&0) {
        return Err(Error::Invalid(format!("xattr name {} contains a NUL byte", shown(name))));
    }
    if let Some(v) = value {
        if v.len() > XATTR_SIZE_MAX {
            return Err(Error::Invalid(format!("xattr {} value of {} bytes: at most {XATTR_SIZE_MAX}", shown(name), v.len())));
        }
        let max = max_xattr_size(nodesize);
        if name.len().saturating_add(v.len()) > max {
            return Err(Error::Invalid(format!(
                "xattr {}: name and value of {} bytes: at most {max} with {nodesize}-byte nodes",
                shown(name),
                name.len().saturating_add(v.len())
            )));
        }
    }
    Ok(())
}

/// The namespaces the kernel keeps xattrs in (fs/xattr.c
/// `xattr_resolve_name` over btrfs's handlers): a prefix with something after
/// it, or one of the two POSIX ACL names, whose value must then be an ACL the
/// kernel takes (`posix_acl_from_xattr`, `posix_acl_valid`; a default ACL
/// only on a directory). Anything else the kernel refuses to set, so a
/// mounted image would hold what no kernel call could have made.
pub fn check_xattr_namespace(name: &[u8], value: &[u8], is_dir: bool) -> Result<()> {
    const PREFIXES: [&[u8]; 4] = [b"user.", b"trusted.", b"security.", b"btrfs."];
    if let Some(p) = PREFIXES.iter().find(|p| name.starts_with(p)) {
        if name.len() == p.len() {
            return Err(Error::Invalid(format!("xattr {}: nothing after the namespace", shown(name))));
        }
        return Ok(());
    }
    let default = match name {
        b"system.posix_acl_access" => false,
        b"system.posix_acl_default" => true,
        _ => {
            return Err(Error::Invalid(format!(
                "xattr {}: not in a namespace the kernel has (user., trusted., security., btrfs., \
                 system.posix_acl_access, system.posix_acl_default)",
                shown(name)
            )))
        }
    };
    let entries = check_posix_acl(value).map_err(|why| Error::Invalid(format!("xattr {}: {why}", shown(name))))?;
    if default && !is_dir && entries > 0 {
        return Err(Error::Invalid(format!("xattr {}: a default ACL is only for a directory", shown(name))));
    }
    Ok(())
}

/// Everything the kernel asks of an xattr set (`Some` value) or removed
/// (`None`) on an inode of type `ifmt` (its S_IFMT bits) beyond size: the
/// namespace and ACL value of one set ([`check_xattr_namespace`]), and user.*
/// only on regular files and directories, set or removed (the kernel's
/// xattr_permission: on anything else it refuses either, and cannot read them
/// back). setfattr and mkfs's sources both go through it.
pub fn check_xattr_on(name: &[u8], value: Option<&[u8]>, ifmt: u32) -> Result<()> {
    if let Some(value) = value {
        check_xattr_namespace(name, value, ifmt == S_IFDIR)?;
    }
    if name.starts_with(b"user.") && ifmt != S_IFREG && ifmt != S_IFDIR {
        return Err(Error::Invalid(format!("xattr {}: user.* xattrs are only allowed on regular files and directories", shown(name))));
    }
    Ok(())
}

/// A POSIX ACL as an xattr value (see [`super::acl`]): its entry count, or
/// why the kernel refuses it. Empty (no ACL) is taken too.
fn check_posix_acl(value: &[u8]) -> std::result::Result<usize, String> {
    let entries = super::acl::decode(value)?;
    super::acl::validate(&entries)?;
    Ok(entries.len())
}

/// A symlink target: 1..=max_symlink_len bytes without NUL.
pub fn check_symlink_target(target: &[u8], nodesize: u32, sectorsize: u32) -> Result<()> {
    let max = max_symlink_len(nodesize, sectorsize);
    if target.is_empty() {
        return Err(Error::Invalid("empty symlink target".into()));
    }
    if target.contains(&0) {
        return Err(Error::Invalid("symlink target contains a NUL byte".into()));
    }
    if target.len() > max {
        return Err(Error::Invalid(format!(
            "symlink target of {} bytes: at most {max} with {nodesize}-byte nodes and {sectorsize}-byte sectors",
            target.len()
        )));
    }
    Ok(())
}

/// A write of `len` bytes at `offset` (or a truncate to `offset` when `len`
/// is 0) must end at or below the largest file size.
pub fn check_file_range(offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= MAX_FILE_SIZE => Ok(()),
        _ => Err(Error::Invalid(format!(
            "{} ending at {} is past the largest file size {MAX_FILE_SIZE} (2^63-1)",
            if len == 0 { format!("size {offset}") } else { format!("write of {len} bytes at offset {offset}") },
            u128::from(offset).saturating_add(u128::from(len))
        ))),
    }
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    #[test]
    fn acls_as_the_kernel_takes_them() {
        const ANY: u32 = u32::MAX;
        let minimal = acl(&[(0x01, 6, ANY), (0x04, 4, ANY), (0x20, 4, ANY)]);
        let named = acl(&[(0x01, 6, ANY), (0x02, 7, 1000), (0x04, 4, ANY), (0x08, 5, 100), (0x10, 7, ANY), (0x20, 0, ANY)]);
        for v in [&minimal, &named, &acl(&[]), &Vec::new()] {
            check_xattr_namespace(b"system.posix_acl_access", v, false).unwrap();
            check_xattr_namespace(b"system.posix_acl_default", v, true).unwrap();
        }
        assert!(check_xattr_namespace(b"system.posix_acl_default", &minimal, false).is_err(), "default ACL on a file");
        check_xattr_namespace(b"system.posix_acl_default", &acl(&[]), false).unwrap();
        let bad = [
            acl(&[(0x04, 4, ANY), (0x01, 6, ANY), (0x20, 4, ANY)]), // out of order
            acl(&[(0x01, 6, ANY), (0x02, 7, 1000), (0x04, 4, ANY), (0x20, 4, ANY)]), // named entry without a mask
            acl(&[(0x01, 6, ANY), (0x02, 7, ANY), (0x04, 4, ANY), (0x10, 7, ANY), (0x20, 4, ANY)]), // unmapped uid
            acl(&[(0x01, 0o10, ANY), (0x04, 4, ANY), (0x20, 4, ANY)]), // perm beyond rwx
            acl(&[(0x01, 6, ANY), (0x04, 4, ANY)]),                 // no OTHER
            acl(&[(0x01, 6, ANY), (0x04, 4, ANY), (0x20, 4, ANY), (0x20, 4, ANY)]), // OTHER twice
            acl(&[(0x01, 6, ANY), (0x40, 4, ANY), (0x20, 4, ANY)]), // unknown tag
            minimal[..minimal.len() - 1].to_vec(),                  // partial entry
            vec![2, 0, 0],                                          // short header
            [&3u32.to_le_bytes()[..], &minimal[4..]].concat(),      // version 3
        ];
        for v in &bad {
            assert!(check_xattr_namespace(b"system.posix_acl_access", v, true).is_err(), "{v:?}");
        }
        for ok in [&b"user.a"[..], b"trusted.a", b"security.selinux", b"btrfs.compression"] {
            check_xattr_namespace(ok, b"v", false).unwrap();
        }
        for no in [&b"user."[..], b"system.foo", b"foo.bar", b"system.posix_acl_accessx", b"User.a"] {
            assert!(check_xattr_namespace(no, b"v", true).is_err(), "{}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn kernel_limits_on_4k_and_16k_nodes() {
        assert_eq!(max_item_size(4096), 3970);
        assert_eq!(max_xattr_size(4096), 3940);
        assert_eq!(max_inline_data_size(4096), 3949);
        assert_eq!(max_symlink_len(4096, 4096), 3949);
        assert_eq!(max_xattr_size(16384), 16228);
        assert_eq!(max_symlink_len(16384, 4096), 4095);
        assert!(check_xattr(b"user.a", Some(&vec![0; 3940 - 6]), 4096).is_ok());
        assert!(check_xattr(b"user.a", Some(&vec![0; 3941 - 6]), 4096).is_err());
        assert!(check_file_range(i64::MAX as u64 - 4, 4).is_ok());
        assert!(check_file_range(i64::MAX as u64 - 4, 5).is_err());
        assert!(check_file_range(u64::MAX, 5).is_err());
        assert!(check_entry_name(b"a/b").is_err());
        assert!(check_entry_name(&[b'x'; 256]).is_err());
        assert!(check_entry_name(&[b'x'; 255]).is_ok());
    }
}
