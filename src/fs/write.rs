//! Namespace and file-data changes inside a [`Transaction`]: create, mkdir,
//! symlink, hard links, unlink/rmdir, rename, xattrs, writes at any offset
//! (copy-on-write, or in place for NODATACOW extents that are not shared)
//! and truncation.
//!
//! Data is written to its new location (every mirror, from the engine's own
//! buffer, never the caller's) before any item naming it is inserted, so the
//! commit's superblock write is the single point where the change appears.
//! Extents written are regular, inline for a whole small file, and
//! compressed as the kernel compresses them (asked for, or by the inode's
//! flag or property; see `Transaction::compress_policy`). Extents of any
//! kind are trimmed, split and read back for the edge sectors of a write,
//! compressed ones included (decompressed after their checksums pass).
//!
//! Names: an inode's names in one directory share an INODE_REF item until
//! it would pass a leaf's largest item, then go into INODE_EXTREF items, as
//! the kernel keeps them.

use zerocopy::{FromZeros, IntoBytes};

use crate::error::{Error, Result};
use crate::format::items::{self, parse_dir_items, parse_file_extent, FileExtentKind};
use crate::format::limits;
use crate::format::*;
use crate::format::compress::{self, Compression};
use crate::fs::direct::{Plain, Source};
use crate::volumes::bio::{Bounce, DirectWriter, Live};
pub use crate::volumes::bio::{BioFn, BioHook, BioRecord, BioStage};
use crate::fs::props;
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
    /// File bytes written as compressed extents, and the bytes those
    /// extents take on disk (one copy).
    pub compressed: u64,
    pub compressed_disk: u64,
}

/// Options for file data writes.
#[derive(Clone, Debug)]
pub struct WriteOpts {
    /// Largest single device write (a "bio"); pieces never cross a stripe.
    pub max_bio: usize,
    pub on_bio: Option<BioHook>,
    /// Compress what is written, as the kernel's compress= (or, `force`,
    /// compress-force=) mount option would; files flagged or with the
    /// property are compressed without it.
    pub compress: Option<CompressOpts>,
}

impl Default for WriteOpts {
    fn default() -> Self {
        WriteOpts { max_bio: 1 << 20, on_bio: None, compress: None }
    }
}

/// Compression asked for a write: algorithm, level (None: its default) and
/// whether it is forced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressOpts {
    pub kind: Compression,
    pub level: Option<i32>,
    pub force: bool,
}

/// How one write compresses (see `Transaction::compress_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Policy {
    kind: Compression,
    level: Option<i32>,
    /// A chunk that does not compress marks the file NOCOMPRESS, and
    /// nothing after it in this write is compressed.
    mark: bool,
}

/// File data compressed at most this much at a time: a compressed extent
/// never covers more (BTRFS_MAX_UNCOMPRESSED).
const CHUNK: usize = compress::MAX_UNCOMPRESSED;

/// One chunk compressed: the bytes to write (padded with zeros to a
/// sector) and their checksums.
struct Compressed {
    data: Vec<u8>,
    sums: Vec<u8>,
}

/// One data extent written and waiting for its items: file offset,
/// logical address, bytes on disk, file bytes, compression, checksums
/// (empty: none).
struct Rec {
    pos: u64,
    logical: u64,
    disk_len: u64,
    len: u64,
    compression: u8,
    sums: Vec<u8>,
}

/// Plain extents from (file offset, logical, length) pieces and their checksums.
fn plain_recs(pieces: &[(u64, u64, u64)], sums: Vec<Vec<u8>>) -> Vec<Rec> {
    let mut sums = sums.into_iter();
    pieces
        .iter()
        .map(|&(pos, logical, got)| Rec { pos, logical, disk_len: got, len: got, compression: COMPRESS_NONE, sums: sums.next().unwrap_or_default() })
        .collect()
}

