//! The extent tree's items and back references: data extent items, the
//! inline and keyed references of every extent counted up and down, and
//! the queued tree-block changes applied (the kernel's extent-tree.c and
//! delayed-ref.c).
//!
//! Shared tree blocks (a snapshot shares the subvolume's blocks) and the
//! FULL_BACKREF blocks the kernel's balance leaves are copied the way the
//! kernel's update_ref_for_cow does it: references move between "from this
//! tree" and "from this parent block" so that every tree still using the
//! old block keeps its references (see `cow_shared`, `unshare_children`).
//!
//! Back references live inline in the extent item (type ascending, within a
//! type parent / root / hash descending, as the tree-checker wants) until it
//! would reach BTRFS_MAX_EXTENT_ITEM_SIZE; past that they are keyed items,
//! found, counted and dropped like the inline ones (`add_ref`, `drop_ref`).

use crate::error::{CorruptKind, Error, Result};
use crate::format::encode;
use crate::format::items::{self, parse_extent_item, ExtentInfo, ExtentRef};
use crate::format::*;
use crate::tree::block::{Expect, TreeBlock};

use super::space::RefOp;
use super::Transaction;

impl Transaction {
    /// Add a data extent item with one inline EXTENT_DATA_REF.
    pub(crate) fn add_data_extent(&mut self, bytenr: u64, len: u64, root: u64, ino: u64, offset: u64) -> Result<()> {
        let body = encode::extent_item(&ExtentInfo {
            refs: 1,
            generation: self.transid(),
            flags: EXTENT_FLAG_DATA,
            tree_block: None,
            inline_refs: vec![ExtentRef::Data { root, objectid: ino, offset, count: 1 }],
        })?;
        self.insert(EXTENT_TREE_OBJECTID, Key::new(bytenr, EXTENT_ITEM_KEY, len), body)
    }

    /// Edit the inline refs of extent item `key`: `f` changes them and
    /// returns by how much the reference count changed. The item is deleted
    /// when no reference is left; returns whether it was.
    fn edit_extent_refs(&mut self, key: Key, f: impl FnOnce(&mut Vec<ExtentRef>) -> Result<i64>) -> Result<bool> {
        self.edit_extent_item(key, |info| f(&mut info.inline_refs))
    }

