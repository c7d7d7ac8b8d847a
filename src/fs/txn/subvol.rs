//! Subvolumes and snapshots: a new empty subvolume, a snapshot sharing
//! every block with its source, and a subvolume deleted with its tree
//! dropped (the kernel's create_subvol, create_pending_snapshot and
//! btrfs_drop_snapshot), plus the read-only flag and the default subvolume.
//!
//! A snapshot copies only the source's root block. Everything the root
//! points to gains one back reference from the new tree (TREE_BLOCK_REF or
//! EXTENT_DATA_REF with the new root's id, since the copy is owned by it),
//! as btrfs_copy_root leaves them; later writes to either tree copy shared
//! blocks the way `extent_tree::cow_shared` does.
//!
//! Deleting drops the tree from its root: a block that other trees still
//! use loses only this tree's reference; a block only this tree uses gives
//! up its references to what it points to, then goes (with the data
//! extents whose last reference that was, and their checksums). A block's
//! reference to its child names the referencing block's owner (or, for a
//! FULL_BACKREF block, its address), which is what `btrfs check` expects;
//! the kernel's cleaner drops a deleted subvolume the same way (without
//! updating back references, `update_ref` 0).

use zerocopy::FromZeros;

use crate::error::{CorruptKind, Error, Result};
use crate::format::items::{self, ExtentRef, RootRefEntry};
use crate::format::*;
use crate::format::{encode, encode::RootItemSize};
use crate::fs::InodeId;
use crate::tree::block::{Expect, TreeBlock};
use crate::tree::cow::CowTree;

use super::extent_tree::{children, Child};
use super::Transaction;

/// The data extents a leaf references: (extent item key, inode, file offset
/// of the extent's start), one per file extent item (see `children`).
fn data_refs(block: &TreeBlock) -> Result<Vec<(Key, u64, u64)>> {
    Ok(children(block)?
        .into_iter()
        .filter_map(|c| match c {
            Child::Data { key, ino, offset } => Some((key, ino, offset)),
            Child::Block(_) => None,
        })
        .collect())
}

/// Where a subvolume is linked: its parent tree, the directory in it, the
/// name and the directory index (its ROOT_BACKREF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubvolLink {
    pub parent: u64,
    pub dirid: u64,
    pub name: Vec<u8>,
    pub index: u64,
}

impl Transaction {
    /// One past the highest tree id in use, from 256 (the kernel's
    /// btrfs_find_highest_objectid on the root tree).
    fn next_subvol_id(&mut self) -> Result<u64> {
        let last = self.last_le(ROOT_TREE_OBJECTID, Key::new(LAST_FREE_OBJECTID, u8::MAX, u64::MAX))?;
        let highest = last.map_or(0, |(k, _)| k.objectid).max(FIRST_FREE_OBJECTID - 1);
        let id = highest.checked_add(1).filter(|&id| id <= LAST_FREE_OBJECTID);
        id.ok_or_else(|| Error::NoSpace("no subvolume id left".into()))
    }

    /// The committed root item of subvolume `id`, refused when this
    /// transaction already changed its tree (snapshots and drops read the
    /// committed tree).
    fn clean_root_item(&mut self, id: u64) -> Result<(Key, RootItem)> {
        if self.trees.get(&id).is_some_and(|t| t.is_dirty()) {
            return Err(Error::Internal(format!("subvolume {id} changed in this transaction before a snapshot or delete")));
        }
        let (key, ri) = self.root_item_now(id)?.ok_or_else(|| Error::NotFound(format!("subvolume {id}")))?;
        if ri.refs.get() == 0 || ri.flags.get() & ROOT_SUBVOL_DEAD != 0 {
            return Err(Error::NotFound(format!("subvolume {id} (deleted, not yet cleaned up)")));
        }
        Ok((key, ri))
    }

    /// Link subvolume `id` as `dir/name`: dir item and index leading to its
    /// root item (`location_offset` 0 for a new subvolume, u64::MAX for a
    /// snapshot, as the kernel writes them), ROOT_REF and ROOT_BACKREF.
    fn link_subvol(&mut self, dir: InodeId, name: &[u8], id: u64, location_offset: u64) -> Result<()> {
        self.ensure_writable(dir.subvol)?;
        let index = self.add_entry(dir.subvol, dir.ino, name, Key::new(id, ROOT_ITEM_KEY, location_offset), FT_DIR)?;
        let r = encode::root_ref(&RootRefEntry { dirid: dir.ino, sequence: index, name: name.to_vec() })?;
        self.insert(ROOT_TREE_OBJECTID, Key::new(dir.subvol, ROOT_REF_KEY, id), r.clone())?;
        self.insert(ROOT_TREE_OBJECTID, Key::new(id, ROOT_BACKREF_KEY, dir.subvol), r)
    }

