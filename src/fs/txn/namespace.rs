//! Namespace changes: create, symlink, hard link, unlink and rmdir,
//! rename; and the read-only subvolume check (the kernel's inode.c
//! operations on names).

use zerocopy::FromZeros;

use crate::error::{CorruptKind, Error, Result};
use crate::format::*;
use crate::format::{encode, limits};
use crate::fs::props;
use crate::fs::InodeId;

use super::Transaction;

fn zero_inode() -> InodeItem {
    InodeItem::new_zeroed()
}

impl Transaction {
    /// Refuse changes to a read-only subvolume (a read-only snapshot), as the
    /// kernel does with EROFS.
    pub(crate) fn ensure_writable(&mut self, root: u64) -> Result<()> {
        let (_, ri) = self.root_item_now(root)?.ok_or_else(|| Error::NotFound(format!("subvolume {root}")))?;
        if ri.flags.get() & ROOT_SUBVOL_RDONLY != 0 {
            return Err(Error::Invalid(format!("subvolume {root} is read-only")));
        }
        Ok(())
    }

    fn next_ino(&mut self, root: u64) -> Result<u64> {
        let last = self.last_le(root, Key::new(LAST_FREE_OBJECTID, u8::MAX, u64::MAX))?;
        Ok(last.map(|(k, _)| k.objectid + 1).unwrap_or(FIRST_FREE_OBJECTID + 1).max(FIRST_FREE_OBJECTID + 1))
    }

    /// A new inode linked as `dir/name`. `mode` includes the S_IF type bits.
    /// The new inode inherits from `dir` its compression and NODATACOW
    /// flags and its compression property, as the kernel's
    /// btrfs_inherit_iflags and btrfs_inode_inherit_props give them; from
    /// a set-group-ID directory, its group, and a new directory the
    /// set-group-ID bit too (the VFS's inode_init_owner). Owned by root
    /// otherwise.
    pub fn create(&mut self, dir: InodeId, name: &[u8], mode: u32, flags: u64) -> Result<InodeId> {
        let (root, dir) = (dir.subvol, dir.ino);
        let ft = FileType::from_mode(mode).ok_or_else(|| Error::Invalid(format!("bad mode {mode:o}")))?;
        let parent = self.read_inode(root, dir)?;
        let dir_flags = parent.flags.get();
        let (mut mode, mut gid) = (mode, 0);
        if parent.mode.get() & S_ISGID != 0 {
            gid = parent.gid.get();
            if mode & S_IFMT == S_IFDIR {
                mode |= S_ISGID;
            }
        }
        let flags = props::inherit_flags(flags, dir_flags, mode);
        let prop = props::inherit_compression(self.xattr(root, dir, props::COMPRESSION)?.as_deref(), flags, mode);
        let flags = prop.map_or(flags, |(_, f)| f);
        // A default ACL of the directory: the new inode's mode and ACLs come
        // from it (the kernel's posix_acl_create), and no umask applies: the
        // 0644 and 0755 btrs makes files and directories with (0666 and 0777
        // under umask 022) are asked for whole.
        let default_acl = if mode & S_IFMT == S_IFLNK { None } else { self.xattr(root, dir, super::setattr::ACL_DEFAULT_XATTR)? };
        let mut acls: Vec<(&[u8], Vec<u8>)> = Vec::new();
        if let Some(d) = default_acl.filter(|d| !d.is_empty()) {
            let mut entries = crate::format::acl::decode(&d)
                .map_err(|e| Error::Invalid(format!("directory {dir}: its default ACL is not an ACL ({e})")))?;
            let asked = match mode & 0o7777 {
                0o644 if mode & S_IFMT != S_IFDIR => 0o666,
                0o755 if mode & S_IFMT == S_IFDIR => 0o777,
                m => m,
            };
            let (perm, needed) = crate::format::acl::create_masq(&mut entries, asked);
            mode = (mode & !0o777) | perm;
            if needed {
                acls.push((super::setattr::ACL_ACCESS_XATTR, crate::format::acl::encode(&entries)));
            }
            if mode & S_IFMT == S_IFDIR {
                acls.push((super::setattr::ACL_DEFAULT_XATTR, d));
            }
        }
        let ino = self.next_ino(root)?;
        let mut it = zero_inode();
        it.generation = self.transid().into();
        it.transid = self.transid().into();
        it.nlink = 1.into();
        it.mode = mode.into();
        it.gid = gid.into();
        it.flags = flags.into();
        it.atime = self.now;
        it.ctime = self.now;
        it.mtime = self.now;
        it.otime = self.now;
        self.insert(root, Key::new(ino, INODE_ITEM_KEY, 0), encode::inode_item(&it))?;
        if let Some((value, _)) = prop {
            self.put_xattr(root, ino, props::COMPRESSION, Some(value))?;
        }
        for (name, value) in &acls {
            self.put_xattr(root, ino, name, Some(value))?;
        }
        self.add_link(root, dir, name, ino, ft.dir_type())?;
        Ok(InodeId { subvol: root, ino })
    }