    /// Like [`Self::edit_extent_refs`], with the flags in reach too.
    pub(super) fn edit_extent_item(&mut self, key: Key, f: impl FnOnce(&mut ExtentInfo) -> Result<i64>) -> Result<bool> {
        let at = || format!("extent {} ({})", key.objectid, if key.item_type == METADATA_ITEM_KEY { "tree block" } else { "data" });
        let body = self.get(EXTENT_TREE_OBJECTID, key)?.ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, at(), "no extent item"))?;
        let mut info = parse_extent_item(key, &body)?;
        let delta = f(&mut info)?;
        info.inline_refs.retain(|r| !matches!(r, ExtentRef::Data { count: 0, .. } | ExtentRef::SharedData { count: 0, .. }));
        let refs = info.refs as i64 + delta;
        if refs < 0 {
            return Err(Error::corrupt(CorruptKind::ExtentRefs, at(), "reference count underflow"));
        }
        if refs == 0 {
            if info.inline_refs.iter().any(|r| r.count() > 0) {
                return Err(Error::corrupt(CorruptKind::ExtentRefs, at(), "no references counted but back references left"));
            }
            self.delete(EXTENT_TREE_OBJECTID, key)?;
            return Ok(true);
        }
        info.refs = refs as u64;
        self.put(EXTENT_TREE_OBJECTID, key, encode::extent_item(&info)?)?;
        Ok(false)
    }

    /// Change the count of the (root, ino, offset) data ref of extent `bytenr` by
    /// `delta`; returns true when the extent lost its last reference (deleted).
    pub(crate) fn data_ref_delta(&mut self, bytenr: u64, len: u64, root: u64, ino: u64, offset: u64, delta: i64) -> Result<bool> {
        // Leaves the kernel relocated hold their data refs by parent: turn
        // them into per-root refs first (see `unshare_children`).
        self.apply_log()?;
        let key = Key::new(bytenr, EXTENT_ITEM_KEY, len);
        let r = ExtentRef::Data { root, objectid: ino, offset, count: 0 };
        let gone = if delta >= 0 {
            self.add_ref(key, r, delta as u32)?;
            false
        } else {
            self.drop_ref(key, r, (-delta) as u32)?
        };
        if gone {
            self.store.release_data(bytenr)?;
        }
        Ok(gone)
    }

    /// The keyed item holding back reference `r` (identity only; counts
    /// ignored) of the extent at `bytenr`, and its count, if there is one.
    /// EXTENT_DATA_REF items sit at the hash of (root, objectid, offset); on a
    /// hash collision the kernel moves the later one to the next offset.
    fn find_keyed_ref(&mut self, bytenr: u64, r: &ExtentRef) -> Result<Option<(Key, u32)>> {
        let (ty, at) = r.order();
        let mut key = Key::new(bytenr, ty, at);
        loop {
            let Some(body) = self.get(EXTENT_TREE_OBJECTID, key)? else { return Ok(None) };
            let found = items::parse_keyed_ref(key, &body)?;
            let count = found.count() as u32;
            match (&found, r) {
                (ExtentRef::Data { root, objectid, offset, .. }, ExtentRef::Data { root: r0, objectid: o0, offset: f0, .. }) => {
                    if (root, objectid, offset) == (r0, o0, f0) {
                        return Ok(Some((key, count)));
                    }
                    key.offset = key.offset.checked_add(1).ok_or_else(|| {
                        Error::corrupt(CorruptKind::Overflow, format!("data extent {bytenr}"), "data ref hash chain past 2^64")
                    })?;
                }
                _ => return Ok(Some((key, count.max(1)))),
            }
        }
    }

    /// The body of keyed back reference item `r` of the extent at `bytenr`
    /// with count `count` (the key [`encode::keyed_ref`] gives with it is
    /// only where a data ref's hash chain starts: the callers find the offset).
    fn keyed_ref_body(bytenr: u64, r: &ExtentRef, count: u32) -> Result<Vec<u8>> {
        let r = match *r {
            ExtentRef::Data { root, objectid, offset, .. } => ExtentRef::Data { root, objectid, offset, count },
            ExtentRef::SharedData { parent, .. } => ExtentRef::SharedData { parent, count },
            _ => r.clone(),
        };
        Ok(encode::keyed_ref(bytenr, &r)?.1)
    }

    /// `n` more of back reference `r` (its count field ignored) on extent
    /// item `key`: added to the inline ref or keyed item that holds it, else a
    /// new inline ref — or, like the kernel's lookup_inline_extent_backref,
    /// a new keyed item once the extent item would reach
    /// BTRFS_MAX_EXTENT_ITEM_SIZE.
    pub(super) fn add_ref(&mut self, key: Key, r: ExtentRef, n: u32) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let at = || format!("extent {} ({})", key.objectid, if key.item_type == METADATA_ITEM_KEY { "tree block" } else { "data" });
        let body = self.get(EXTENT_TREE_OBJECTID, key)?.ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, at(), "no extent item"))?;
        let info = parse_extent_item(key, &body)?;
        let counted = matches!(r, ExtentRef::Data { .. } | ExtentRef::SharedData { .. });
        if info.inline_refs.iter().any(|x| same_ref(x, &r)) {
            if !counted {
                return Err(Error::corrupt(CorruptKind::ExtentRefs, at(), format!("a second {r:?} back reference")));
            }
            self.edit_extent_refs(key, |refs| {
                for x in refs.iter_mut() {
                    if same_ref(x, &r) {
                        match x {
                            ExtentRef::Data { count, .. } | ExtentRef::SharedData { count, .. } => {
                                *count = count
                                    .checked_add(n)
                                    .ok_or_else(|| Error::corrupt(CorruptKind::Overflow, at(), "back reference count overflow"))?
                            }
                            _ => {}
                        }
                    }
                }
                Ok(n as i64)
            })?;
            return Ok(());
        }
        if let Some((k, count)) = self.find_keyed_ref(key.objectid, &r)? {
            if !counted {
                return Err(Error::corrupt(CorruptKind::ExtentRefs, at(), format!("a second {r:?} back reference")));
            }
            let count = count.checked_add(n).ok_or_else(|| Error::corrupt(CorruptKind::Overflow, at(), "back reference count overflow"))?;
            self.put(EXTENT_TREE_OBJECTID, k, Self::keyed_ref_body(key.objectid, &r, count)?)?;
            self.edit_extent_refs(key, |_| Ok(n as i64))?;
            return Ok(());
        }
        let with_count = match r {
            ExtentRef::Data { root, objectid, offset, .. } => ExtentRef::Data { root, objectid, offset, count: n },
            ExtentRef::SharedData { parent, .. } => ExtentRef::SharedData { parent, count: n },
            other if n == 1 => other,
            _ => return Err(Error::corrupt(CorruptKind::ExtentRefs, at(), format!("{n} references of one {r:?}"))),
        };
        let inline_size = inline_ref_size(&with_count);
        if body.len() + inline_size < max_extent_item_size(self.store.fmt.nodesize) {
            self.edit_extent_refs(key, |refs| {
                refs.push(with_count);
                Ok(n as i64)
            })?;
            return Ok(());
        }
        // Keyed: at the first free offset of the hash chain for data refs.
        let (ty, mut off) = with_count.order();
        while self.get(EXTENT_TREE_OBJECTID, Key::new(key.objectid, ty, off))?.is_some() {
            if ty != EXTENT_DATA_REF_KEY {
                return Err(Error::corrupt(CorruptKind::ExtentRefs, at(), format!("keyed back reference {ty} {off} already there")));
            }
            off = off.checked_add(1).ok_or_else(|| Error::corrupt(CorruptKind::Overflow, at(), "data ref hash chain past 2^64"))?;
        }
        self.insert(EXTENT_TREE_OBJECTID, Key::new(key.objectid, ty, off), Self::keyed_ref_body(key.objectid, &with_count, n)?)?;
        self.edit_extent_refs(key, |_| Ok(n as i64))?;
        Ok(())
    }

    /// `n` fewer of back reference `r` (count field ignored) on extent item
    /// `key`, inline or keyed; true when the extent lost its last reference
    /// (its item is deleted).
    pub(super) fn drop_ref(&mut self, key: Key, r: ExtentRef, n: u32) -> Result<bool> {
        let at = || format!("extent {} ({})", key.objectid, if key.item_type == METADATA_ITEM_KEY { "tree block" } else { "data" });
        let body = self.get(EXTENT_TREE_OBJECTID, key)?.ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, at(), "no extent item"))?;
        let info = parse_extent_item(key, &body)?;
        if info.inline_refs.iter().any(|x| same_ref(x, &r)) {
            return self.edit_extent_refs(key, |refs| {
                let mut kept = Vec::with_capacity(refs.len());
                for x in refs.drain(..) {
                    if !same_ref(&x, &r) {
                        kept.push(x);
                        continue;
                    }
                    match x {
                        ExtentRef::Data { root, objectid, offset, count } => {
                            let count = count
                                .checked_sub(n)
                                .ok_or_else(|| Error::corrupt(CorruptKind::ExtentRefs, at(), "data ref count underflow"))?;
                            kept.push(ExtentRef::Data { root, objectid, offset, count });
                        }
                        ExtentRef::SharedData { parent, count } => {
                            let count = count
                                .checked_sub(n)
                                .ok_or_else(|| Error::corrupt(CorruptKind::ExtentRefs, at(), "shared data ref count underflow"))?;
                            kept.push(ExtentRef::SharedData { parent, count });
                        }
                        _ if n == 1 => {}
                        _ => return Err(Error::corrupt(CorruptKind::ExtentRefs, at(), format!("dropping {n} of a single {r:?}"))),
                    }
                }
                *refs = kept;
                Ok(-(n as i64))
            });
        }
        let (k, count) = self
            .find_keyed_ref(key.objectid, &r)?
            .ok_or_else(|| Error::corrupt(CorruptKind::ExtentRefs, at(), format!("no back reference {r:?}")))?;
        match count.checked_sub(n) {
            None => return Err(Error::corrupt(CorruptKind::ExtentRefs, at(), format!("{r:?}: count {count} cannot drop {n}"))),
            Some(0) => {
                self.delete(EXTENT_TREE_OBJECTID, k)?;
            }
            Some(left) => {
                self.put(EXTENT_TREE_OBJECTID, k, Self::keyed_ref_body(key.objectid, &r, left)?)?;
            }
        }
        self.edit_extent_refs(key, |_| Ok(-(n as i64)))
    }

    /// Block `addr` of tree `owner`, which the kernel marked FULL_BACKREF
    /// (balance does this to the blocks it relocates), is being replaced by
    /// an ordinary copy: what it points to is referenced by parent address
    /// (SHARED_BLOCK_REF / SHARED_DATA_REF to `addr`), which will no longer
    /// exist. Move each such reference to the tree (TREE_BLOCK_REF /
    /// EXTENT_DATA_REF), as the kernel's update_ref_for_cow does.
    fn unshare_children(&mut self, addr: u64, owner: u64, level: u8) -> Result<()> {
        let old = self.store.fs.reader.read_block(addr, Expect { level: Some(level), ..Default::default() }, Some(owner))?;
        for child in children(&old)? {
            // The new reference first: dropping the old one first could take
            // the count through zero and delete the extent item.
            match child {
                Child::Block(key) => {
                    // A child already replaced in this transaction has no item left.
                    if self.get(EXTENT_TREE_OBJECTID, key)?.is_none() {
                        continue;
                    }
                    self.add_ref(key, ExtentRef::TreeBlock { root: owner }, 1)?;
                    self.drop_ref(key, ExtentRef::SharedBlock { parent: addr }, 1)?;
                }
                Child::Data { key, ino, offset: off } => {
                    self.add_ref(key, ExtentRef::Data { root: owner, objectid: ino, offset: off, count: 0 }, 1)?;
                    self.drop_ref(key, ExtentRef::SharedData { parent: addr, count: 0 }, 1)?;
                }
            }
        }
        Ok(())
    }

    /// Block `addr`, shared with other trees (a snapshot), was replaced by a
    /// copy in tree `root`. It stays for the others; what it points to gains
    /// a reference for the copy, and `root` drops its reference to it — the
    /// kernel's update_ref_for_cow: when `root` owns the block and it is not
    /// yet FULL_BACKREF, the block turns FULL_BACKREF and its children are
    /// (also) referenced by its address for the trees still using it, while
    /// the tree's own references go on serving the copy; otherwise the
    /// children gain references from `root` for the copy.
    fn cow_shared(&mut self, addr: u64, root: u64, level: u8, flags: u64) -> Result<()> {
        let old = self.store.fs.reader.read_block(addr, Expect { level: Some(level), ..Default::default() }, Some(root))?;
        let by_parent = old.owner() == root && flags & BLOCK_FLAG_FULL_BACKREF == 0;
        self.add_child_refs(&old, addr, if by_parent { None } else { Some(root) })?;
        let key = Key::new(addr, METADATA_ITEM_KEY, level as u64);
        let keyed = self.drop_keyed_ref(Key::new(addr, TREE_BLOCK_REF_KEY, root), 1)?;
        self.edit_extent_item(key, |info| {
            if by_parent {
                info.flags |= BLOCK_FLAG_FULL_BACKREF;
            }
            if !keyed {
                let n = info.inline_refs.len();
                info.inline_refs.retain(|r| *r != ExtentRef::TreeBlock { root });
                if info.inline_refs.len() == n {
                    return Err(Error::corrupt(
                        CorruptKind::ExtentRefs,
                        format!("tree block {addr}"),
                        format!("shared, but holds no reference from tree {root}"),
                    ));
                }
            }
            Ok(-1)
        })?;
        // Still in use by the other trees: not free after this commit.
        let ns = self.store.fmt.nodesize as u64;
        self.store.pinned.remove(&addr);
        self.store.allocated.insert(addr, ns);
        Ok(())
    }

    /// One more reference to everything block `old` (at `parent`) points
    /// to: by its address (`root` None: SHARED_BLOCK_REF / SHARED_DATA_REF)
    /// or from tree `root` (TREE_BLOCK_REF / EXTENT_DATA_REF).
    pub(super) fn add_child_refs(&mut self, old: &TreeBlock, parent: u64, root: Option<u64>) -> Result<()> {
        for child in children(old)? {
            let (key, r) = match (child, root) {
                (Child::Block(key), None) => (key, ExtentRef::SharedBlock { parent }),
                (Child::Block(key), Some(root)) => (key, ExtentRef::TreeBlock { root }),
                (Child::Data { key, .. }, None) => (key, ExtentRef::SharedData { parent, count: 0 }),
                (Child::Data { key, ino, offset }, Some(root)) => (key, ExtentRef::Data { root, objectid: ino, offset, count: 0 }),
            };
            self.add_ref(key, r, 1)?;
        }
        Ok(())
    }

    /// Take `n` off a standalone (keyed) back reference item; false when
    /// there is no such item (the reference is inline).
    fn drop_keyed_ref(&mut self, key: Key, n: u32) -> Result<bool> {
        let Some(body) = self.get(EXTENT_TREE_OBJECTID, key)? else { return Ok(false) };
        let count = match key.item_type {
            SHARED_DATA_REF_KEY => items::read_prefix::<SharedDataRef>(&body, "shared data ref")?.0.count.get(),
            _ => 1,
        };
        if count <= n {
            self.delete(EXTENT_TREE_OBJECTID, key)?;
        } else {
            let (_, body) = encode::keyed_ref(key.objectid, &ExtentRef::SharedData { parent: key.offset, count: count - n })?;
            self.put(EXTENT_TREE_OBJECTID, key, body)?;
        }
        Ok(true)
    }

    /// Apply queued tree-block ref changes to the extent tree.
    pub(super) fn apply_log(&mut self) -> Result<bool> {
        let log = std::mem::take(&mut self.store.log);
        if log.is_empty() {
            return Ok(false);
        }
        let ns = self.store.fmt.nodesize as u64;
        let transid = self.transid();
        for op in log {
            match op {
                RefOp::Alloc { addr, owner, level } => {
                    let body = encode::extent_item(&ExtentInfo {
                        refs: 1,
                        generation: transid,
                        flags: EXTENT_FLAG_TREE_BLOCK,
                        tree_block: None,
                        inline_refs: vec![ExtentRef::TreeBlock { root: owner }],
                    })?;
                    self.insert(EXTENT_TREE_OBJECTID, Key::new(addr, METADATA_ITEM_KEY, level as u64), body)?;
                }
                RefOp::Free { addr, owner, level } => {
                    let key = Key::new(addr, METADATA_ITEM_KEY, level as u64);
                    match self.get(EXTENT_TREE_OBJECTID, key)? {
                        Some(body) => {
                            let info = parse_extent_item(key, &body)?;
                            if info.refs > 1 {
                                self.cow_shared(addr, owner, level, info.flags)?;
                                continue;
                            }
                            if info.flags & BLOCK_FLAG_FULL_BACKREF != 0 {
                                self.unshare_children(addr, owner, level)?;
                            }
                            self.delete(EXTENT_TREE_OBJECTID, key)?;
                            // Both trees sharing a committed block replaced it
                            // before this log ran: the first one's cow_shared
                            // put it back among the allocated blocks, and with
                            // its last reference gone it must leave them again
                            // (pinned space is never handed out in this
                            // transaction, so nothing else can hold it).
                            if info.generation < transid {
                                self.store.release_tree_block(addr)?;
                            }
                        }
                        None => {
                            return Err(Error::corrupt(
                                CorruptKind::MissingItem,
                                format!("tree block {addr}"),
                                format!("no metadata extent item (nodesize {ns}) to free"),
                            ))
                        }
                    }
                }
            }
        }
        Ok(true)
    }
}

