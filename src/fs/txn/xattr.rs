//! Extended attributes: set or removed (a `btrfs.*` name as an inode
//! property), stored in the item of their name hash, read back (the
//! kernel's xattr.c).

use crate::error::{Error, Result};
use crate::format::encode;
use crate::format::items::{self, parse_dir_items, DirEntry};
use crate::format::limits;
use crate::format::*;
use crate::fs::props;

use super::Transaction;

impl Transaction {
    /// Set (or with `None` remove) an xattr.
    /// A `btrfs.*` name is an inode property, taken as the kernel takes it
    /// (see [`props`]): refused unless valid, and the inode's flags change
    /// with it.
    pub(crate) fn set_xattr(&mut self, root: u64, ino: u64, name: &[u8], value: Option<&[u8]>) -> Result<()> {
        limits::check_xattr(name, value, self.store.fs.sb.nodesize.get())?;
        self.may_change(root, ino, false)?;
        let mut it = self.read_inode(root, ino)?;
        limits::check_xattr_on(name, value, it.mode.get() & S_IFMT)
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.inode_label(root, ino))))?;
        if name.starts_with(b"btrfs.") {
            let (flags, incompat, remove) =
                props::apply(name, value, it.flags.get()).map_err(|e| Error::Invalid(format!("{}: {e}", self.inode_label(root, ino))))?;
            // Removing a property that is not there is no error (the kernel's
            // setxattr without XATTR_REPLACE).
            if !remove || self.xattr(root, ino, name)?.is_some() {
                self.put_xattr(root, ino, name, if remove { None } else { value })?;
            }
            self.set_incompat(incompat);
            it.flags = flags.into();
        } else if name == super::setattr::ACL_ACCESS_XATTR {
            // The kernel's posix_acl_update_mode: the mode's permission bits
            // become the ACL's, and an ACL the mode says all of is not kept.
            let entries = value.map(crate::format::acl::decode).transpose().map_err(Error::Invalid)?.unwrap_or_default();
            let (perm, equiv) = crate::format::acl::mode_of(&entries);
            if !entries.is_empty() {
                it.mode = ((it.mode.get() & !0o777) | perm).into();
            }
            if !entries.is_empty() && !equiv {
                self.put_xattr(root, ino, name, value)?;
            } else if self.xattr(root, ino, name)?.is_some() || value.is_none() {
                self.put_xattr(root, ino, name, None)?;
            }
        } else if name == super::setattr::ACL_DEFAULT_XATTR && value.is_some_and(<[u8]>::is_empty) {
            // An empty default ACL removes it, as the kernel's set_posix_acl(NULL).
            if self.xattr(root, ino, name)?.is_some() {
                self.put_xattr(root, ino, name, None)?;
            }
        } else {
            self.put_xattr(root, ino, name, value)?;
        }
        self.touch(&mut it, false);
        self.put_inode(root, ino, &it)
    }

    /// Store (or with `None` remove) xattr `name` of an inode, nothing else.
    pub(super) fn put_xattr(&mut self, root: u64, ino: u64, name: &[u8], value: Option<&[u8]>) -> Result<()> {
        let nodesize = self.store.fs.sb.nodesize.get();
        let key = Key::new(ino, XATTR_ITEM_KEY, items::name_hash(name));
        let old = self.get(root, key)?.map(|d| parse_dir_items(&d)).transpose()?.unwrap_or_default();
        let mut entries = Vec::new();
        let mut found = false;
        let transid = self.transid();
        let mut emit = |name: &[u8], data: &[u8], tid: u64| {
            entries.push(DirEntry { location: Key::MIN, transid: tid, dir_type: FT_XATTR, name: name.to_vec(), data: data.to_vec() });
        };
        for e in &old {
            if e.name == name {
                found = true;
                if let Some(v) = value {
                    emit(name, v, transid);
                }
            } else {
                emit(&e.name, &e.data, e.transid);
            }
        }
        if !found {
            match value {
                Some(v) => emit(name, v, transid),
                None => return Err(Error::NotFound(format!("xattr {}", crate::name::Name(name)))),
            }
        }
        let body = encode::dir_items(&entries)?;
        // xattrs whose names hash alike share one item, which must fit a leaf.
        let max = limits::max_item_size(nodesize);
        if body.len() > max {
            return Err(Error::Invalid(format!(
                "xattr {}: with the xattrs sharing its name hash the item would take {} bytes, more than a leaf's {max}",
                crate::name::Name(name),
                body.len()
            )));
        }
        if body.is_empty() {
            self.delete(root, key)?;
        } else {
            self.put(root, key, body)?;
        }
        Ok(())
    }

    /// The value of xattr `name` of an inode.
    pub(super) fn xattr(&mut self, root: u64, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(d) = self.get(root, Key::new(ino, XATTR_ITEM_KEY, items::name_hash(name)))? else { return Ok(None) };
        Ok(parse_dir_items(&d)?.into_iter().find(|e| e.name == name).map(|e| e.data))
    }
}