    /// A symlink: the target is stored as an inline extent, as the kernel does.
    pub(crate) fn symlink(&mut self, root: u64, dir: u64, name: &[u8], target: &[u8]) -> Result<u64> {
        limits::check_symlink_target(target, self.store.fs.sb.nodesize.get(), self.store.fs.sectorsize)?;
        let ino = self.create(InodeId { subvol: root, ino: dir }, name, S_IFLNK | 0o777, 0)?.ino;
        self.insert_inline(root, ino, target, target.len() as u64, COMPRESS_NONE)?;
        let mut it = self.read_inode(root, ino)?;
        it.size = (target.len() as u64).into();
        it.nbytes = (target.len() as u64).into();
        self.put_inode(root, ino, &it)?;
        Ok(ino)
    }

    /// Hard link `ino` as `dir/name`.
    pub(crate) fn link(&mut self, root: u64, ino: u64, dir: u64, name: &[u8]) -> Result<()> {
        self.may_change(root, ino, false)?;
        let mut it = self.read_inode(root, ino)?;
        let ft = FileType::from_mode(it.mode.get()).ok_or_else(|| Error::Invalid("bad mode".into()))?;
        if ft == FileType::Directory {
            return Err(Error::Invalid("hard links to directories are not allowed".into()));
        }
        if it.nlink.get() >= limits::LINK_MAX {
            return Err(Error::Invalid(format!("inode {ino}: too many links (the kernel's limit is {})", limits::LINK_MAX)));
        }
        self.add_link(root, dir, name, ino, ft.dir_type())?;
        it.nlink = (it.nlink.get() + 1).into();
        self.touch(&mut it, false);
        self.put_inode(root, ino, &it)
    }

    /// Remove `dir/name`; the inode goes when its last link does. Directories
    /// must be empty.
    pub(crate) fn unlink(&mut self, root: u64, dir: u64, name: &[u8]) -> Result<()> {
        let (ino, ft) = self.lookup_name(root, dir, name)?.ok_or_else(|| Error::NotFound(crate::name::Name(name).to_string()))?;
        if ft == FT_DIR {
            let it = self.read_inode(root, ino)?;
            if it.size.get() != 0 {
                return Err(Error::Invalid(format!("{}: directory not empty", crate::name::Name(name))));
            }
        }
        self.remove_link(root, dir, name)?;
        let mut it = self.read_inode(root, ino)?;
        let n = it.nlink.get().saturating_sub(1);
        if n == 0 || ft == FT_DIR {
            self.drop_extents_from(root, ino, 0, &mut it)?;
            // Everything keyed by this inode goes.
            let all = self.range(root, Key::new(ino, 0, 0), Key::new(ino, u8::MAX, u64::MAX))?;
            for (k, _) in all {
                self.delete(root, k)?;
            }
        } else {
            it.nlink = n.into();
            self.touch(&mut it, false);
            self.put_inode(root, ino, &it)?;
        }
        Ok(())
    }

    /// Move `sdir/sname` to `ddir/dname`, replacing a non-directory target.
    pub(crate) fn rename(&mut self, root: u64, sdir: u64, sname: &[u8], ddir: u64, dname: &[u8]) -> Result<()> {
        let (ino, ft) = self.lookup_name(root, sdir, sname)?.ok_or_else(|| Error::NotFound(crate::name::Name(sname).to_string()))?;
        if let Some((tino, tft)) = self.lookup_name(root, ddir, dname)? {
            if tino == ino {
                return Ok(());
            }
            if tft == FT_DIR || ft == FT_DIR {
                return Err(Error::Invalid(format!("{} exists", crate::name::Name(dname))));
            }
            self.unlink(root, ddir, dname)?;
        }
        if ft == FT_DIR {
            // Refuse moving a directory into itself. A parent chain that
            // comes back on itself (crafted INODE_REFs) would never reach
            // the root: an error, not an endless walk.
            let mut cur = ddir;
            let mut seen = std::collections::HashSet::new();
            while cur != FIRST_FREE_OBJECTID {
                if cur == ino {
                    return Err(Error::Invalid("cannot move a directory into itself".into()));
                }
                if !seen.insert(cur) {
                    return Err(Error::corrupt(CorruptKind::Loop, format!("inode {cur} of tree {root}"), "its parent chain loops"));
                }
                let refs = self.range(root, Key::new(cur, INODE_REF_KEY, 0), Key::new(cur, INODE_REF_KEY, u64::MAX))?;
                cur = refs
                    .first()
                    .map(|(k, _)| k.offset)
                    .ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, format!("inode {cur}"), "no parent"))?;
            }
        }
        self.remove_link(root, sdir, sname)?;
        self.add_link(root, ddir, dname, ino, ft)?;
        let mut it = self.read_inode(root, ino)?;
        self.touch(&mut it, false);
        self.put_inode(root, ino, &it)
    }
}