/// Something a tree block holds a reference to.
pub(super) enum Child {
    /// A child block (its METADATA_ITEM key).
    Block(Key),
    /// A data extent (its EXTENT_ITEM key) and the (inode, file offset of the
    /// extent's start) a file extent item maps it at.
    Data { key: Key, ino: u64, offset: u64 },
}

/// Every reference `block` holds: its child blocks, or the data extents its
/// file extent items point to (one per item, holes and inline ones skipped).
pub(super) fn children(block: &TreeBlock) -> Result<Vec<Child>> {
    let mut out = Vec::with_capacity(block.nritems());
    for i in 0..block.nritems() {
        if block.level() > 0 {
            let (_, child, _) = block.ptr(i);
            out.push(Child::Block(Key::new(child, METADATA_ITEM_KEY, (block.level() - 1) as u64)));
            continue;
        }
        let k = block.key(i);
        if k.item_type != EXTENT_DATA_KEY {
            continue;
        }
        let fe = items::parse_file_extent(block.item_data(i))?;
        if let items::FileExtentKind::Regular { disk_bytenr, disk_num_bytes, offset, .. } = fe.kind {
            if disk_bytenr != 0 {
                out.push(Child::Data {
                    key: Key::new(disk_bytenr, EXTENT_ITEM_KEY, disk_num_bytes),
                    ino: k.objectid,
                    offset: k.offset.wrapping_sub(offset),
                });
            }
        }
    }
    Ok(out)
}

