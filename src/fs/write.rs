//! Namespace and file-data changes inside a [`Transaction`]: create, mkdir,
//! symlink, hard links, unlink/rmdir, rename, xattrs, writes at any offset
//! (copy-on-write, or in place for NODATACOW extents that are not shared)
//! and truncation.
//!
//! Data is written to its new location (every mirror, from the engine's own
//! buffer, never the caller's) before any item naming it is inserted, so the
//! commit's superblock write is the single point where the change appears.
//! Extents are only ever regular (never inline, never compressed): always
//! valid, and simpler to overwrite.

use zerocopy::{FromZeros, IntoBytes};

use crate::error::{Error, Result};
use crate::format::items::{self, parse_dir_items, parse_file_extent, FileExtentKind};
use crate::format::limits;
use crate::format::*;
use crate::fs::direct::{Bounce, DirectWriter, Plain, Source};
use crate::fs::transaction::Transaction;
use std::sync::Arc;

/// Largest file kept inline in its leaf (the kernel's default max_inline).
const MAX_INLINE: u64 = 2048;

/// Largest data extent btrs writes (the kernel's BTRFS_MAX_EXTENT_SIZE).
const MAX_EXTENT: u64 = 128 * 1024 * 1024;

/// Per-write statistics and, for `-v`, a log of every write submitted.
#[derive(Default, Debug, Clone)]
pub struct WriteReport {
    pub bios: Vec<BioRecord>,
    pub bytes: u64,
    /// Things worth telling the user (e.g. O_DIRECT unavailable).
    pub notices: Vec<String>,
}

/// One write of one contiguous piece to one copy.
#[derive(Debug, Clone)]
pub struct BioRecord {
    pub logical: u64,
    pub len: u64,
    pub devid: u64,
    pub physical: u64,
    pub mirror: usize,
}

/// Where a bio is in its life, for a [`BioHook`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BioStage {
    Submitted,
    Completed,
    Failed,
}

/// Told of every data bio as it is submitted and as it completes (from the
/// thread that issued it), for `btrs write -v`.
#[derive(Clone)]
pub struct BioHook(pub Arc<BioFn>);

pub type BioFn = dyn Fn(&BioRecord, BioStage) + Send + Sync;

impl BioHook {
    pub fn call(&self, rec: &BioRecord, stage: BioStage) {
        (self.0)(rec, stage)
    }
}

impl std::fmt::Debug for BioHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BioHook")
    }
}

/// Options for file data writes.
#[derive(Clone, Debug)]
pub struct WriteOpts {
    /// Largest single device write (a "bio"); pieces never cross a stripe.
    pub max_bio: usize,
    pub on_bio: Option<BioHook>,
}

impl Default for WriteOpts {
    fn default() -> Self {
        WriteOpts { max_bio: 1 << 20, on_bio: None }
    }
}

/// The bytes of a write: borrowed from the caller (copied into engine pages
/// before anything is written), or pages the caller hands over.
enum Payload<'a> {
    Borrowed(&'a dyn Source),
    Owned(Bounce),
}

/// Where a path leads: the tree (subvolume) and inode, and its dir type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub root: u64,
    pub ino: u64,
    pub dir_type: u8,
}

fn zero_inode() -> InodeItem {
    InodeItem::new_zeroed()
}

impl Transaction {
    pub fn read_inode(&mut self, root: u64, ino: u64) -> Result<InodeItem> {
        let data = self
            .get(root, Key::new(ino, INODE_ITEM_KEY, 0))?
            .ok_or_else(|| Error::NotFound(format!("inode {root}:{ino}")))?;
        Ok(items::read_prefix::<InodeItem>(&data, "inode item")?.0)
    }

    pub fn put_inode(&mut self, root: u64, ino: u64, item: &InodeItem) -> Result<()> {
        self.put(root, Key::new(ino, INODE_ITEM_KEY, 0), item.as_bytes().to_vec())?;
        Ok(())
    }

    /// Stamp an inode as changed by this transaction.
    fn touch(&self, it: &mut InodeItem, mtime: bool) {
        it.transid = self.transid().into();
        it.sequence = (it.sequence.get() + 1).into();
        it.ctime = self.now;
        if mtime {
            it.mtime = self.now;
        }
    }

    /// (inode, dir type) named `name` in directory `dir`.
    /// `name` in directory `dir` of tree `root`: (inode, dir type). An entry
    /// that is a subvolume is an error here: the engine's own edits (unlink,
    /// rename, link) stay inside one tree; [`Self::lookup`] steps into it.
    pub fn lookup_name(&mut self, root: u64, dir: u64, name: &[u8]) -> Result<Option<(u64, u8)>> {
        match self.lookup_entry(root, dir, name)? {
            None => Ok(None),
            Some(e) if e.location.item_type == INODE_ITEM_KEY => Ok(Some((e.location.objectid, e.dir_type))),
            Some(_) => Err(Error::Unsupported(format!(
                "{}: is a subvolume (btrs does not create, delete, move or link subvolumes)",
                String::from_utf8_lossy(name)
            ))),
        }
    }

    fn lookup_entry(&mut self, root: u64, dir: u64, name: &[u8]) -> Result<Option<items::DirEntry>> {
        let Some(data) = self.get(root, Key::new(dir, DIR_ITEM_KEY, items::name_hash(name)))? else { return Ok(None) };
        Ok(parse_dir_items(&data)?.into_iter().find(|e| e.name == name))
    }

    /// `name` in directory `dir` of tree `root`, stepping into a subvolume
    /// when the entry is one (its root directory), as path walks do.
    pub fn lookup(&mut self, root: u64, dir: u64, name: &[u8]) -> Result<Option<Place>> {
        let Some(e) = self.lookup_entry(root, dir, name)? else { return Ok(None) };
        match e.location.item_type {
            INODE_ITEM_KEY => Ok(Some(Place { root, ino: e.location.objectid, dir_type: e.dir_type })),
            ROOT_ITEM_KEY => {
                let sub = e.location.objectid;
                let at = || format!("subvolume {} ({})", sub, String::from_utf8_lossy(name));
                // A subvolume being deleted keeps its entry until the kernel's cleaner runs.
                if !self.store.fs.subvol_linked_at(crate::fs::inode::InodeId { subvol: root, ino: dir }, sub, name)? {
                    return Err(Error::Unsupported(format!("{}: deleted, not yet cleaned up", at())));
                }
                let (_, ri) = self.store.fs.root_item(sub)?.ok_or_else(|| Error::corrupt(at(), "no root item"))?;
                Ok(Some(Place { root: sub, ino: ri.root_dirid.get(), dir_type: FT_DIR }))
            }
            t => Err(Error::corrupt(format!("directory {dir} of tree {root}"), format!("entry location type {t}"))),
        }
    }

