//! The inode flags `chattr` sets (the kernel's btrfs_fileattr_set and
//! check_fsflags), and what they forbid: nothing changes an immutable
//! inode, an append-only one only grows at its end, and neither loses or
//! gains a name; an immutable directory takes no new entries and loses none,
//! an append-only one loses none (the kernel's may_delete and friends).

use crate::error::{Error, Result};
use crate::format::*;
use crate::fs::props;

use super::Transaction;

/// The `lsattr` letters btrfs has, in the order e2fsprogs prints its
/// 22 columns ("suSDiadAcEjItTeCxFNPVm"), with the inode flag behind each.
pub(crate) const LSATTR_COLUMNS: [(char, u64); 22] = [
    ('s', 0),
    ('u', 0),
    ('S', INODE_SYNC),
    ('D', INODE_DIRSYNC),
    ('i', INODE_IMMUTABLE),
    ('a', INODE_APPEND),
    ('d', INODE_NODUMP),
    ('A', INODE_NOATIME),
    ('c', INODE_COMPRESS),
    ('E', 0),
    ('j', 0),
    ('I', 0),
    ('t', 0),
    ('T', 0),
    ('e', 0),
    ('C', INODE_NODATACOW),
    ('x', 0),
    ('F', 0),
    ('N', 0),
    ('P', 0),
    ('V', 0),
    ('m', INODE_NOCOMPRESS),
];

/// The letters `chattr` may change on btrfs (the kernel's check_fsflags).
pub const CHATTR_LETTERS: &str = "CcmiaAdSD";

/// `lsattr`'s 22 columns for inode flags `flags`.
pub fn lsattr_string(flags: u64) -> String {
    LSATTR_COLUMNS.iter().map(|&(c, f)| if f != 0 && flags & f != 0 { c } else { '-' }).collect()
}

fn flag_of(c: char) -> Option<u64> {
    CHATTR_LETTERS.contains(c).then(|| LSATTR_COLUMNS.iter().find(|(l, _)| *l == c).map(|x| x.1)).flatten()
}

/// A `chattr` mode: `+LETTERS`, `-LETTERS` or `=LETTERS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrChange {
    pub op: char,
    pub flags: u64,
}

impl std::str::FromStr for AttrChange {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut chars = s.chars();
        let op = chars.next().filter(|c| matches!(c, '+' | '-' | '=')).ok_or_else(|| format!("{s:?}: a mode starts with +, - or ="))?;
        let mut flags = 0;
        for c in chars {
            flags |= flag_of(c).ok_or_else(|| format!("{s:?}: {c:?} is not a flag btrfs takes ({CHATTR_LETTERS})"))?;
        }
        if flags == 0 && op != '=' {
            return Err(format!("{s:?}: no flag named"));
        }
        Ok(AttrChange { op, flags })
    }
}

impl Transaction {
    /// Refuse to change inode `ino` when it is immutable, or (unless
    /// `growing`: a write at its end) append-only.
    pub(crate) fn may_change(&mut self, root: u64, ino: u64, growing: bool) -> Result<()> {
        let flags = self.read_inode(root, ino)?.flags.get();
        self.may_change_flags(root, ino, flags, growing)
    }

    /// [`Transaction::may_change`] for an inode whose flags the caller read.
    pub(crate) fn may_change_flags(&self, root: u64, ino: u64, flags: u64, growing: bool) -> Result<()> {
        if flags & INODE_IMMUTABLE != 0 {
            return Err(Error::Invalid(format!("{}: operation not permitted (immutable)", self.inode_label(root, ino))));
        }
        if flags & INODE_APPEND != 0 && !growing {
            return Err(Error::Invalid(format!("{}: operation not permitted (append-only)", self.inode_label(root, ino))));
        }
        Ok(())
    }

    /// Refuse a new entry in directory `dir` when it is immutable; with
    /// `removing`, refuse taking one out of an immutable or append-only one.
    pub(crate) fn may_change_dir(&mut self, root: u64, dir: u64, removing: bool) -> Result<()> {
        self.may_change(root, dir, !removing)
    }