/// Whether two back references name the same referrer (counts aside).
fn same_ref(a: &ExtentRef, b: &ExtentRef) -> bool {
    match (a, b) {
        (ExtentRef::Data { root, objectid, offset, .. }, ExtentRef::Data { root: r, objectid: o, offset: f, .. }) => {
            (root, objectid, offset) == (r, o, f)
        }
        (ExtentRef::SharedData { parent, .. }, ExtentRef::SharedData { parent: p, .. }) => parent == p,
        _ => a == b,
    }
}

/// Bytes an inline back reference takes in an extent item (type byte included).
fn inline_ref_size(r: &ExtentRef) -> usize {
    match r {
        ExtentRef::Data { .. } => 1 + std::mem::size_of::<ExtentDataRef>(),
        ExtentRef::SharedData { .. } => 1 + 8 + std::mem::size_of::<SharedDataRef>(),
        _ => 1 + 8,
    }
}

/// The kernel's BTRFS_MAX_EXTENT_ITEM_SIZE: an extent item stops taking
/// inline refs before it reaches a sixteenth of a leaf's data area, less
/// one item header.
fn max_extent_item_size(nodesize: u32) -> usize {
    (nodesize as usize - std::mem::size_of::<Header>()) / 16 - std::mem::size_of::<Item>()
}