    /// Where subvolume `id` is linked (None: nowhere, the top level).
    pub(crate) fn subvol_link(&mut self, id: u64) -> Result<Option<SubvolLink>> {
        let refs = self.range(ROOT_TREE_OBJECTID, Key::new(id, ROOT_BACKREF_KEY, 0), Key::new(id, ROOT_BACKREF_KEY, u64::MAX))?;
        let Some((k, body)) = refs.into_iter().next() else { return Ok(None) };
        let r = items::parse_root_ref(&body).map_err(|e| e.within(format!("root backref {k}")))?;
        Ok(Some(SubvolLink { parent: k.offset, dirid: r.dirid, name: r.name, index: r.sequence }))
    }

    /// Add subvolume `id` to the uuid tree's entry of `kind` for `uuid`.
    fn uuid_add(&mut self, uuid: &[u8; 16], kind: u8, id: u64) -> Result<()> {
        let key = items::uuid_key(uuid, kind);
        let mut ids = match self.get(UUID_TREE_OBJECTID, key)? {
            Some(body) => items::parse_u64_array(&body, "uuid item")?,
            None => Vec::new(),
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
        self.put(UUID_TREE_OBJECTID, key, encode::u64_array(&ids)).map(|_| ())
    }

    /// Take subvolume `id` out of the uuid tree's entry of `kind` for `uuid`.
    fn uuid_remove(&mut self, uuid: &[u8; 16], kind: u8, id: u64) -> Result<()> {
        let key = items::uuid_key(uuid, kind);
        let Some(body) = self.get(UUID_TREE_OBJECTID, key)? else { return Ok(()) };
        let ids: Vec<u64> = items::parse_u64_array(&body, "uuid item")?.into_iter().filter(|&x| x != id).collect();
        if ids.is_empty() {
            self.delete(UUID_TREE_OBJECTID, key)?;
        } else {
            self.put(UUID_TREE_OBJECTID, key, encode::u64_array(&ids))?;
        }
        Ok(())
    }

    /// With quotas on, the level-0 qgroup of a new subvolume (counts zero,
    /// no limits), as the kernel's btrfs_qgroup_inherit adds it; the counts
    /// are then marked inconsistent by the commit.
    fn add_qgroup(&mut self, id: u64) -> Result<()> {
        if self.store.fs.root_item(QUOTA_TREE_OBJECTID)?.is_none() {
            return Ok(());
        }
        let transid = self.transid();
        self.put(QUOTA_TREE_OBJECTID, Key::new(0, QGROUP_INFO_KEY, id), encode::qgroup_info(transid))?;
        self.put(QUOTA_TREE_OBJECTID, Key::new(0, QGROUP_LIMIT_KEY, id), encode::qgroup_limit())?;
        Ok(())
    }

    /// Register a tree made in this transaction: its root item (written now,
    /// kept current by settle) and the tree itself.
    fn add_tree(&mut self, key: Key, ri: RootItem, tree: CowTree) -> Result<()> {
        self.insert(ROOT_TREE_OBJECTID, key, encode::root_item(&ri, RootItemSize::Full))?;
        self.root_items.insert(key.objectid, (key, ri));
        self.trees.insert(key.objectid, tree);
        Ok(())
    }

    /// A new, empty subvolume linked as `dir/name`; its id.
    pub(crate) fn create_subvolume(&mut self, dir: InodeId, name: &[u8]) -> Result<u64> {
        let id = self.next_subvol_id()?;
        let transid = self.transid();
        let tree = CowTree::create(&mut self.store, id)?;
        let root = tree.root();
        let uuid = *uuid::Uuid::new_v4().as_bytes();
        let mut ri = RootItem::new_zeroed();
        // The embedded inode as the kernel's create_subvol leaves it.
        ri.inode.generation = 1.into();
        ri.inode.size = 3.into();
        ri.inode.nlink = 1.into();
        ri.inode.nbytes = u64::from(self.store.fs.sb.nodesize.get()).into();
        ri.inode.mode = (S_IFDIR | 0o755).into();
        ri.inode.flags = INODE_ROOT_ITEM_INIT.into();
        ri.generation = transid.into();
        ri.generation_v2 = transid.into();
        ri.root_dirid = FIRST_FREE_OBJECTID.into();
        ri.bytenr = root.bytenr.into();
        ri.level = 0;
        ri.refs = 1.into();
        ri.uuid = uuid;
        ri.ctransid = transid.into();
        ri.otransid = transid.into();
        ri.ctime = self.now;
        ri.otime = self.now;
        // settle adds the tree's blocks (used_delta) to bytes_used.
        self.add_tree(Key::new(id, ROOT_ITEM_KEY, 0), ri, tree)?;
        let mut it = InodeItem::new_zeroed();
        it.generation = transid.into();
        it.transid = transid.into();
        it.nlink = 1.into();
        it.mode = (S_IFDIR | 0o755).into();
        it.atime = self.now;
        it.ctime = self.now;
        it.mtime = self.now;
        it.otime = self.now;
        self.insert(id, Key::new(FIRST_FREE_OBJECTID, INODE_ITEM_KEY, 0), encode::inode_item(&it))?;
        self.insert(
            id,
            Key::new(FIRST_FREE_OBJECTID, INODE_REF_KEY, FIRST_FREE_OBJECTID),
            encode::inode_refs(&[items::InodeRefEntry { parent: FIRST_FREE_OBJECTID, index: 0, name: b"..".to_vec() }])?,
        )?;
        self.link_subvol(dir, name, id, 0)?;
        self.uuid_add(&uuid, UUID_KEY_SUBVOL, id)?;
        self.add_qgroup(id)?;
        Ok(id)
    }

    /// A snapshot of subvolume `src` (as last committed) linked as
    /// `dir/name`, read-only when asked; its id.
    pub(crate) fn snapshot(&mut self, src: u64, dir: InodeId, name: &[u8], readonly: bool) -> Result<u64> {
        let (src_key, mut src_ri) = self.clean_root_item(src)?;
        let id = self.next_subvol_id()?;
        let transid = self.transid();
        let old = self.store.fs.reader.read_block(
            src_ri.bytenr.get(),
            Expect { level: Some(src_ri.level), generation: Some(src_ri.generation.get()), ..Default::default() },
            Some(src),
        )?;
        let tree = CowTree::copy_of(&mut self.store, &old, id)?;
        let root = tree.root();
        // The copy's blocks are the source's: its bytes_used is the source's
        // (the kernel copies the root item), not one block.
        self.store.used_delta.remove(&id);
        // What the copy points to gains a reference from it.
        self.add_child_refs(&old, root.bytenr, Some(id))?;
        // The source has been snapshotted in this generation: the kernel
        // looks up the references of its blocks up to this generation
        // before it changes one in place (btrfs_block_can_be_shared), so
        // this must not be lost.
        src_ri.last_snapshot = transid.into();
        let stored = self.get(ROOT_TREE_OBJECTID, src_key)?.map_or(0, |b| b.len());
        self.put(ROOT_TREE_OBJECTID, src_key, encode::root_item(&src_ri, RootItemSize::of_len(stored)))?;
        if let Some((_, cached)) = self.root_items.get_mut(&src) {
            *cached = src_ri;
        }
        let mut ri = src_ri;
        ri.bytenr = root.bytenr.into();
        ri.level = root.level;
        ri.generation = transid.into();
        ri.generation_v2 = transid.into();
        ri.refs = 1.into();
        ri.drop_progress = DiskKey::new_zeroed();
        ri.drop_level = 0;
        ri.parent_uuid = src_ri.uuid;
        ri.uuid = *uuid::Uuid::new_v4().as_bytes();
        ri.inode.flags = (ri.inode.flags.get() | INODE_ROOT_ITEM_INIT).into();
        let mut flags = ri.flags.get() & !ROOT_SUBVOL_DEAD;
        if readonly {
            flags |= ROOT_SUBVOL_RDONLY;
        } else {
            flags &= !ROOT_SUBVOL_RDONLY;
            // A writable snapshot is nobody's received copy.
            ri.received_uuid = [0; 16];
            ri.stransid = 0.into();
            ri.rtransid = 0.into();
            ri.stime = Timespec::new_zeroed();
            ri.rtime = Timespec::new_zeroed();
        }
        ri.flags = flags.into();
        ri.otransid = transid.into();
        ri.otime = self.now;
        let uuid = ri.uuid;
        let received = ri.received_uuid;
        // A snapshot's root item key records when it was taken.
        self.add_tree(Key::new(id, ROOT_ITEM_KEY, transid), ri, tree)?;
        self.link_subvol(dir, name, id, u64::MAX)?;
        self.uuid_add(&uuid, UUID_KEY_SUBVOL, id)?;
        if received != [0; 16] {
            self.uuid_add(&received, UUID_KEY_RECEIVED_SUBVOL, id)?;
        }
        self.add_qgroup(id)?;
        Ok(id)
    }

    /// Set or clear the read-only flag of subvolume `id`. Clearing it on a
    /// received subvolume forgets that it was received (its received uuid),
    /// as `btrfs property set ro false` does.
    pub(crate) fn set_subvol_readonly(&mut self, id: u64, readonly: bool) -> Result<bool> {
        let (key, mut ri) = self.root_item_now(id)?.ok_or_else(|| Error::NotFound(format!("subvolume {id}")))?;
        let flags = ri.flags.get();
        let new = if readonly { flags | ROOT_SUBVOL_RDONLY } else { flags & !ROOT_SUBVOL_RDONLY };
        if new == flags {
            return Ok(false);
        }
        ri.flags = new.into();
        if !readonly && ri.received_uuid != [0; 16] {
            let received = ri.received_uuid;
            self.uuid_remove(&received, UUID_KEY_RECEIVED_SUBVOL, id)?;
            ri.received_uuid = [0; 16];
            ri.stransid = 0.into();
            ri.rtransid = 0.into();
            ri.stime = Timespec::new_zeroed();
            ri.rtime = Timespec::new_zeroed();
        }
        let stored = self.get(ROOT_TREE_OBJECTID, key)?.map_or(0, |b| b.len());
        self.put(ROOT_TREE_OBJECTID, key, encode::root_item(&ri, RootItemSize::of_len(stored)))?;
        if let Some((_, cached)) = self.root_items.get_mut(&id) {
            *cached = ri;
        }
        Ok(true)
    }

    /// Give the filesystem a new label (at most 255 bytes, no NUL), written
    /// with the superblocks of this transaction's commit (which this makes
    /// happen, as `btrfs filesystem label` commits one).
    pub(crate) fn set_label(&mut self, label: &[u8]) -> Result<()> {
        if label.len() >= LABEL_SIZE || label.contains(&0) {
            return Err(Error::Invalid(format!("a label holds at most {} bytes and no NUL ({} given)", LABEL_SIZE - 1, label.len())));
        }
        let mut l = [0u8; LABEL_SIZE];
        l[..label.len()].copy_from_slice(label);
        self.store.fs.sb.label = l;
        // A new generation, so that the superblocks are written.
        let key = Key::new(FS_TREE_OBJECTID, ROOT_ITEM_KEY, 0);
        let body = self
            .get(ROOT_TREE_OBJECTID, key)?
            .ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, "root tree", "no root item of the top level"))?;
        self.put(ROOT_TREE_OBJECTID, key, body)?;
        Ok(())
    }

    /// The subvolume mounted when none is named: the "default" entry of the
    /// root tree's directory.
    pub(crate) fn default_subvol(&mut self) -> Result<u64> {
        let e = self.lookup_entry(ROOT_TREE_OBJECTID, ROOT_TREE_DIR_OBJECTID, b"default")?;
        Ok(e.map_or(FS_TREE_OBJECTID, |e| e.location.objectid))
    }

    /// Make subvolume `id` the default, as `btrfs subvolume set-default`
    /// does (the "default" entry of the root tree's directory, and the
    /// DEFAULT_SUBVOL incompat flag).
    pub(crate) fn set_default_subvol(&mut self, id: u64) -> Result<()> {
        if id != FS_TREE_OBJECTID {
            self.clean_root_item(id)?;
        }
        let hkey = Key::new(ROOT_TREE_DIR_OBJECTID, DIR_ITEM_KEY, items::name_hash(b"default"));
        let transid = self.transid();
        let entry = items::DirEntry {
            location: Key::new(id, ROOT_ITEM_KEY, if id == FS_TREE_OBJECTID { u64::MAX } else { 0 }),
            transid,
            dir_type: FT_DIR,
            name: b"default".to_vec(),
            data: Vec::new(),
        };
        // Other names sharing the hash stay.
        let mut entries = match self.get(ROOT_TREE_OBJECTID, hkey)? {
            Some(body) => items::parse_dir_items(&body)?,
            None => Vec::new(),
        };
        entries.retain(|e| e.name != b"default");
        entries.push(entry);
        self.put(ROOT_TREE_OBJECTID, hkey, encode::dir_items(&entries)?)?;
        if id != FS_TREE_OBJECTID {
            self.set_incompat(INCOMPAT_DEFAULT_SUBVOL);
        }
        Ok(())
    }

    /// Delete subvolume `id`: unlinked, and its tree dropped with every
    /// block and data extent no other tree uses. Refused for the top level,
    /// the default subvolume, one holding other subvolumes, and one linked
    /// in a read-only subvolume.
    pub(crate) fn delete_subvolume(&mut self, id: u64) -> Result<()> {
        self.check_delete(id, false)?;
        let (key, ri) = self.clean_root_item(id)?;
        if let Some(link) = self.subvol_link(id)? {
            self.remove_entry(link.parent, link.dirid, &link.name, link.index)?;
            self.delete(ROOT_TREE_OBJECTID, Key::new(link.parent, ROOT_REF_KEY, id))?;
            self.delete(ROOT_TREE_OBJECTID, Key::new(id, ROOT_BACKREF_KEY, link.parent))?;
        }
        self.uuid_remove(&ri.uuid, UUID_KEY_SUBVOL, id)?;
        if ri.received_uuid != [0; 16] {
            self.uuid_remove(&ri.received_uuid, UUID_KEY_RECEIVED_SUBVOL, id)?;
        }
        self.drop_block(id, ri.bytenr.get(), ri.level, Some(ri.generation.get()), ExtentRef::TreeBlock { root: id })?;
        self.delete(ROOT_TREE_OBJECTID, key)?;
        // A deletion the kernel had begun (an orphan item for its cleaner).
        self.delete(ROOT_TREE_OBJECTID, Key::new(ORPHAN_OBJECTID, ORPHAN_ITEM_KEY, id))?;
        self.root_items.remove(&id);
        self.trees.remove(&id);
        self.store.used_delta.remove(&id);
        Ok(())
    }

    /// Whether subvolume `id` may be deleted, changing nothing: not the top
    /// level, not the default, holding no other subvolume (unless
    /// `nested_ok`: they go first), its root directory neither immutable
    /// nor append-only, linked in a writable subvolume in a directory that
    /// may lose a name. A command deleting several checks each before it
    /// deletes any.
    pub(crate) fn check_delete(&mut self, id: u64, nested_ok: bool) -> Result<()> {
        if id == FS_TREE_OBJECTID {
            return Err(Error::Invalid("the top-level subvolume (5) cannot be deleted".into()));
        }
        if self.default_subvol()? == id {
            return Err(Error::Invalid(format!(
                "subvolume {id} is the default subvolume: make another one the default first (`btrs subvolume set-default`)"
            )));
        }
        let (_, ri) = self.root_item_now(id)?.ok_or_else(|| Error::NotFound(format!("subvolume {id}")))?;
        if !nested_ok {
            let nested = self.range(ROOT_TREE_OBJECTID, Key::new(id, ROOT_REF_KEY, 0), Key::new(id, ROOT_REF_KEY, u64::MAX))?;
            if let Some((k, _)) = nested.first() {
                return Err(Error::Invalid(format!("subvolume {id} holds subvolume {}: delete that first (or use -R)", k.offset)));
            }
        }
        // Its root directory goes with it: not an immutable one.
        self.may_change(id, ri.root_dirid.get(), false)?;
        if let Some(link) = self.subvol_link(id)? {
            self.ensure_writable(link.parent)?;
            self.may_change_dir(link.parent, link.dirid, true)?;
        }
        Ok(())
    }

    /// Drop the reference `via` to tree block `addr` at `level` while tree
    /// `dropping` goes: when other references remain, only that one goes
    /// (after the block, if `dropping` made it, turns FULL_BACKREF: see
    /// [`Self::full_backref`]); when it was the last, what the block points
    /// to loses the block's references first, then the block goes.
    /// `generation`: what the referencing pointer says, checked on read.
    fn drop_block(&mut self, dropping: u64, addr: u64, level: u8, generation: Option<u64>, via: ExtentRef) -> Result<()> {
        let key = Key::new(addr, METADATA_ITEM_KEY, u64::from(level));
        let at = || format!("tree block {addr}");
        let body = self.get(EXTENT_TREE_OBJECTID, key)?.ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, at(), "no extent item"))?;
        let info = items::parse_extent_item(key, &body)?;
        let expect = Expect { level: Some(level), generation, ..Default::default() };
        if info.refs > 1 {
            self.full_backref(dropping, addr, expect, info.flags)?;
            self.drop_ref(key, via, 1)?;
            return Ok(());
        }
        let block = self.store.fs.reader.read_block(addr, expect, None)?;
        self.drop_children(dropping, &block, info.flags & BLOCK_FLAG_FULL_BACKREF != 0)?;
        if !self.drop_ref(key, via, 1)? {
            return Err(Error::corrupt(CorruptKind::ExtentRefs, at(), "one reference counted, more left after dropping it"));
        }
        self.store.release_tree_block(addr)
    }

    /// Every reference `block` holds, dropped: by its address when it is
    /// FULL_BACKREF, else from its owner.
    fn drop_children(&mut self, dropping: u64, block: &TreeBlock, full_backref: bool) -> Result<()> {
        let (parent, owner) = (block.logical, block.owner());
        if block.level() > 0 {
            for i in 0..block.nritems() {
                let (_, child, generation) = block.ptr(i);
                let via = if full_backref { ExtentRef::SharedBlock { parent } } else { ExtentRef::TreeBlock { root: owner } };
                self.drop_block(dropping, child, block.level() - 1, Some(generation), via)?;
            }
            return Ok(());
        }
        for (key, ino, offset) in data_refs(block)? {
            let via = if full_backref {
                ExtentRef::SharedData { parent, count: 0 }
            } else {
                ExtentRef::Data { root: owner, objectid: ino, offset, count: 0 }
            };
            if self.drop_ref(key, via, 1)? {
                self.store.release_data(key.objectid)?;
                self.delete_csums(key.objectid, key.offset)?;
            }
        }
        Ok(())
    }

    /// A block tree `dropping` made (its owner), which other trees still
    /// use: what it points to is referenced "from tree `dropping`", which
    /// is going. Those references become references from the block's
    /// address, and the block FULL_BACKREF; the same below it for every
    /// block `dropping` made (the kernel's drop_snapshot with update_ref, in
    /// its UPDATE_BACKREF stage). Blocks already FULL_BACKREF, and blocks
    /// other trees made, keep theirs.
    fn full_backref(&mut self, dropping: u64, addr: u64, expect: Expect, flags: u64) -> Result<()> {
        if flags & BLOCK_FLAG_FULL_BACKREF != 0 {
            return Ok(());
        }
        let block = self.store.fs.reader.read_block(addr, expect, None)?;
        if block.owner() != dropping {
            return Ok(());
        }
        if block.level() > 0 {
            for i in 0..block.nritems() {
                let (_, child, generation) = block.ptr(i);
                let level = block.level() - 1;
                let key = Key::new(child, METADATA_ITEM_KEY, u64::from(level));
                // The new reference first: dropping first could take the
                // count through zero.
                self.add_ref(key, ExtentRef::SharedBlock { parent: addr }, 1)?;
                self.drop_ref(key, ExtentRef::TreeBlock { root: dropping }, 1)?;
                let body = self
                    .get(EXTENT_TREE_OBJECTID, key)?
                    .ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, format!("tree block {child}"), "no extent item"))?;
                let child_flags = items::parse_extent_item(key, &body)?.flags;
                self.full_backref(
                    dropping,
                    child,
                    Expect { level: Some(level), generation: Some(generation), ..Default::default() },
                    child_flags,
                )?;
            }
        } else {
            for (key, ino, offset) in data_refs(&block)? {
                self.add_ref(key, ExtentRef::SharedData { parent: addr, count: 0 }, 1)?;
                self.drop_ref(key, ExtentRef::Data { root: dropping, objectid: ino, offset, count: 0 }, 1)?;
            }
        }
        let key = Key::new(addr, METADATA_ITEM_KEY, u64::from(block.level()));
        self.edit_extent_item(key, |info| {
            info.flags |= BLOCK_FLAG_FULL_BACKREF;
            Ok(0)
        })?;
        Ok(())
    }
}
