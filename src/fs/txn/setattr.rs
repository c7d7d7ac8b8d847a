//! chmod, chown and utimes on one inode: the part of the kernel's
//! btrfs_setattr (through the VFS's notify_change) that changes the inode
//! item and nothing else. Size changes are [`Transaction::truncate`].

use crate::error::{Error, Result};
use crate::format::acl;
use crate::format::*;

use super::Transaction;

/// A timestamp to set: the transaction's time, or a given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    /// Seconds since the epoch (negative before it) and nanoseconds.
    At {
        sec: i64,
        nsec: u32,
    },
}

/// What `chmod`, `chown` and `touch` change; None leaves it as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (`0o7777` at most); the file type stays.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// A chown, even one that names no owner or group (`chown :`): the
    /// set-ID bits and capabilities go all the same, as in the kernel.
    pub chown: bool,
}

/// The capability xattr a change of owner removes (the VFS's ATTR_KILL_PRIV).
const CAPABILITY_XATTR: &[u8] = b"security.capability";
pub(crate) const ACL_ACCESS_XATTR: &[u8] = b"system.posix_acl_access";
pub(crate) const ACL_DEFAULT_XATTR: &[u8] = b"system.posix_acl_default";

impl Transaction {
    /// Apply `change` to inode `ino` of tree `root`; its ctime becomes the
    /// transaction's time, as any attribute change makes it. As the kernel:
    /// an immutable inode refuses everything, an append-only one everything
    /// but setting both times to now; a change of owner (even to the same
    /// one) of a non-directory drops its set-user-ID bit, its set-group-ID
    /// bit when group execution is set, and its file capabilities.
    pub(crate) fn set_attr(&mut self, root: u64, ino: u64, change: &SetAttr) -> Result<InodeItem> {
        self.ensure_writable(root)?;
        let explicit = |t: &Option<TimeSet>| matches!(t, Some(TimeSet::At { .. }));
        let only_now = change.mode.is_none()
            && change.uid.is_none()
            && change.gid.is_none()
            && !change.chown
            && !explicit(&change.atime)
            && !explicit(&change.mtime);
        self.may_change(root, ino, only_now)?;
        if let Some(m) = change.mode {
            if m & !0o7777 != 0 {
                return Err(Error::Invalid(format!("{}: mode {m:#o} has bits beyond 07777", self.inode_label(root, ino))));
            }
        }
        let mut it = self.read_inode(root, ino)?;
        let mut mode = it.mode.get();
        if let Some(m) = change.mode {
            mode = (mode & S_IFMT) | m;
        }
        let chown = change.chown || change.uid.is_some() || change.gid.is_some();
        if let Some(uid) = change.uid {
            it.uid = uid.into();
        }
        if let Some(gid) = change.gid {
            it.gid = gid.into();
        }
        if chown && mode & S_IFMT != S_IFDIR {
            mode &= !S_ISUID;
            if mode & S_IXGRP != 0 {
                mode &= !S_ISGID;
            }
        }
        it.mode = mode.into();
        let stamp = |t: TimeSet, now: Timespec| match t {
            TimeSet::Now => now,
            // Stored as the two's complement of the i64 in a u64 field.
            TimeSet::At { sec, nsec } => Timespec::new(u64::from_ne_bytes(sec.to_ne_bytes()), nsec),
        };
        if let Some(t) = change.atime {
            it.atime = stamp(t, self.now);
        }
        if let Some(t) = change.mtime {
            it.mtime = stamp(t, self.now);
        }
        self.touch(&mut it, false);
        self.put_inode(root, ino, &it)?;
        // The access ACL follows the new mode (the kernel's posix_acl_chmod):
        // left alone it would go on granting what the mode no longer does.
        if change.mode.is_some() {
            if let Some(v) = self.xattr(root, ino, ACL_ACCESS_XATTR)? {
                let mut entries = acl::decode(&v).map_err(|e| {
                    Error::Invalid(format!("{}: its system.posix_acl_access is not an ACL ({e}); not changed", self.inode_label(root, ino)))
                })?;
                acl::chmod(&mut entries, mode);
                self.put_xattr(root, ino, ACL_ACCESS_XATTR, Some(&acl::encode(&entries)))?;
            }
        }
        if chown && mode & S_IFMT != S_IFDIR && self.xattr(root, ino, CAPABILITY_XATTR)?.is_some() {
            self.put_xattr(root, ino, CAPABILITY_XATTR, None)?;
        }
        Ok(it)
    }
}