#[cfg(test)]
mod ref_tests {
    use super::*;
    use crate::format::items::{extent_data_ref_hash, parse_keyed_ref, FileExtentKind};
    use crate::fs::inode::InodeId;
    use crate::fs::txn::{WriteOpts, WriteReport};
    use crate::fs::Filesystem;
    use crate::volumes::OpenOptions;

    /// Sixty more owners of one data extent: the first ones inline while the
    /// item stays under BTRFS_MAX_EXTENT_ITEM_SIZE, the rest keyed at their
    /// hash; more of a keyed ref counts up in its item; dropping them all
    /// gives back the extent item as it was.
    #[test]
    fn refs_past_the_inline_limit_go_keyed_and_come_back() {
        let Some((_tmp, imgs)) = crate::fs::testutil::mkfs_btrfs(1, &[]) else { return };
        let o = OpenOptions {
            image: imgs[0].clone(),
            devices: imgs.to_vec(),
            degraded: false,
            writable: true,
            alongside_writer: false,
            accept_lagging: false,
            divergent_ok: false,
            replacement: None,
            added: Vec::new(),
        };
        let mut tx = Transaction::begin(Filesystem::open(&o).unwrap()).unwrap();
        let ino = tx.create(InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID }, b"f", S_IFREG | 0o644, 0).unwrap().ino;
        tx.write_at(InodeId { subvol: FS_TREE_OBJECTID, ino }, 0, &vec![7u8; 1 << 20], &WriteOpts::default(), &mut WriteReport::default())
            .unwrap();
        tx.commit().unwrap();
        let fs = Filesystem::open(&o).unwrap();
        let extents = fs.file_extents(InodeId { subvol: FS_TREE_OBJECTID, ino }).unwrap();
        let FileExtentKind::Regular { disk_bytenr, disk_num_bytes, .. } = extents[0].1.kind else { panic!("{extents:?}") };
        let nodesize = fs.sb.nodesize.get();
        let mut tx = Transaction::begin(fs).unwrap();
        let key = Key::new(disk_bytenr, EXTENT_ITEM_KEY, disk_num_bytes);
        let before = tx.get(EXTENT_TREE_OBJECTID, key).unwrap().unwrap();
        let keyed = |tx: &mut Transaction| {
            tx.range(
                EXTENT_TREE_OBJECTID,
                Key::new(disk_bytenr, EXTENT_DATA_REF_KEY, 0),
                Key::new(disk_bytenr, EXTENT_DATA_REF_KEY, u64::MAX),
            )
            .unwrap()
        };
        for i in 0..60 {
            assert!(!tx.data_ref_delta(disk_bytenr, disk_num_bytes, FS_TREE_OBJECTID, 1000 + i, 0, 1).unwrap());
        }
        let item = tx.get(EXTENT_TREE_OBJECTID, key).unwrap().unwrap();
        assert!(item.len() < max_extent_item_size(nodesize), "extent item of {} bytes", item.len());
        let info = parse_extent_item(key, &item).unwrap();
        let k = keyed(&mut tx);
        assert!(!k.is_empty() && info.inline_refs.len() > 20, "{} inline, {} keyed", info.inline_refs.len(), k.len());
        assert_eq!((info.refs, info.inline_refs.len() + k.len()), (61, 61));
        for (kk, body) in &k {
            let ExtentRef::Data { root, objectid, offset, count } = parse_keyed_ref(*kk, body).unwrap() else { panic!() };
            assert_eq!((kk.offset, count), (extent_data_ref_hash(root, objectid, offset), 1));
        }
        // One more of a keyed owner: its item counts 2.
        let ExtentRef::Data { objectid: keyed_owner, .. } = parse_keyed_ref(k[0].0, &k[0].1).unwrap() else { panic!() };
        tx.data_ref_delta(disk_bytenr, disk_num_bytes, FS_TREE_OBJECTID, keyed_owner, 0, 1).unwrap();
        let body = tx.get(EXTENT_TREE_OBJECTID, k[0].0).unwrap().unwrap();
        assert!(matches!(parse_keyed_ref(k[0].0, &body).unwrap(), ExtentRef::Data { count: 2, .. }));
        // Dropping a reference nobody holds is corruption, not a silent no-op.
        assert!(tx.data_ref_delta(disk_bytenr, disk_num_bytes, FS_TREE_OBJECTID, 999, 0, -1).is_err());
        tx.data_ref_delta(disk_bytenr, disk_num_bytes, FS_TREE_OBJECTID, keyed_owner, 0, -1).unwrap();
        for i in 0..60 {
            assert!(!tx.data_ref_delta(disk_bytenr, disk_num_bytes, FS_TREE_OBJECTID, 1000 + i, 0, -1).unwrap());
        }
        assert!(keyed(&mut tx).is_empty());
        assert_eq!(tx.get(EXTENT_TREE_OBJECTID, key).unwrap().unwrap(), before);
        // The last reference gone: the extent is gone.
        assert!(tx.data_ref_delta(disk_bytenr, disk_num_bytes, FS_TREE_OBJECTID, ino, 0, -1).unwrap());
        assert!(tx.get(EXTENT_TREE_OBJECTID, key).unwrap().is_none());
    }
}