    /// `chattr`: change the flags of inode `ino` as the kernel does; the
    /// new flags. +C/-C on a regular file takes effect only while it is
    /// empty (its checksums follow, as NODATASUM); +c stores the
    /// btrfs.compression property (zlib, as with no compress mount option)
    /// when c was not set, +m and -c remove it.
    pub(crate) fn change_attrs(&mut self, root: u64, ino: u64, change: &AttrChange) -> Result<u64> {
        let mut it = self.read_inode(root, ino)?;
        let old = it.flags.get();
        let user = flag_of_mask();
        let wanted = match change.op {
            '+' => (old & user) | change.flags,
            '-' => (old & user) & !change.flags,
            _ => change.flags,
        };
        let has = |f: u64, x: u64| f & x != 0;
        let what = || self.inode_label(root, ino);
        if has(wanted, INODE_COMPRESS) && has(wanted, INODE_NOCOMPRESS) {
            return Err(Error::Invalid(format!("{}: c and m cannot both be set", what())));
        }
        if has(wanted, INODE_COMPRESS) && has(wanted, INODE_NODATACOW) {
            return Err(Error::Invalid(format!("{}: c and C cannot both be set", what())));
        }
        if has(old, INODE_NODATACOW) && has(wanted, INODE_COMPRESS | INODE_NOCOMPRESS) && !has(old, INODE_COMPRESS | INODE_NOCOMPRESS) {
            return Err(Error::Invalid(format!("{}: c and m cannot be set on a C (nodatacow) inode", what())));
        }
        if has(wanted, INODE_NODATACOW) && !has(old, INODE_NODATACOW) && has(old, INODE_COMPRESS | INODE_NOCOMPRESS) {
            return Err(Error::Invalid(format!("{}: C cannot be set on an inode with c or m", what())));
        }
        let regular = it.mode.get() & S_IFMT == S_IFREG;
        let mut new = old & !(INODE_IMMUTABLE | INODE_APPEND | INODE_NOATIME | INODE_NODUMP | INODE_SYNC | INODE_DIRSYNC);
        new |= wanted & (INODE_IMMUTABLE | INODE_APPEND | INODE_NOATIME | INODE_NODUMP | INODE_SYNC | INODE_DIRSYNC);
        let cow = if regular { INODE_NODATACOW | INODE_NODATASUM } else { INODE_NODATACOW };
        // A regular file's checksums cannot change once it has data.
        if !regular || it.size.get() == 0 {
            if has(wanted, INODE_NODATACOW) {
                new |= cow;
            } else {
                new &= !cow;
            }
        }
        let had_c = has(old, INODE_COMPRESS);
        if has(wanted, INODE_NOCOMPRESS) {
            new = (new & !INODE_COMPRESS) | INODE_NOCOMPRESS;
        } else if has(wanted, INODE_COMPRESS) {
            new = (new & !INODE_NOCOMPRESS) | INODE_COMPRESS;
        } else {
            new &= !(INODE_COMPRESS | INODE_NOCOMPRESS);
        }
        it.flags = new.into();
        self.touch(&mut it, false);
        self.put_inode(root, ino, &it)?;
        if has(new, INODE_COMPRESS) && !had_c {
            self.put_xattr(root, ino, props::COMPRESSION, Some(b"zlib"))?;
        } else if !has(new, INODE_COMPRESS) && (had_c || has(new, INODE_NOCOMPRESS)) && self.xattr(root, ino, props::COMPRESSION)?.is_some()
        {
            self.put_xattr(root, ino, props::COMPRESSION, None)?;
        }
        Ok(new)
    }
}

/// Every flag `chattr` can change.
fn flag_of_mask() -> u64 {
    CHATTR_LETTERS.chars().filter_map(flag_of).fold(0, |a, f| a | f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_columns_print_as_e2fsprogs() {
        assert_eq!("+i".parse::<AttrChange>().unwrap(), AttrChange { op: '+', flags: INODE_IMMUTABLE });
        assert_eq!("=".parse::<AttrChange>().unwrap(), AttrChange { op: '=', flags: 0 });
        assert!("i".parse::<AttrChange>().is_err() && "+z".parse::<AttrChange>().is_err() && "+".parse::<AttrChange>().is_err());
        assert_eq!(lsattr_string(INODE_NODATACOW | INODE_NODATASUM), "---------------C------");
        assert_eq!(lsattr_string(INODE_APPEND | INODE_NOATIME), "-----a-A--------------");
        assert_eq!(lsattr_string(INODE_COMPRESS), "--------c-------------");
        assert_eq!(lsattr_string(INODE_NOCOMPRESS), "---------------------m");
    }
}