/// Compress `buf` (of which the first `valid` bytes are file data, the rest
/// zeros past the end of the file) in chunks of [`CHUNK`] bytes, `threads`
/// at a time. Per chunk: `Some` when it compressed by at least a sector;
/// `None` when it did not, or holds a sector or less of data (never worth
/// it, and not counted as a failure, as the kernel skips such ranges). With
/// `p.mark`, the first chunk that did not compress ends compression: it and
/// every chunk after it are `None` whatever the thread count. Also the
/// index of the first chunk that did not compress.
fn compress_chunks(
    buf: &[u8],
    valid: usize,
    ss: usize,
    p: Policy,
    csum: CsumType,
    threads: usize,
) -> std::result::Result<(Vec<Option<Compressed>>, Option<usize>), compress::CompressError> {
    enum Outcome {
        Skipped,
        Failed,
        Done(Compressed),
    }
    let one = |k: usize| -> std::result::Result<Outcome, compress::CompressError> {
        let cs = k * CHUNK;
        let vend = ((k + 1) * CHUNK).min(valid);
        if vend <= cs || vend - cs <= ss {
            return Ok(Outcome::Skipped);
        }
        let Some(mut data) = compress::compress(p.kind, &buf[cs..vend], ss as u32, p.level)? else { return Ok(Outcome::Failed) };
        data.resize(data.len().div_ceil(ss) * ss, 0);
        let mut sums = Vec::new();
        csum.compute_sectors(&data, ss, &mut sums);
        Ok(Outcome::Done(Compressed { data, sums }))
    };
    let n = buf.len().div_ceil(CHUNK);
    let mut out: Vec<Option<Compressed>> = (0..n).map(|_| None).collect();
    let mut failed = None;
    let mut i = 0;
    while i < n {
        let hi = (i + threads.max(1)).min(n);
        let results: Vec<_> = if hi - i == 1 {
            vec![one(i)]
        } else {
            std::thread::scope(|s| {
                let hs = (i..hi)
                    .map(|k| crate::threads::spawn_scoped(s, "compress", move || one(k)))
                    .collect::<Result<Vec<_>>>()
                    .map_err(|e| compress::CompressError::Compressor { algo: "thread", detail: e.to_string() })?;
                Ok::<_, compress::CompressError>(
                    hs.into_iter()
                        .map(|h| h.join().unwrap_or_else(|_| Err(compress::CompressError::Compressor { algo: "thread", detail: "panicked".into() })))
                        .collect(),
                )
            })?
        };
        for (k, r) in (i..hi).zip(results) {
            match r? {
                Outcome::Skipped => {}
                Outcome::Done(c) => out[k] = Some(c),
                Outcome::Failed => {
                    failed = failed.or(Some(k));
                    if p.mark {
                        return Ok((out, failed));
                    }
                }
            }
        }
        i = hi;
    }
    Ok((out, failed))
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
        self.add_inode_ref(root, ino, dir, name, index)?;
        d.size = (d.size.get() + 2 * name.len() as u64).into();
        self.touch(&mut d, true);
        self.put_inode(root, dir, &d)
    }

    /// Record `dir/name` (directory index `index`) among the back
    /// references of inode `ino`, as the kernel's btrfs_insert_inode_ref
    /// does: in the INODE_REF item of (ino, dir), which every name of `ino`
    /// in `dir` shares, while it stays within a leaf's largest item; past
    /// that in an INODE_EXTREF item keyed by the hash of (dir, name), shared
    /// only by names whose hashes collide.
    ///
    /// Extended refs need the EXTENDED_IREF incompat feature. The kernel
    /// refuses the link (EMLINK) without it; btrs turns it on instead: it is
    /// one of the features the kernel lets a mounted filesystem turn on
    /// (BTRFS_FEATURE_INCOMPAT_SAFE_SET, through sysfs), and every kernel
    /// since 3.7 reads it.
    fn add_inode_ref(&mut self, root: u64, ino: u64, dir: u64, name: &[u8], index: u64) -> Result<()> {
        let max = limits::max_item_size(self.store.fs.sb.nodesize.get());
        let entry = items::InodeRefEntry { parent: dir, index, name: name.to_vec() };
        let rkey = Key::new(ino, INODE_REF_KEY, dir);
        let mut refs = match self.get(root, rkey)? {
            Some(d) => items::parse_inode_refs(rkey, &d)?,
            None => Vec::new(),
        };
        refs.push(entry.clone());
        let body = items::encode_inode_refs(&refs);
        if body.len() <= max {
            self.put(root, rkey, body)?;
            return Ok(());
        }
        self.set_incompat(INCOMPAT_EXTENDED_IREF);
        let xkey = Key::new(ino, INODE_EXTREF_KEY, items::extref_hash(dir, name));
        let mut xrefs = match self.get(root, xkey)? {
            Some(d) => items::parse_inode_extrefs(&d)?,
            None => Vec::new(),
        };
        xrefs.push(entry);
        let body = items::encode_inode_extrefs(&xrefs);
        if body.len() > max {
            return Err(Error::Invalid(format!(
                "{}: the extended inode refs of inode {ino} sharing its hash would take {} bytes, more than a leaf's {max}",
                String::from_utf8_lossy(name),
                body.len()
            )));
        }
        self.put(root, xkey, body)?;
        Ok(())
    }

    /// Remove `dir/name` from the back references of inode `ino` (its
    /// INODE_REF item, else its INODE_EXTREF item, as the kernel's
    /// btrfs_del_inode_ref looks); returns the name's directory index.
    fn remove_inode_ref(&mut self, root: u64, ino: u64, dir: u64, name: &[u8]) -> Result<u64> {
        let rkey = Key::new(ino, INODE_REF_KEY, dir);
        if let Some(d) = self.get(root, rkey)? {
            let mut refs = items::parse_inode_refs(rkey, &d)?;
            if let Some(i) = refs.iter().position(|r| r.name == name) {
                let r = refs.remove(i);
                if refs.is_empty() {
                    self.delete(root, rkey)?;
                } else {
                    self.put(root, rkey, items::encode_inode_refs(&refs))?;
                }
                return Ok(r.index);
            }
        }
        let xkey = Key::new(ino, INODE_EXTREF_KEY, items::extref_hash(dir, name));
        let missing = || {
            Error::corrupt(format!("inode {root}/{ino}"), format!("no inode ref or extref for {} in directory {dir}", String::from_utf8_lossy(name)))
        };
        let d = self.get(root, xkey)?.ok_or_else(missing)?;
        let mut refs = items::parse_inode_extrefs(&d)?;
        let i = refs.iter().position(|r| r.parent == dir && r.name == name).ok_or_else(missing)?;
        let r = refs.remove(i);
        if refs.is_empty() {
            self.delete(root, xkey)?;
        } else {
            self.put(root, xkey, items::encode_inode_extrefs(&refs))?;
        }
        Ok(r.index)
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
        let index = self.remove_inode_ref(root, ino, dir, name)?;
        self.delete(root, Key::new(dir, DIR_INDEX_KEY, index))?;
        let mut d = self.read_inode(root, dir)?;
        d.size = d.size.get().saturating_sub(2 * name.len() as u64).into();
        self.touch(&mut d, true);
        self.put_inode(root, dir, &d)?;
        Ok(ino)
    }

    /// A new inode linked as `dir/name`. `mode` includes the S_IF type bits.
    /// The new inode inherits from `dir` its compression and NODATACOW
    /// flags and its compression property, as the kernel's
    /// btrfs_inherit_iflags and btrfs_inode_inherit_props give them.
    pub fn create(&mut self, root: u64, dir: u64, name: &[u8], mode: u32, flags: u64) -> Result<u64> {
        let ft = FileType::from_mode(mode).ok_or_else(|| Error::Invalid(format!("bad mode {mode:o}")))?;
        let dir_flags = self.read_inode(root, dir)?.flags.get();
        let flags = props::inherit_flags(flags, dir_flags, mode);
        let prop = props::inherit_compression(self.xattr(root, dir, props::COMPRESSION)?.as_deref(), flags, mode);
        let flags = prop.map_or(flags, |(_, f)| f);
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
        if let Some((value, _)) = prop {
            self.put_xattr(root, ino, props::COMPRESSION, Some(value))?;
        }
        self.add_link(root, dir, name, ino, ft.dir_type())?;
        Ok(ino)
    }

    /// A symlink: the target is stored as an inline extent, as the kernel does.
    pub fn symlink(&mut self, root: u64, dir: u64, name: &[u8], target: &[u8]) -> Result<u64> {
        limits::check_symlink_target(target, self.store.fs.sb.nodesize.get(), self.store.fs.sectorsize)?;
        let ino = self.create(root, dir, name, S_IFLNK | 0o777, 0)?;
        self.insert_inline(root, ino, target, target.len() as u64, COMPRESS_NONE)?;
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
                    return Err(Error::corrupt(format!("inode {cur} of tree {root}"), "its parent chain loops"));
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
    /// A `btrfs.*` name is an inode property, taken as the kernel takes it
    /// (see [`props`]): refused unless valid, and the inode's flags change
    /// with it.
    pub fn set_xattr(&mut self, root: u64, ino: u64, name: &[u8], value: Option<&[u8]>) -> Result<()> {
        limits::check_xattr(name, value, self.store.fs.sb.nodesize.get())?;
        let mut it = self.read_inode(root, ino)?;
        if let Some(v) = value {
            limits::check_xattr_namespace(name, v, it.mode.get() & S_IFMT == S_IFDIR)
                .map_err(|e| Error::Invalid(format!("{}: {e}", self.inode_label(root, ino))))?;
        }
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
        } else {
            // The kernel's rule (xattr_permission): user.* xattrs only on
            // regular files and directories; on anything else it refuses to
            // set them and cannot read them back.
            let ty = it.mode.get() & S_IFMT;
            if name.starts_with(b"user.") && ty != S_IFREG && ty != S_IFDIR {
                return Err(Error::Invalid(format!(
                    "xattr {}: user.* xattrs are only allowed on regular files and directories",
                    String::from_utf8_lossy(name)
                )));
            }
            self.put_xattr(root, ino, name, value)?;
        }
        self.touch(&mut it, false);
        self.put_inode(root, ino, &it)
    }

    /// Store (or with `None` remove) xattr `name` of an inode, nothing else.
    fn put_xattr(&mut self, root: u64, ino: u64, name: &[u8], value: Option<&[u8]>) -> Result<()> {
        let nodesize = self.store.fs.sb.nodesize.get();
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
        Ok(())
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
                    // A compressed extent is trimmed like any other: the pieces
                    // left keep naming the whole extent (disk_bytenr,
                    // disk_num_bytes, ram_bytes, compression) with offset and
                    // num_bytes into its decompressed bytes, as the kernel's
                    // btrfs_drop_extents leaves them.
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
        for (k, d) in self.csum_items_from(start, end)? {
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
                FileExtentKind::Regular { prealloc: false, disk_bytenr, disk_num_bytes, offset, .. } if disk_bytenr != 0 => {
                    // The whole compressed extent, its checksums (over the
                    // compressed bytes) verified, then decompressed.
                    let plain = self.read_compressed(root, ino, off, &fe, disk_bytenr, disk_num_bytes, nodatasum)?;
                    let skip = offset.checked_add(from - off).and_then(|x| usize::try_from(x).ok()).unwrap_or(usize::MAX);
                    let src = plain.get(skip..).unwrap_or_default();
                    let n = src.len().min(dst.len());
                    dst[..n].copy_from_slice(&src[..n]);
                }
                FileExtentKind::Regular { .. } => {}
                FileExtentKind::Inline { data } => {
                    let label = self.inode_label(root, ino);
                    let plain = self.store.fs.decompress(fe.compression, &data, fe.ram_bytes, &format!("{label} inline extent"))?;
                    let src = plain.get((from - off) as usize..).unwrap_or_default();
                    let n = src.len().min(dst.len());
                    dst[..n].copy_from_slice(&src[..n]);
                }
            }
        }
        Ok(out)
    }

    /// The decompressed bytes (`ram_bytes` of them) of the compressed extent
    /// at `disk_bytenr` that the file extent item `fe` at file offset `off`
    /// names; every sector read is verified against the checksums this
    /// transaction's csum tree holds for the compressed bytes first, as
    /// [`Self::read_range`] does for plain data.
    #[allow(clippy::too_many_arguments)]
    fn read_compressed(&mut self, root: u64, ino: u64, off: u64, fe: &items::FileExtent, disk_bytenr: u64, disk_num_bytes: u64, nodatasum: bool) -> Result<Vec<u8>> {
        let label = self.inode_label(root, ino);
        let at = format!("{label} compressed extent at file offset {off}");
        let ss = u64::from(self.store.fs.sectorsize);
        let max = crate::format::compress::MAX_COMPRESSED as u64;
        if disk_num_bytes == 0 || disk_num_bytes > max || disk_num_bytes % ss != 0 || disk_bytenr % ss != 0 {
            return Err(Error::corrupt(at, format!("compressed extent at {disk_bytenr} of {disk_num_bytes} bytes")));
        }
        if fe.ram_bytes > crate::format::compress::MAX_DECOMPRESSED_LEN as u64 {
            return Err(Error::corrupt(at, format!("ram_bytes {} of a compressed extent", fe.ram_bytes)));
        }
        let mut raw = vec![0u8; disk_num_bytes as usize];
        let csums = if nodatasum { None } else { Some(self.data_csums(disk_bytenr, disk_num_bytes)?) };
        let describe = |l: u64| format!("{at} (disk byte {})", l.saturating_sub(disk_bytenr));
        let fs = &self.store.fs;
        crate::fs::data::read_verified(fs.volume(), fs.csum, ss, disk_bytenr, &mut raw, csums.as_deref(), &describe, &mut |w| fs.warn(w))?;
        fs.decompress(fe.compression, &raw, fe.ram_bytes, &at)
    }

    /// Checksums of each sector of [start, start+len) as this transaction's
    /// csum tree holds them (`None` where it has none).
    pub fn data_csums(&mut self, start: u64, len: u64) -> Result<Vec<Option<CsumBytes>>> {
        let ss = u64::from(self.store.fs.sectorsize);
        let cs = self.store.fs.csum.size();
        let nsect = usize::try_from(len.div_ceil(ss)).map_err(|_| Error::Invalid("range too large".into()))?;
        let mut out = vec![None; nsect];
        let end = start.saturating_add(len);
        for (k, d) in self.csum_items_from(start, end)? {
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

    /// The csum items that may cover [start, end): the last one starting
    /// before `start`, then every one starting inside.
    fn csum_items_from(&mut self, start: u64, end: u64) -> Result<Vec<(Key, Vec<u8>)>> {
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
        Ok(found)
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

    /// Write `buf` to every copy of `logical` through the page cache (see
    /// [`crate::volumes::Volume::write_bios`]).
    pub fn write_data(&self, logical: u64, buf: &[u8], opts: &WriteOpts, report: &mut WriteReport) -> Result<()> {
        report.bios.extend(self.store.fs.volume().write_bios(logical, buf, opts.max_bio, opts.on_bio.as_ref())?);
        Ok(())
    }

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
        // A write past the sector the file ends in first zeros the rest of
        // that sector (the kernel's btrfs_truncate_block): bytes stored past
        // the end (an mmap write can leave them) would become file content.
        let size = it.size.get();
        if size % ss != 0 && size.div_ceil(ss) * ss <= a {
            self.write_zeros(root, ino, size, size.div_ceil(ss) * ss, report)?;
            it = self.read_inode(root, ino)?;
        }
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
        let new_size = old_size.max(end);
        let policy = self.compress_policy(root, ino, &it, opts.compress, direct, report)?;

        // A whole small file, compressed, inline when it fits max_inline (the
        // kernel's compress_file_range tries this first). Not smaller than
        // its bytes: not worth it, and the file is marked as not compressing.
        if let Some(p) = policy.filter(|_| a == 0 && new_size <= ss) {
            let plain = &buf[..new_size as usize];
            let c = compress::encode(p.kind, plain, self.store.fs.sectorsize, p.level)
                .map_err(|e| Error::Invalid(format!("{}: {e}", self.inode_label(root, ino))))?;
            let fits = c.len() as u64 <= MAX_INLINE && c.len() <= limits::max_inline_data_size(self.store.fs.sb.nodesize.get());
            if c.len() < plain.len() && fits {
                self.punch(root, ino, 0, b, &mut it)?;
                self.insert_inline(root, ino, &c, new_size, p.kind.raw())?;
                self.set_incompat(props::incompat_for(p.kind));
                report.compressed += new_size;
                report.compressed_disk += c.len() as u64;
                it.nbytes = (it.nbytes.get() + new_size).into();
                report.bytes += src_len as u64;
                it.size = new_size.into();
                self.touch(&mut it, true);
                self.put_inode(root, ino, &it)?;
                return Ok(());
            }
            if p.mark {
                self.mark_nocompress(root, ino, &mut it, 0, report);
            }
        }

        // A small file lives inline in its leaf, as the kernel's buffered
        // writes make it (cow_file_range_inline): the whole file under
        // max_inline and one sector. Direct writes never inline.
        if !direct && a == 0 && new_size <= MAX_INLINE && new_size < ss {
            self.punch(root, ino, 0, b, &mut it)?;
            self.insert_inline(root, ino, &buf[..new_size as usize], new_size, COMPRESS_NONE)?;
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
        let recs = match policy {
            // The policy is None for direct writes.
            Some(p) => self.write_compressed(root, ino, &mut it, a, buf, new_size, p, opts, report)?,
            None => {
                let pieces = self.alloc_pieces(a, b)?;
                let sums = if direct {
                    self.write_pieces_direct(&pieces, a, bounce, live.map(|src| (src, base)), nosum, opts, report)?
                } else {
                    self.write_pieces_buffered(&pieces, a, bounce.bytes(), nosum, opts, report)?
                };
                plain_recs(&pieces, sums)
            }
        };
        // Without NO_HOLES, a gap between the old end and the write is an explicit hole.
        let no_holes = self.store.fs.sb.has_incompat(INCOMPAT_NO_HOLES);
        let old_end = old_size.div_ceil(ss) * ss;
        self.punch(root, ino, a, b, &mut it)?;
        if !no_holes && a > old_end {
            self.insert_extent_item(root, ino, old_end, 0, a - old_end, a - old_end, COMPRESS_NONE)?;
        }
        for r in recs {
            if !r.sums.is_empty() {
                // Checksums from the same engine-owned bytes every mirror got.
                self.insert_csums(r.logical, &r.sums)?;
            }
            self.add_data_extent(r.logical, r.disk_len, root, ino, r.pos)?;
            self.insert_extent_item(root, ino, r.pos, r.logical, r.disk_len, r.len, r.compression)?;
            it.nbytes = (it.nbytes.get() + r.len).into();
        }
        report.bytes += src_len as u64;
        if end > old_size {
            it.size = end.into();
        }
        self.touch(&mut it, true);
        self.put_inode(root, ino, &it)?;
        Ok(())
    }

    /// Data space for file bytes [a, b): (file offset, logical, length) of
    /// each run the allocator hands out (at most MAX_EXTENT each).
    fn alloc_pieces(&mut self, a: u64, b: u64) -> Result<Vec<(u64, u64, u64)>> {
        let mut pieces = Vec::new();
        let mut pos = a;
        while pos < b {
            let want = (b - pos).min(MAX_EXTENT);
            let (logical, got) = self.store.alloc_data(want)?;
            pieces.push((pos, logical, got));
            pos += got;
        }
        Ok(pieces)
    }

    /// How this write of inode `ino` (flags in `it`) is compressed, as the
    /// kernel decides (inode_need_compress, compress_file_range): never for
    /// direct writes or files without checksums; with `force` always (the
    /// compress-force= mount option); else not for NOCOMPRESS files (or a
    /// `none` property), and for files asked for (`opts`, the compress=
    /// mount option), flagged COMPRESS or with an algorithm as property. The
    /// property's algorithm wins over the one asked for, then zlib (the
    /// kernel's default for chattr +c). A level given applies to its own
    /// algorithm only.
    fn compress_policy(&mut self, root: u64, ino: u64, it: &InodeItem, opts: Option<CompressOpts>, direct: bool, report: &mut WriteReport) -> Result<Option<Policy>> {
        let flags = it.flags.get();
        let prop = self.compression_prop(root, ino)?;
        let wanted = opts.is_some() || flags & INODE_COMPRESS != 0 || matches!(prop, Some(props::CompressionProp::Algo(_)));
        if !wanted {
            return Ok(None);
        }
        if flags & (INODE_NODATASUM | INODE_NODATACOW) != 0 {
            if opts.is_some() {
                report.notices.push(format!(
                    "{}: written uncompressed: it has no data checksums (nodatasum or nodatacow), and the kernel never compresses such files",
                    self.inode_label(root, ino)
                ));
            }
            return Ok(None);
        }
        if direct {
            if opts.is_some() || flags & INODE_COMPRESS != 0 {
                report.notices.push(format!("{}: direct writes are never compressed (as the kernel's)", self.inode_label(root, ino)));
            }
            return Ok(None);
        }
        let force = opts.is_some_and(|o| o.force);
        if !force && (flags & INODE_NOCOMPRESS != 0 || prop == Some(props::CompressionProp::No)) {
            if opts.is_some() {
                report.notices.push(format!(
                    "{}: written uncompressed: the file is marked NOCOMPRESS (--compress-force compresses it anyway)",
                    self.inode_label(root, ino)
                ));
            }
            return Ok(None);
        }
        let kind = match (prop, opts) {
            (Some(props::CompressionProp::Algo(k)), _) => k,
            (_, Some(o)) => o.kind,
            _ => Compression::Zlib,
        };
        let level = opts.filter(|o| o.kind == kind).and_then(|o| o.level);
        // The kernel marks a file that did not compress, unless forced or
        // the property asks for compression.
        let mark = !force && !matches!(prop, Some(props::CompressionProp::Algo(_)));
        Ok(Some(Policy { kind, level, mark }))
    }

    /// The `btrfs.compression` property of an inode, if it has a valid one.
    fn compression_prop(&mut self, root: u64, ino: u64) -> Result<Option<props::CompressionProp>> {
        Ok(self.xattr(root, ino, props::COMPRESSION)?.and_then(|v| props::parse_compression(&v)))
    }

    /// The value of xattr `name` of an inode.
    fn xattr(&mut self, root: u64, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(d) = self.get(root, Key::new(ino, XATTR_ITEM_KEY, items::name_hash(name)))? else { return Ok(None) };
        Ok(parse_dir_items(&d)?.into_iter().find(|e| e.name == name).map(|e| e.data))
    }

    /// A file whose data did not compress: NOCOMPRESS from now on (stored
    /// with the inode at the end of the write), as the kernel marks it.
    fn mark_nocompress(&self, root: u64, ino: u64, it: &mut InodeItem, at: u64, report: &mut WriteReport) {
        if it.flags.get() & INODE_NOCOMPRESS == 0 {
            it.flags = (it.flags.get() | INODE_NOCOMPRESS).into();
            report.notices.push(format!(
                "{}: data at offset {at} does not compress by a sector; marked NOCOMPRESS and written uncompressed from there (as the kernel's compress= does; --compress-force tries every chunk)",
                self.inode_label(root, ino)
            ));
        }
    }

    /// Buffered, compressed: the file bytes [a, a + buf.len()) (`new_size`
    /// the file's size after the write) in chunks of 128 KiB compressed on
    /// several threads; a chunk that saves a sector becomes a compressed
    /// extent of its own (checksums over the compressed bytes, padded with
    /// zeros to a sector), the others are written as plain extents.
    #[allow(clippy::too_many_arguments)]
    fn write_compressed(
        &mut self,
        root: u64,
        ino: u64,
        it: &mut InodeItem,
        a: u64,
        buf: &[u8],
        new_size: u64,
        p: Policy,
        opts: &WriteOpts,
        report: &mut WriteReport,
    ) -> Result<Vec<Rec>> {
        let ss = self.store.fs.sectorsize as usize;
        let valid = usize::try_from(new_size.saturating_sub(a)).unwrap_or(usize::MAX).min(buf.len());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let fs = &self.store.fs;
        let (chunks, failed) = compress_chunks(buf, valid, ss, p, fs.csum, threads)
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.inode_label(root, ino))))?;
        if let (Some(i), true) = (failed, p.mark) {
            self.mark_nocompress(root, ino, it, a + (i * CHUNK) as u64, report);
        }
        let mut recs = Vec::new();
        // A run of plain chunks waiting to be written as one extent.
        let mut run: Option<(usize, usize)> = None;
        for (i, c) in chunks.into_iter().enumerate() {
            let (cs, ce) = (i * CHUNK, ((i + 1) * CHUNK).min(buf.len()));
            let placed = match c {
                Some(c) => match self.store.alloc_data_exact(c.data.len() as u64) {
                    Ok(logical) => Some((c, logical)),
                    // No run that long: written plain, as the kernel falls back.
                    Err(Error::NoSpace(_)) => None,
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let Some((c, logical)) = placed else {
                run = Some(run.map_or((cs, ce), |(s, _)| (s, ce)));
                continue;
            };
            if let Some((rs, re)) = run.take() {
                recs.extend(self.write_plain_run(a + rs as u64, &buf[rs..re], opts, report)?);
            }
            self.write_data(logical, &c.data, opts, report)?;
            self.set_incompat(props::incompat_for(p.kind));
            report.compressed += (ce - cs) as u64;
            report.compressed_disk += c.data.len() as u64;
            recs.push(Rec { pos: a + cs as u64, logical, disk_len: c.data.len() as u64, len: (ce - cs) as u64, compression: p.kind.raw(), sums: c.sums });
        }
        if let Some((rs, re)) = run {
            recs.extend(self.write_plain_run(a + rs as u64, &buf[rs..re], opts, report)?);
        }
        Ok(recs)
    }

    /// Plain extents for the file bytes `buf` starting at file offset `at`.
    fn write_plain_run(&mut self, at: u64, buf: &[u8], opts: &WriteOpts, report: &mut WriteReport) -> Result<Vec<Rec>> {
        let pieces = self.alloc_pieces(at, at + buf.len() as u64)?;
        let sums = self.write_pieces_buffered(&pieces, at, buf, false, opts, report)?;
        Ok(plain_recs(&pieces, sums))
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
                buf.chunks(per).map(|part| crate::threads::spawn_scoped(s, "checksum", move || Ok(self.compute_csums(part)))).collect::<Result<_>>()?
            };
            for &(pos, logical, got) in pieces {
                let off = (pos - a) as usize;
                self.write_data(logical, &buf[off..off + got as usize], opts, report)?;
            }
            let mut all = Vec::new();
            for h in csummers {
                all.extend(crate::threads::join(h, "checksum")?);
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
        let copy_to = |off: usize, dst: &mut [u8]| {
            if let Some((src, _)) = live {
                src.copy_to(off, dst)
            }
        };
        let live = live.map(|(src, base)| Live { base, len: src.len(), copy_to: &copy_to });
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

    /// An inline extent at file offset 0 holding `data`, which is `ram`
    /// file bytes compressed with `compression` (or, COMPRESS_NONE, those
    /// bytes as they are).
    fn insert_inline(&mut self, root: u64, ino: u64, data: &[u8], ram: u64, compression: u8) -> Result<()> {
        let mut item = FileExtentHeader {
            generation: self.transid().into(),
            ram_bytes: ram.into(),
            compression,
            encryption: 0,
            other_encoding: 0.into(),
            extent_type: FILE_EXTENT_INLINE,
        }
        .as_bytes()
        .to_vec();
        item.extend_from_slice(data);
        self.insert(root, Key::new(ino, EXTENT_DATA_KEY, 0), item)
    }

    /// A regular extent item at `file_off` naming all `len` file bytes of the
    /// extent at `disk` (`disk_len` bytes on disk; 0 for a hole), compressed
    /// with `compression` (then `len` is its ram_bytes) or not (then `len`
    /// is `disk_len`).
    #[allow(clippy::too_many_arguments)]
    fn insert_extent_item(&mut self, root: u64, ino: u64, file_off: u64, disk: u64, disk_len: u64, len: u64, compression: u8) -> Result<()> {
        let mut b = FileExtentHeader {
            generation: self.transid().into(),
            ram_bytes: if compression == COMPRESS_NONE { disk_len } else { len }.into(),
            compression,
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
        // A registered reader reads the committed bytes an in-place write
        // would change under it: copy on write instead while one is there.
        // The mark goes up before the look, so that a reader registering
        // after the look sees the mark and waits for this commit.
        use crate::fs::transaction::InPlace;
        if self.in_place == InPlace::Unmarked {
            self.store.fs.volume().mark_in_place(true)?;
            self.in_place = InPlace::Marked;
        }
        if self.store.fs.volume().oldest_reader(self.transid())?.is_some() {
            if self.in_place == InPlace::Marked {
                self.store.fs.volume().mark_in_place(false)?;
                self.in_place = InPlace::Unmarked;
            }
            return Ok(false);
        }
        self.in_place = InPlace::Written;
        for (logical, from, to) in plan {
            self.write_data(logical, &buf[(from - a) as usize..(to - a) as usize], opts, report)?;
        }
        Ok(true)
    }

    /// Zeros over [from, to) of a file, within the sector its size ends in,
    /// written as any write is: the rest of that sector when the file
    /// shrinks to a size inside it or grows from one (the kernel's
    /// btrfs_truncate_block), so that what it held past the end never
    /// becomes file content.
    fn write_zeros(&mut self, root: u64, ino: u64, from: u64, to: u64, report: &mut WriteReport) -> Result<()> {
        let z = vec![0u8; (to - from) as usize];
        let mut r = WriteReport::default();
        self.write_at(root, ino, from, &z, &WriteOpts::default(), &mut r)?;
        report.bios.extend(r.bios);
        Ok(())
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
                self.write_zeros(root, ino, size, keep.min(old), &mut WriteReport::default())?;
                it = self.read_inode(root, ino)?;
            }
            self.punch(root, ino, keep, u64::MAX, &mut it)?;
        } else if size > old && old % ss != 0 {
            // As a write past the end does (see write_impl).
            self.write_zeros(root, ino, old, (old.div_ceil(ss) * ss).min(size), &mut WriteReport::default())?;
            it = self.read_inode(root, ino)?;
        }
        if size > old && !self.store.fs.sb.has_incompat(INCOMPAT_NO_HOLES) {
            let from = old.div_ceil(ss) * ss;
            let to = size.div_ceil(ss) * ss;
            if to > from {
                self.insert_extent_item(root, ino, from, 0, to - from, to - from, COMPRESS_NONE)?;
            }
        }
        it.size = size.into();
        self.touch(&mut it, true);
        self.put_inode(root, ino, &it)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Text with a run of noise over chunks 3 and 4, and a short tail.
    fn data() -> Vec<u8> {
        let mut v: Vec<u8> = b"extent leaf node chunk mirror ".iter().copied().cycle().take(10 * CHUNK + 6000).collect();
        v[3 * CHUNK..5 * CHUNK].copy_from_slice(&noise(2 * CHUNK, 7));
        v
    }

    /// Per chunk (data, checksums) when compressed; the first that did not compress.
    type Layout = (Vec<Option<(Vec<u8>, Vec<u8>)>>, Option<usize>);

    fn layout(p: Policy, threads: usize) -> Layout {
        let d = data();
        let mut buf = d.clone();
        buf.resize(d.len().div_ceil(4096) * 4096, 0);
        let (chunks, failed) = compress_chunks(&buf, d.len(), 4096, p, CsumType::Crc32c, threads).unwrap();
        (chunks.into_iter().map(|c| c.map(|c| (c.data, c.sums))).collect(), failed)
    }

    #[test]
    fn compressed_chunks_do_not_depend_on_the_thread_count() {
        for mark in [false, true] {
            let p = Policy { kind: Compression::Zstd, level: None, mark };
            let one = layout(p, 1);
            for threads in [2, 3, 8] {
                assert!(layout(p, threads) == one, "mark {mark}: {threads} threads give another layout");
            }
            let kinds: Vec<bool> = one.0.iter().map(Option::is_some).collect();
            assert_eq!(one.1, Some(3));
            if mark {
                // The first chunk that does not compress ends compression.
                assert_eq!(kinds, [true, true, true, false, false, false, false, false, false, false, false]);
            } else {
                // Forced: every chunk tried; the tail (6000 bytes) compresses too.
                assert_eq!(kinds, [true, true, true, false, false, true, true, true, true, true, true]);
            }
        }
    }

    #[test]
    fn compressed_chunks_are_padded_and_checksummed() {
        let d = data();
        let (chunks, _) = layout(Policy { kind: Compression::Lzo, level: None, mark: false }, 2);
        for (k, (data, sums)) in chunks.into_iter().enumerate().filter_map(|(k, c)| c.map(|c| (k, c))) {
            assert_eq!(data.len() % 4096, 0);
            assert!(data.len() + 4096 <= CHUNK);
            let mut want = Vec::new();
            CsumType::Crc32c.compute_sectors(&data, 4096, &mut want);
            assert_eq!(sums, want);
            let plain = compress::decompress(Compression::Lzo, &data, CHUNK, 4096).unwrap();
            let end = ((k + 1) * CHUNK).min(d.len());
            assert!(plain[..end - k * CHUNK] == d[k * CHUNK..end], "chunk {k}");
            assert!(plain[end - k * CHUNK..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn a_sector_or_less_is_never_compressed_nor_a_failure() {
        let buf = vec![b'a'; 4096];
        let p = Policy { kind: Compression::Zlib, level: None, mark: true };
        let (chunks, failed) = compress_chunks(&buf, 4096, 4096, p, CsumType::Crc32c, 4).unwrap();
        assert!(chunks[0].is_none() && failed.is_none());
    }
}