    /// Resolve an absolute path from the top-level subvolume, through nested
    /// subvolumes, to where it leads.
    pub fn resolve(&mut self, path: &str) -> Result<Option<Place>> {
        let mut cur = Place { root: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID, dir_type: FT_DIR };
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if cur.dir_type != FT_DIR {
                return Err(Error::Invalid(format!("{path}: a component is not a directory")));
            }
            match self.lookup(cur.root, cur.ino, comp.as_bytes())? {
                Some(x) => cur = x,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Refuse changes to a read-only subvolume (a read-only snapshot), as the
    /// kernel does with EROFS.
    pub fn ensure_writable(&mut self, root: u64) -> Result<()> {
        if root == FS_TREE_OBJECTID {
            return Ok(());
        }
        let (_, ri) = self.store.fs.root_item(root)?.ok_or_else(|| Error::NotFound(format!("subvolume {root}")))?;
        if ri.flags.get() & ROOT_SUBVOL_RDONLY != 0 {
            return Err(Error::Invalid(format!("subvolume {root} is read-only")));
        }
        Ok(())
    }

    fn next_ino(&mut self, root: u64) -> Result<u64> {
        let last = self.last_le(root, Key::new(LAST_FREE_OBJECTID, u8::MAX, u64::MAX))?;
        Ok(last.map(|(k, _)| k.objectid + 1).unwrap_or(FIRST_FREE_OBJECTID + 1).max(FIRST_FREE_OBJECTID + 1))
    }

    fn next_index(&mut self, root: u64, dir: u64) -> Result<u64> {
        match self.last_le(root, Key::new(dir, DIR_INDEX_KEY, u64::MAX))? {
            Some((k, _)) if k.objectid == dir && k.item_type == DIR_INDEX_KEY => Ok(k.offset + 1),
            _ => Ok(2),
        }
    }

    /// Add the name `name` in `dir` for inode `ino` (dir item, dir index,
    /// inode ref); the caller adjusts `ino`'s nlink.
    pub fn add_link(&mut self, root: u64, dir: u64, name: &[u8], ino: u64, dir_type: u8) -> Result<()> {
        limits::check_entry_name(name)?;
        if self.lookup_name(root, dir, name)?.is_some() {
            return Err(Error::Invalid(format!("{} already exists", String::from_utf8_lossy(name))));
        }
        let mut d = self.read_inode(root, dir)?;
        if d.mode.get() & S_IFMT != S_IFDIR {
            return Err(Error::Invalid(format!("inode {dir} is not a directory")));
        }
        let index = self.next_index(root, dir)?;
        let transid = self.transid();
        let mut entry = DirItem {
            location: DiskKey::new(ino, INODE_ITEM_KEY, 0),
            transid: transid.into(),
            data_len: 0.into(),
            name_len: (name.len() as u16).into(),
            dir_type,
        }
        .as_bytes()
        .to_vec();
        entry.extend_from_slice(name);
        let hkey = Key::new(dir, DIR_ITEM_KEY, items::name_hash(name));
        // Names with the same hash share one DIR_ITEM, which must still fit a leaf.
        let mut body = self.get(root, hkey)?.unwrap_or_default();
        body.extend_from_slice(&entry);
        let max = limits::max_item_size(self.store.fs.sb.nodesize.get());
        if body.len() > max {
            return Err(Error::Invalid(format!(
                "{}: the directory entries sharing its name hash would take {} bytes, more than a leaf's {max}",
                String::from_utf8_lossy(name),
                body.len()
            )));
        }
        self.put(root, hkey, body)?;
        self.insert(root, Key::new(dir, DIR_INDEX_KEY, index), entry)?;
        // Inode ref (several names in the same directory share the item).
        let rkey = Key::new(ino, INODE_REF_KEY, dir);
        let mut rbody = self.get(root, rkey)?.unwrap_or_default();
        if rbody.len() + name.len() + 10 > self.store.fs.sb.nodesize.get() as usize / 2 {
            return Err(Error::Unsupported("too many hard links in one directory (extended refs)".into()));
        }
        rbody.extend_from_slice(InodeRef { index: index.into(), name_len: (name.len() as u16).into() }.as_bytes());
        rbody.extend_from_slice(name);
        self.put(root, rkey, rbody)?;
        d.size = (d.size.get() + 2 * name.len() as u64).into();
        self.touch(&mut d, true);
        self.put_inode(root, dir, &d)
    }

    /// Remove the name `name` from `dir` (not the inode itself); returns the inode.
    fn remove_link(&mut self, root: u64, dir: u64, name: &[u8]) -> Result<u64> {
        let hkey = Key::new(dir, DIR_ITEM_KEY, items::name_hash(name));
        let data = self.get(root, hkey)?.ok_or_else(|| Error::NotFound(String::from_utf8_lossy(name).into_owned()))?;
        let entries = parse_dir_items(&data)?;
        let ent = entries
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .ok_or_else(|| Error::NotFound(String::from_utf8_lossy(name).into_owned()))?;
        if ent.location.item_type != INODE_ITEM_KEY {
            return Err(Error::Unsupported("removing a subvolume".into()));
        }
        let ino = ent.location.objectid;
        // Rebuild the dir item without this name.
        let mut rest = Vec::new();
        for e in entries.iter().filter(|e| e.name != name) {
            rest.extend_from_slice(
                DirItem {
                    location: e.location.to_disk(),
                    transid: e.transid.into(),
                    data_len: (e.data.len() as u16).into(),
                    name_len: (e.name.len() as u16).into(),
                    dir_type: e.dir_type,
                }
                .as_bytes(),
            );
            rest.extend_from_slice(&e.name);
            rest.extend_from_slice(&e.data);
        }
        if rest.is_empty() {
            self.delete(root, hkey)?;
        } else {
            self.put(root, hkey, rest)?;
        }
        // Inode ref -> index.
        let rkey = Key::new(ino, INODE_REF_KEY, dir);
        let rdata = self.get(root, rkey)?.ok_or_else(|| Error::Unsupported("name stored as an extended inode ref".into()))?;
        let refs = items::parse_inode_refs(rkey, &rdata)?;
        let r = refs.iter().find(|r| r.name == name).ok_or_else(|| Error::corrupt(format!("inode {ino}"), "no inode ref for name"))?;
        let index = r.index;
        let mut nb = Vec::new();
        for r in refs.iter().filter(|r| r.name != name) {
            nb.extend_from_slice(InodeRef { index: r.index.into(), name_len: (r.name.len() as u16).into() }.as_bytes());
            nb.extend_from_slice(&r.name);
        }
        if nb.is_empty() {
            self.delete(root, rkey)?;
        } else {
            self.put(root, rkey, nb)?;
        }
        self.delete(root, Key::new(dir, DIR_INDEX_KEY, index))?;
        let mut d = self.read_inode(root, dir)?;
        d.size = d.size.get().saturating_sub(2 * name.len() as u64).into();
        self.touch(&mut d, true);
        self.put_inode(root, dir, &d)?;
        Ok(ino)
    }

    /// A new inode linked as `dir/name`. `mode` includes the S_IF type bits.
    pub fn create(&mut self, root: u64, dir: u64, name: &[u8], mode: u32, flags: u64) -> Result<u64> {
        let ft = FileType::from_mode(mode).ok_or_else(|| Error::Invalid(format!("bad mode {mode:o}")))?;
        let ino = self.next_ino(root)?;
        let mut it = zero_inode();
        it.generation = self.transid().into();
        it.transid = self.transid().into();
        it.nlink = 1.into();
        it.mode = mode.into();
        it.flags = flags.into();
        it.atime = self.now;
        it.ctime = self.now;
        it.mtime = self.now;
        it.otime = self.now;
        self.insert(root, Key::new(ino, INODE_ITEM_KEY, 0), it.as_bytes().to_vec())?;
        self.add_link(root, dir, name, ino, ft.dir_type())?;
        Ok(ino)
    }

    /// A symlink: the target is stored as an inline extent, as the kernel does.
    pub fn symlink(&mut self, root: u64, dir: u64, name: &[u8], target: &[u8]) -> Result<u64> {
        limits::check_symlink_target(target, self.store.fs.sb.nodesize.get(), self.store.fs.sectorsize)?;
        let ino = self.create(root, dir, name, S_IFLNK | 0o777, 0)?;
        self.insert_inline(root, ino, target)?;
        let mut it = self.read_inode(root, ino)?;
        it.size = (target.len() as u64).into();
        it.nbytes = (target.len() as u64).into();
        self.put_inode(root, ino, &it)?;
        Ok(ino)
    }

    /// Hard link `ino` as `dir/name`.
    pub fn link(&mut self, root: u64, ino: u64, dir: u64, name: &[u8]) -> Result<()> {
        let mut it = self.read_inode(root, ino)?;
        let ft = FileType::from_mode(it.mode.get()).ok_or_else(|| Error::Invalid("bad mode".into()))?;
        if ft == FileType::Directory {
            return Err(Error::Invalid("hard links to directories are not allowed".into()));
        }
        self.add_link(root, dir, name, ino, ft.dir_type())?;
        it.nlink = (it.nlink.get() + 1).into();
        self.touch(&mut it, false);
        self.put_inode(root, ino, &it)
    }

    /// Remove `dir/name`; the inode goes when its last link does. Directories
    /// must be empty.
    pub fn unlink(&mut self, root: u64, dir: u64, name: &[u8]) -> Result<()> {
        let (ino, ft) = self.lookup_name(root, dir, name)?.ok_or_else(|| Error::NotFound(String::from_utf8_lossy(name).into_owned()))?;
        if ft == FT_DIR {
            let it = self.read_inode(root, ino)?;
            if it.size.get() != 0 {
                return Err(Error::Invalid(format!("{}: directory not empty", String::from_utf8_lossy(name))));
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
    pub fn rename(&mut self, root: u64, sdir: u64, sname: &[u8], ddir: u64, dname: &[u8]) -> Result<()> {
        let (ino, ft) = self.lookup_name(root, sdir, sname)?.ok_or_else(|| Error::NotFound(String::from_utf8_lossy(sname).into_owned()))?;
        if let Some((tino, tft)) = self.lookup_name(root, ddir, dname)? {
            if tino == ino {
                return Ok(());
            }
            if tft == FT_DIR || ft == FT_DIR {
                return Err(Error::Invalid(format!("{} exists", String::from_utf8_lossy(dname))));
            }
            self.unlink(root, ddir, dname)?;
        }
        if ft == FT_DIR {
            // Refuse moving a directory into itself.
            let mut cur = ddir;
            while cur != FIRST_FREE_OBJECTID {
                if cur == ino {
                    return Err(Error::Invalid("cannot move a directory into itself".into()));
                }
                let refs = self.range(root, Key::new(cur, INODE_REF_KEY, 0), Key::new(cur, INODE_REF_KEY, u64::MAX))?;
                cur = refs.first().map(|(k, _)| k.offset).ok_or_else(|| Error::corrupt(format!("inode {cur}"), "no parent"))?;
            }
        }
        self.remove_link(root, sdir, sname)?;
        self.add_link(root, ddir, dname, ino, ft)?;
        let mut it = self.read_inode(root, ino)?;
        self.touch(&mut it, false);
        self.put_inode(root, ino, &it)
    }

    /// Set (or with `None` remove) an xattr.
    pub fn set_xattr(&mut self, root: u64, ino: u64, name: &[u8], value: Option<&[u8]>) -> Result<()> {
        let nodesize = self.store.fs.sb.nodesize.get();
        limits::check_xattr(name, value, nodesize)?;
        // The kernel's rule (xattr_permission): user.* xattrs only on regular
        // files and directories; on anything else it refuses to set them and
        // cannot read them back.
        let ty = self.read_inode(root, ino)?.mode.get() & S_IFMT;
        if name.starts_with(b"user.") && ty != S_IFREG && ty != S_IFDIR {
            return Err(Error::Invalid(format!(
                "xattr {}: user.* xattrs are only allowed on regular files and directories",
                String::from_utf8_lossy(name)
            )));
        }
        let key = Key::new(ino, XATTR_ITEM_KEY, items::name_hash(name));
        let old = self.get(root, key)?.map(|d| parse_dir_items(&d)).transpose()?.unwrap_or_default();
        let mut body = Vec::new();
        let mut found = false;
        let transid = self.transid();
        let mut emit = |name: &[u8], data: &[u8], tid: u64| {
            body.extend_from_slice(
                DirItem {
                    location: DiskKey::new(0, 0, 0),
                    transid: tid.into(),
                    data_len: (data.len() as u16).into(),
                    name_len: (name.len() as u16).into(),
                    dir_type: FT_XATTR,
                }
                .as_bytes(),
            );
            body.extend_from_slice(name);
            body.extend_from_slice(data);
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
                None => return Err(Error::NotFound(format!("xattr {}", String::from_utf8_lossy(name)))),
            }
        }
        // xattrs whose names hash alike share one item, which must fit a leaf.
        let max = limits::max_item_size(nodesize);
        if body.len() > max {
            return Err(Error::Invalid(format!(
                "xattr {}: with the xattrs sharing its name hash the item would take {} bytes, more than a leaf's {max}",
                String::from_utf8_lossy(name),
                body.len()
            )));
        }
        if body.is_empty() {
            self.delete(root, key)?;
        } else {
            self.put(root, key, body)?;
        }
        let mut it = self.read_inode(root, ino)?;
        self.touch(&mut it, false);
        self.put_inode(root, ino, &it)
    }

    /// File extent items of `ino` overlapping [start, end), as (key offset, body).
    fn extents_overlapping(&mut self, root: u64, ino: u64, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        if let Some((k, d)) = self.last_le(root, Key::new(ino, EXTENT_DATA_KEY, start))? {
            if k.objectid == ino && k.item_type == EXTENT_DATA_KEY && k.offset < start {
                out.push((k.offset, d));
            }
        }
        if end > start {
            for (k, d) in self.range(root, Key::new(ino, EXTENT_DATA_KEY, start), Key::new(ino, EXTENT_DATA_KEY, end - 1))? {
                out.push((k.offset, d));
            }
        }
        let mut keep = Vec::new();
        for (off, d) in out {
            let fe = parse_file_extent(&d)?;
            if off.saturating_add(fe.file_len()) > start && off < end {
                keep.push((off, d));
            }
        }
        Ok(keep)
    }

    /// Remove file data in [start, end) (end = u64::MAX for "to EOF"),
    /// trimming extents that straddle the edges and dropping references.
    /// Updates `it.nbytes` (the caller stores `it`).
    fn punch(&mut self, root: u64, ino: u64, start: u64, end: u64, it: &mut InodeItem) -> Result<()> {
        for (off, d) in self.extents_overlapping(root, ino, start, end)? {
            let fe = parse_file_extent(&d)?;
            let flen = fe.file_len();
            self.delete(root, Key::new(ino, EXTENT_DATA_KEY, off))?;
            match fe.kind {
                FileExtentKind::Inline { .. } => {
                    it.nbytes = it.nbytes.get().saturating_sub(flen).into();
                    // An inline extent is only at 0 and smaller than a sector; the
                    // caller has read its bytes and rewrites them if needed.
                }
                FileExtentKind::Regular { prealloc, disk_bytenr, disk_num_bytes, offset, num_bytes } => {
                    if fe.compression != 0 && (off < start || off + flen > end) {
                        return Err(Error::Unsupported("partially overwriting a compressed extent".into()));
                    }
                    let header = FileExtentHeader {
                        generation: fe.generation.into(),
                        ram_bytes: fe.ram_bytes.into(),
                        compression: fe.compression,
                        encryption: fe.encryption,
                        other_encoding: fe.other_encoding.into(),
                        extent_type: if prealloc { FILE_EXTENT_PREALLOC } else { FILE_EXTENT_REG },
                    };
                    let piece = |o: u64, n: u64| {
                        let mut b = header.as_bytes().to_vec();
                        b.extend_from_slice(
                            FileExtentBody {
                                disk_bytenr: disk_bytenr.into(),
                                disk_num_bytes: disk_num_bytes.into(),
                                offset: o.into(),
                                num_bytes: n.into(),
                            }
                            .as_bytes(),
                        );
                        b
                    };
                    let backref_off = off.wrapping_sub(offset);
                    let mut pieces = 0i64;
                    let mut kept = 0u64;
                    if off < start {
                        self.insert(root, Key::new(ino, EXTENT_DATA_KEY, off), piece(offset, start - off))?;
                        pieces += 1;
                        kept += start - off;
                    }
                    if off.saturating_add(flen) > end {
                        let cut = end - off;
                        self.insert(root, Key::new(ino, EXTENT_DATA_KEY, end), piece(offset + cut, num_bytes - cut))?;
                        pieces += 1;
                        kept += num_bytes - cut;
                    }
                    if disk_bytenr != 0 {
                        it.nbytes = it.nbytes.get().saturating_sub(num_bytes - kept).into();
                        if pieces != 1 {
                            let gone = self.data_ref_delta(disk_bytenr, disk_num_bytes, root, ino, backref_off, pieces - 1)?;
                            if gone {
                                self.delete_csums(disk_bytenr, disk_num_bytes)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn drop_extents_from(&mut self, root: u64, ino: u64, from: u64, it: &mut InodeItem) -> Result<()> {
        self.punch(root, ino, from, u64::MAX, it)
    }

    /// Remove data checksums for [start, start+len), splitting items at the edges.
    pub fn delete_csums(&mut self, start: u64, len: u64) -> Result<()> {
        let end = start + len;
        let ss = self.store.fs.sectorsize as u64;
        let cs = self.store.fs.csum.size() as u64;
        let mut found = Vec::new();
        if let Some((k, d)) = self.last_le(CSUM_TREE_OBJECTID, Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, start))? {
            if k.objectid == EXTENT_CSUM_OBJECTID && k.item_type == EXTENT_CSUM_KEY && k.offset < start {
                found.push((k, d));
            }
        }
        found.extend(self.range(
            CSUM_TREE_OBJECTID,
            Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, start),
            Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, end - 1),
        )?);
        for (k, d) in found {
            let s = k.offset;
            let e = s + d.len() as u64 / cs * ss;
            if e <= start || s >= end {
                continue;
            }
            self.delete(CSUM_TREE_OBJECTID, k)?;
            if s < start {
                let n = ((start - s) / ss * cs) as usize;
                self.insert(CSUM_TREE_OBJECTID, k, d.get(..n).unwrap_or_default().to_vec())?;
            }
            if e > end {
                let n = ((end - s) / ss * cs) as usize;
                self.insert(
                    CSUM_TREE_OBJECTID,
                    Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, end),
                    d.get(n..).unwrap_or_default().to_vec(),
                )?;
            }
        }
        Ok(())
    }

    /// Current content of [start, start+len) of a file (holes read as zero),
    /// from the transaction's view of its extents. Every data sector read is
    /// verified against its checksum (as this transaction's csum tree has
    /// it) and a bad copy is replaced by a good one: a read-modify-write must
    /// never seal a damaged sector under a new, valid checksum. (Public for
    /// readers of a running transaction, the model tests among them.)
    pub fn read_range(&mut self, root: u64, ino: u64, start: u64, len: u64) -> Result<Vec<u8>> {
        // Queued direct bios may be writing exactly these sectors.
        self.finish_direct()?;
        let nodatasum = self.read_inode(root, ino)?.flags.get() & INODE_NODATASUM != 0;
        let ss = u64::from(self.store.fs.sectorsize);
        let n = usize::try_from(len).map_err(|_| Error::Invalid("read too large".into()))?;
        let mut out = vec![0u8; n];
        let end = start.checked_add(len).ok_or_else(|| Error::Invalid(format!("range {start}+{len} overflows")))?;
        for (off, d) in self.extents_overlapping(root, ino, start, end)? {
            let fe = parse_file_extent(&d)?;
            let from = off.max(start);
            let to = off.saturating_add(fe.file_len()).min(end);
            let dst = out.get_mut((from - start) as usize..(to - start) as usize).ok_or_else(|| Error::Invalid("range".into()))?;
            match fe.kind {
                FileExtentKind::Inline { data } if fe.compression == 0 => {
                    let src = data.get((from - off) as usize..(to - off) as usize).unwrap_or_default();
                    dst[..src.len()].copy_from_slice(src);
                }
                FileExtentKind::Regular { prealloc: false, disk_bytenr, offset, .. } if disk_bytenr != 0 && fe.compression == 0 => {
                    let at = disk_bytenr
                        .checked_add(offset)
                        .and_then(|x| x.checked_add(from - off))
                        .ok_or_else(|| Error::corrupt(format!("inode {root}/{ino} extent at {off}"), "disk address overflows"))?;
                    // Whole sectors around the bytes wanted.
                    let a = at - at % ss;
                    let b = (at + dst.len() as u64).next_multiple_of(ss);
                    let mut sectors = vec![0u8; (b - a) as usize];
                    let csums = if nodatasum { None } else { Some(self.data_csums(a, b - a)?) };
                    let label = self.inode_label(root, ino);
                    let describe = |l: u64| {
                        let file_off = if l >= at { from.saturating_add(l - at) } else { from.saturating_sub(at - l) };
                        format!("{label} file offset {file_off}")
                    };
                    let fs = &self.store.fs;
                    crate::fs::data::read_verified(
                        fs.volume(),
                        fs.csum,
                        ss,
                        a,
                        &mut sectors,
                        csums.as_deref(),
                        &describe,
                        &mut |w| fs.warn(w),
                    )?;
                    let skip = (at - a) as usize;
                    dst.copy_from_slice(&sectors[skip..skip + dst.len()]);
                }
                FileExtentKind::Regular { .. } if fe.compression == 0 => {}
                _ => return Err(Error::Unsupported("rewriting part of a compressed extent".into())),
            }
        }
        Ok(out)
    }

    /// Checksums of each sector of [start, start+len) as this transaction's
    /// csum tree holds them (`None` where it has none).
    pub fn data_csums(&mut self, start: u64, len: u64) -> Result<Vec<Option<CsumBytes>>> {
        let ss = u64::from(self.store.fs.sectorsize);
        let cs = self.store.fs.csum.size();
        let nsect = usize::try_from(len.div_ceil(ss)).map_err(|_| Error::Invalid("range too large".into()))?;
        let mut out = vec![None; nsect];
        let end = start.saturating_add(len);
        let mut found = Vec::new();
        if let Some((k, d)) = self.last_le(CSUM_TREE_OBJECTID, Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, start))? {
            if k.objectid == EXTENT_CSUM_OBJECTID && k.item_type == EXTENT_CSUM_KEY && k.offset < start {
                found.push((k, d));
            }
        }
        if end > start {
            found.extend(self.range(
                CSUM_TREE_OBJECTID,
                Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, start),
                Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, end - 1),
            )?);
        }
        for (k, d) in found {
            for (i, c) in d.chunks_exact(cs).enumerate() {
                let Some(s) = k.offset.checked_add(i as u64 * ss) else { break };
                if s >= end {
                    break;
                }
                if s >= start && (s - start) % ss == 0 {
                    let mut v = [0u8; CSUM_SIZE];
                    v[..cs].copy_from_slice(c);
                    if let Some(slot) = out.get_mut(((s - start) / ss) as usize) {
                        *slot = Some(v);
                    }
                }
            }
        }
        Ok(out)
    }

    /// How messages name an inode: the path a command gave for it, when it
    /// said (see [`Transaction::name_inode`]), else its tree and number.
    pub fn inode_label(&self, root: u64, ino: u64) -> String {
        match self.names.get(&(root, ino)) {
            Some(p) => p.clone(),
            None => format!("inode {root}/{ino}"),
        }
    }

    /// Remember the path a command named an inode by, for messages.
    pub fn name_inode(&mut self, root: u64, ino: u64, path: &str) {
        self.names.insert((root, ino), path.to_string());
    }

    /// Write `buf` to every copy of `logical`, in pieces of at most `max_bio`
    /// bytes that never cross a stripe or chunk boundary. Each copy is written
    /// by its own thread: the copies live on different images (or far apart
    /// on one), and the host writes them in parallel.
    pub fn write_data(&self, logical: u64, buf: &[u8], opts: &WriteOpts, report: &mut WriteReport) -> Result<()> {
        let vol = self.store.fs.volume();
        let copies = vol.num_copies(logical)?;
        let write_copy = |m: usize| -> Result<Vec<BioRecord>> {
            let mut bios = Vec::new();
            for (off, addr, n) in vol.copy_segments(logical, buf.len(), m)? {
                let dev = vol.device(addr.devid)?;
                let mut done = 0;
                while done < n {
                    let k = (n - done).min(opts.max_bio.max(4096));
                    let rec = BioRecord {
                        logical: logical + (off + done) as u64,
                        len: k as u64,
                        devid: addr.devid,
                        physical: addr.physical + done as u64,
                        mirror: m,
                    };
                    let hook = |stage| {
                        if let Some(h) = &opts.on_bio {
                            h.call(&rec, stage)
                        }
                    };
                    hook(BioStage::Submitted);
                    let r = dev.write_all_at(rec.physical, &buf[off + done..off + done + k]);
                    hook(if r.is_ok() { BioStage::Completed } else { BioStage::Failed });
                    r?;
                    bios.push(rec);
                    done += k;
                }
                dev.start_writeback(addr.physical, n as u64);
            }
            Ok(bios)
        };
        let results: Vec<Result<Vec<BioRecord>>> = if copies == 1 {
            vec![write_copy(0)]
        } else {
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..copies).map(|m| s.spawn(move || write_copy(m))).collect();
                hs.into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(Error::Invalid("a mirror writer thread panicked".into()))))
                    .collect()
            })
        };
        for r in results {
            report.bios.extend(r?);
        }
        Ok(())
    }

    /// Checksums of every sector of `data`, back to back.
    fn compute_csums(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.store.fs.csum.compute_sectors(data, self.store.fs.sectorsize as usize, &mut out);
        out
    }

    /// Insert checksum items for the sectors at `logical` (`sums` as from
    /// [`Self::compute_csums`]).
    fn insert_csums(&mut self, logical: u64, sums: &[u8]) -> Result<()> {
        let ss = self.store.fs.sectorsize as u64;
        let cs = self.store.fs.csum.size();
        // Keep each csum item well under a leaf.
        let per_item = ((self.store.fs.sb.nodesize.get() as usize - 101) / 2 / cs).max(1);
        for (i, body) in sums.chunks(per_item * cs).enumerate() {
            let at = logical + (i * per_item) as u64 * ss;
            self.insert(CSUM_TREE_OBJECTID, Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, at), body.to_vec())?;
        }
        Ok(())
    }

    /// Write `data` at byte `offset` of regular file `ino` (buffered: the
    /// bytes are copied into the engine's buffer first, then written).
    pub fn write_at(&mut self, root: u64, ino: u64, offset: u64, data: &[u8], opts: &WriteOpts, report: &mut WriteReport) -> Result<()> {
        self.write_impl(root, ino, offset, Payload::Borrowed(&Plain(data)), opts, report, false)
    }

    /// Direct write from a source other threads may be changing: see
    /// [`crate::fs::direct`]. Returns when every bio finished on every
    /// mirror; on any bio error the transaction must be dropped (it would
    /// record extents whose bytes are not all on disk).
    pub fn write_direct(&mut self, root: u64, ino: u64, offset: u64, src: &dyn Source, opts: &WriteOpts, report: &mut WriteReport) -> Result<()> {
        self.write_impl(root, ino, offset, Payload::Borrowed(src), opts, report, true)?;
        self.finish_direct()
    }

    /// Write pages the caller hands over (filled, then given up: nobody else
    /// can change them), buffered or `direct`. When they start on a sector
    /// and end on one or past the file's end they are the engine's pages for
    /// this write as they are, with no copy; otherwise they are copied like a
    /// borrowed buffer. Pages from a [`crate::fs::direct::PagePool`] go back
    /// to it once written.
    ///
    /// Direct bios are only queued: they run while the caller prepares its
    /// next pages, and finish before the transaction reads file data back or
    /// commits. A bio error surfaces from a later write or from the commit,
    /// and the transaction then commits nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn write_owned(&mut self, root: u64, ino: u64, offset: u64, pages: Bounce, direct: bool, opts: &WriteOpts, report: &mut WriteReport) -> Result<()> {
        self.write_impl(root, ino, offset, Payload::Owned(pages), opts, report, direct)
    }

    /// Wait for every direct bio queued in this transaction; the first error.
    pub fn finish_direct(&mut self) -> Result<()> {
        match &mut self.direct {
            Some(dw) => dw.finish(),
            None => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write_impl(
        &mut self,
        root: u64,
        ino: u64,
        offset: u64,
        payload: Payload<'_>,
        opts: &WriteOpts,
        report: &mut WriteReport,
        direct: bool,
    ) -> Result<()> {
        let mut it = self.read_inode(root, ino)?;
        if it.mode.get() & S_IFMT != S_IFREG {
            return Err(Error::Invalid(format!("inode {ino} is not a regular file")));
        }
        let src_len = match &payload {
            Payload::Borrowed(s) => s.len(),
            Payload::Owned(p) => p.len(),
        };
        if src_len == 0 {
            return Ok(());
        }
        let ss = self.store.fs.sectorsize as u64;
        limits::check_file_range(offset, src_len as u64)?;
        let end = offset.checked_add(src_len as u64).ok_or_else(|| Error::Invalid("offset overflow".into()))?;
        let mut a = offset / ss * ss;
        let b = end.div_ceil(ss) * ss;
        // An inline extent (always at 0, < 1 sector) becomes part of the new
        // extent when the write starts in its sector; a write further on
        // first moves it to a regular extent of its own sector, or the new
        // extent would start at 0 and hold every byte up to the write.
        if let Some(first) = self.get(root, Key::new(ino, EXTENT_DATA_KEY, 0))? {
            if matches!(parse_file_extent(&first)?.kind, FileExtentKind::Inline { .. }) {
                if offset < ss {
                    a = 0;
                } else {
                    let head = self.read_range(root, ino, 0, ss)?;
                    let mut r = WriteReport::default();
                    self.write_impl(root, ino, 0, Payload::Borrowed(&Plain(&head)), opts, &mut r, false)?;
                    report.bios.extend(r.bios);
                    it = self.read_inode(root, ino)?;
                }
            }
        }
        let old_size = it.size.get();
        // The engine's own pages: existing bytes of the edge sectors, then the
        // caller's. Pages handed over that cover [a, b) already are them.
        let base = (offset - a) as usize;
        let (bounce, live) = match payload {
            Payload::Owned(mut pages) if a == offset && (end == b || end >= old_size) && (b - a) as usize <= pages.capacity() => {
                pages.set_len((b - a) as usize);
                pages.bytes_mut()[src_len..].fill(0);
                (pages, None)
            }
            payload => {
                let mut bounce = Bounce::zeroed((b - a) as usize);
                let valid_end = old_size.min(b);
                if a < offset && a < old_size {
                    let n = (offset.min(valid_end)) - a;
                    let head = self.read_range(root, ino, a, n)?;
                    bounce.bytes_mut()[..head.len()].copy_from_slice(&head);
                }
                if end < b && end < old_size {
                    let tail = self.read_range(root, ino, end, valid_end - end)?;
                    let s = (end - a) as usize;
                    bounce.bytes_mut()[s..s + tail.len()].copy_from_slice(&tail);
                }
                let live = match payload {
                    Payload::Borrowed(src) => {
                        src.copy_to(0, &mut bounce.bytes_mut()[base..base + src_len]);
                        Some(src)
                    }
                    Payload::Owned(pages) => {
                        bounce.bytes_mut()[base..base + src_len].copy_from_slice(pages.bytes());
                        None
                    }
                };
                (bounce, live)
            }
        };
        let buf = bounce.bytes();

        // A small file lives inline in its leaf, as the kernel's buffered
        // writes make it (cow_file_range_inline): the whole file under
        // max_inline and one sector. Direct writes never inline.
        let new_size = old_size.max(end);
        if !direct && a == 0 && new_size <= MAX_INLINE && new_size < ss {
            self.punch(root, ino, 0, b, &mut it)?;
            self.insert_inline(root, ino, &buf[..new_size as usize])?;
            it.nbytes = (it.nbytes.get() + new_size).into();
            report.bytes += src_len as u64;
            it.size = new_size.into();
            self.touch(&mut it, true);
            self.put_inode(root, ino, &it)?;
            return Ok(());
        }

        let nocow = it.flags.get() & INODE_NODATACOW != 0;
        let nosum = it.flags.get() & INODE_NODATASUM != 0 || nocow;
        if nocow && self.try_write_in_place(root, ino, a, buf, opts, report)? {
            report.bytes += src_len as u64;
            if end > old_size {
                it.size = end.into();
            }
            self.touch(&mut it, true);
            self.put_inode(root, ino, &it)?;
            return Ok(());
        }
        // Allocate every piece, write (or, direct, queue) every copy of it,
        // then record it in the trees. Nothing recorded reaches a committed
        // root before every bio finished: the commit waits for them, and a
        // failed one fails it.
        let mut pieces = Vec::new();
        let mut pos = a;
        while pos < b {
            let want = (b - pos).min(MAX_EXTENT);
            let (logical, got) = self.store.alloc_data(want)?;
            pieces.push((pos, logical, got));
            pos += got;
        }
        let sums = if direct {
            self.write_pieces_direct(&pieces, a, bounce, live.map(|src| (src, base)), nosum, opts, report)?
        } else {
            self.write_pieces_buffered(&pieces, a, bounce.bytes(), nosum, opts, report)?
        };
        // Without NO_HOLES, a gap between the old end and the write is an explicit hole.
        let no_holes = self.store.fs.sb.has_incompat(INCOMPAT_NO_HOLES);
        let old_end = old_size.div_ceil(ss) * ss;
        self.punch(root, ino, a, b, &mut it)?;
        if !no_holes && a > old_end {
            self.insert_extent_item(root, ino, old_end, 0, a - old_end, a - old_end)?;
        }
        for (i, &(pos, logical, got)) in pieces.iter().enumerate() {
            if let Some(sum) = sums.get(i) {
                // Checksums from the same engine-owned bytes every mirror got.
                self.insert_csums(logical, sum)?;
            }
            self.add_data_extent(logical, got, root, ino, pos)?;
            self.insert_extent_item(root, ino, pos, logical, got, got)?;
            it.nbytes = (it.nbytes.get() + got).into();
        }
        report.bytes += src_len as u64;
        if end > old_size {
            it.size = end.into();
        }
        self.touch(&mut it, true);
        self.put_inode(root, ino, &it)?;
        Ok(())
    }

    /// Checksums of each piece's sectors (`pieces` as (file offset, logical,
    /// length), `buf` starting at file offset `a`), one `Vec` per piece.
    fn piece_csums(&self, pieces: &[(u64, u64, u64)], a: u64, all: &[u8]) -> Vec<Vec<u8>> {
        let ss = self.store.fs.sectorsize as u64;
        let cs = self.store.fs.csum.size();
        pieces
            .iter()
            .map(|&(pos, _, got)| {
                let first = ((pos - a) / ss) as usize * cs;
                all[first..first + (got / ss) as usize * cs].to_vec()
            })
            .collect()
    }

    /// Buffered: every copy of every piece written, and the checksums
    /// computed on other threads meanwhile from the same engine-owned bytes,
    /// which nothing changes until all are done. The copies cost CPU (the
    /// host's page-cache copy), so the sectors are split among as many
    /// threads as there are cores and a slow checksum does not leave one
    /// core to finish alone.
    fn write_pieces_buffered(&self, pieces: &[(u64, u64, u64)], a: u64, buf: &[u8], nosum: bool, opts: &WriteOpts, report: &mut WriteReport) -> Result<Vec<Vec<u8>>> {
        let ss = self.store.fs.sectorsize as usize;
        std::thread::scope(|s| -> Result<Vec<Vec<u8>>> {
            let csummers: Vec<_> = if nosum {
                Vec::new()
            } else {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
                let per = (buf.len() / ss).div_ceil(cores).max(1) * ss;
                buf.chunks(per).map(|part| s.spawn(move || self.compute_csums(part))).collect()
            };
            for &(pos, logical, got) in pieces {
                let off = (pos - a) as usize;
                self.write_data(logical, &buf[off..off + got as usize], opts, report)?;
            }
            let mut all = Vec::new();
            for h in csummers {
                all.extend(h.join().map_err(|_| Error::Invalid("checksum thread panicked".into()))?);
            }
            Ok(if nosum { Vec::new() } else { self.piece_csums(pieces, a, &all) })
        })
    }

    /// Direct: the engine's pages go to the bios of every piece as they are
    /// (nothing else can change them until every mirror has them), queued on
    /// the devices' own threads; the checksums are computed here meanwhile.
    /// `live` (tests only) is the caller's source and where it starts.
    #[allow(clippy::too_many_arguments)]
    fn write_pieces_direct(
        &mut self,
        pieces: &[(u64, u64, u64)],
        a: u64,
        bounce: Bounce,
        live: Option<(&dyn Source, usize)>,
        nosum: bool,
        opts: &WriteOpts,
        report: &mut WriteReport,
    ) -> Result<Vec<Vec<u8>>> {
        let vol = self.store.fs.volume();
        if self.direct.is_none() {
            let dw = DirectWriter::new(vol, opts.max_bio)?;
            report.notices.extend(dw.notices.iter().cloned());
            self.direct = Some(dw);
        }
        let Some(dw) = self.direct.as_mut() else { return Err(Error::Invalid("no direct writer".into())) };
        dw.set_max_bio(opts.max_bio);
        #[cfg(test)]
        {
            dw.no_bounce = self.direct_no_bounce;
            dw.fail_at = self.direct_fail_at;
        }
        let pages = Arc::new(bounce);
        for &(pos, logical, got) in pieces {
            let off = (pos - a) as usize;
            report.bios.extend(dw.submit(vol, logical, &pages, off..off + got as usize, opts.on_bio.as_ref(), live)?);
        }
        if nosum {
            return Ok(Vec::new());
        }
        let mut all = Vec::new();
        self.store.fs.csum.compute_sectors(pages.bytes(), self.store.fs.sectorsize as usize, &mut all);
        Ok(self.piece_csums(pieces, a, &all))
    }

    /// An uncompressed inline extent at file offset 0 holding `data`.
    fn insert_inline(&mut self, root: u64, ino: u64, data: &[u8]) -> Result<()> {
        let mut item = FileExtentHeader {
            generation: self.transid().into(),
            ram_bytes: (data.len() as u64).into(),
            compression: 0,
            encryption: 0,
            other_encoding: 0.into(),
            extent_type: FILE_EXTENT_INLINE,
        }
        .as_bytes()
        .to_vec();
        item.extend_from_slice(data);
        self.insert(root, Key::new(ino, EXTENT_DATA_KEY, 0), item)
    }

    fn insert_extent_item(&mut self, root: u64, ino: u64, file_off: u64, disk: u64, disk_len: u64, len: u64) -> Result<()> {
        let mut b = FileExtentHeader {
            generation: self.transid().into(),
            ram_bytes: disk_len.into(),
            compression: 0,
            encryption: 0,
            other_encoding: 0.into(),
            extent_type: FILE_EXTENT_REG,
        }
        .as_bytes()
        .to_vec();
        b.extend_from_slice(
            FileExtentBody {
                disk_bytenr: disk.into(),
                disk_num_bytes: if disk == 0 { 0.into() } else { disk_len.into() },
                offset: 0.into(),
                num_bytes: len.into(),
            }
            .as_bytes(),
        );
        self.insert(root, Key::new(ino, EXTENT_DATA_KEY, file_off), b)
    }

    /// NODATACOW: overwrite in place when [a, a+len) is covered by regular,
    /// uncompressed extents referenced only by this file range. Returns false
    /// when it is not (the caller then COWs, as the kernel falls back).
    fn try_write_in_place(&mut self, root: u64, ino: u64, a: u64, buf: &[u8], opts: &WriteOpts, report: &mut WriteReport) -> Result<bool> {
        // An extent of this transaction may still have direct bios in flight.
        self.finish_direct()?;
        // A registered reader reads the committed bytes an in-place write
        // would change under it: copy on write instead while one is there.
        if self.store.fs.volume().oldest_reader(self.transid())?.is_some() {
            return Ok(false);
        }
        let end = a + buf.len() as u64;
        let exts = self.extents_overlapping(root, ino, a, end)?;
        let mut pos = a;
        let mut plan = Vec::new();
        for (off, d) in &exts {
            let fe = parse_file_extent(d)?;
            let FileExtentKind::Regular { prealloc: false, disk_bytenr, disk_num_bytes, offset, .. } = fe.kind else { return Ok(false) };
            if *off > pos || disk_bytenr == 0 || fe.compression != 0 {
                return Ok(false);
            }
            let key = Key::new(disk_bytenr, EXTENT_ITEM_KEY, disk_num_bytes);
            let Some(body) = self.get(EXTENT_TREE_OBJECTID, key)? else { return Ok(false) };
            if items::parse_extent_item(key, &body)?.refs != 1 {
                return Ok(false);
            }
            let to = (off + fe.file_len()).min(end);
            plan.push((disk_bytenr + offset + (pos - off), pos, to));
            pos = to;
        }
        if pos < end {
            return Ok(false);
        }
        for (logical, from, to) in plan {
            self.write_data(logical, &buf[(from - a) as usize..(to - a) as usize], opts, report)?;
        }
        Ok(true)
    }

    /// Set a regular file's size, dropping data past it or extending with a hole.
    pub fn truncate(&mut self, root: u64, ino: u64, size: u64) -> Result<()> {
        limits::check_file_range(size, 0)?;
        let mut it = self.read_inode(root, ino)?;
        if it.mode.get() & S_IFMT != S_IFREG {
            return Err(Error::Invalid(format!("inode {ino} is not a regular file")));
        }
        let ss = self.store.fs.sectorsize as u64;
        let old = it.size.get();
        if size < old {
            let keep = size.div_ceil(ss) * ss;
            // Zero the tail of the last kept sector so a later extension reads
            // zeros (up to the old end: past it the sector holds zeros already,
            // and a last sector ending at 2^63 may not be written to its end).
            if size % ss != 0 {
                let z = vec![0u8; (keep.min(old) - size) as usize];
                let mut r = WriteReport::default();
                self.write_at(root, ino, size, &z, &WriteOpts::default(), &mut r)?;
                it = self.read_inode(root, ino)?;
            }
            self.punch(root, ino, keep, u64::MAX, &mut it)?;
        } else if size > old && !self.store.fs.sb.has_incompat(INCOMPAT_NO_HOLES) {
            let from = old.div_ceil(ss) * ss;
            let to = size.div_ceil(ss) * ss;
            if to > from {
                self.insert_extent_item(root, ino, from, 0, to - from, to - from)?;
            }
        }
        it.size = size.into();
        self.touch(&mut it, true);
        self.put_inode(root, ino, &it)
    }
}
