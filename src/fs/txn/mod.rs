//! The write engine: a transaction of copy-on-write trees, where it
//! allocates, the extent tree's back references, the bookkeeping settled
//! before a commit, the crash-safe commit, and the namespace and file-data
//! changes made inside it.
//!
//! Model (the kernel's, simplified): every tree the transaction touches is a
//! `CowTree`; the `Store` below them hands out metadata addresses and
//! queues extent-tree reference changes ("delayed refs"). Before the commit,
//! `Transaction::settle` applies those changes to the extent tree, rewrites
//! the block group items and free space tree entries of every block group
//! whose allocation changed, and refreshes root items — each of which may COW
//! more blocks and queue more changes — until a fixed point.
//!
//! Limits (refused cleanly, image untouched): non-skinny metadata extent
//! items, filesystems without a free space tree (v1 space cache), quotas,
//! and a full device set ("no space left"). With quota groups on, a
//! commit marks their counts inconsistent for a rescan (see
//! `mark_qgroups_inconsistent`); simple quotas are refused.
//!
//! The files follow the seams of the kernel's fs/btrfs; each uses only
//! files above it in this list:
//!
//! - `types`: what callers pass and get back (write options and report,
//!   where a path leads);
//! - `readers`: what readers beside the writer need (held space, waiting
//!   for old readers, the in-place mark);
//! - `space`: the allocator and its delayed-ref queue (block groups, free
//!   ranges, new chunks: block-group.c, free-space accounting);
//! - this file: [`Transaction`], its start and its trees' items
//!   (transaction.c's start_transaction);
//! - `inode`: inode items; `csum`: the csum tree;
//! - `extent_tree`: extent items and back references (extent-tree.c,
//!   delayed-ref.c);
//! - `settle`: block group items, the free space tree, chunk and dev items,
//!   root items and quota status brought to a fixed point;
//! - `commit`: tree blocks, flush, superblocks, flush (transaction.c's
//!   commit), and a long transaction's tree blocks written out before it
//!   (the kernel's writeback of dirty metadata);
//! - `xattr` (xattr.c); `dir_item`: dir items and inode refs (dir-item.c,
//!   inode-item.c);
//! - `file_extent`: file extent items and punching ranges out
//!   (btrfs_drop_extents);
//! - `namespace`: create, symlink, link, unlink, rename (inode.c);
//! - `read`: file data read back; `extent_io`: data extents allocated and
//!   written to every mirror;
//! - `compression`: compressed writes (compress_file_range);
//! - `file`: data writes and truncation (file.c);
//! - `subvol`: subvolumes and snapshots made, deleted (their trees
//!   dropped), made read-only or the default (ioctl.c, transaction.c's
//!   create_pending_snapshot, extent-tree.c's btrfs_drop_snapshot).

mod attr;
mod commit;
mod compression;
mod csum;
mod device;
mod dir_item;
mod extent_io;
mod extent_tree;
mod file;
mod file_extent;
mod inode;
mod namespace;
mod read;
mod readers;
mod restripe;
mod setattr;
mod settle;
mod space;
mod subvol;
mod types;
mod xattr;

// The proof that bounce pages matter (tests of fs/direct.rs through the engine).
#[cfg(test)]
mod direct_tests;

pub use attr::{lsattr_string, AttrChange, CHATTR_LETTERS};
pub(crate) use file_extent::MAX_INLINE;
pub(crate) use readers::Held;
pub(crate) use restripe::cut_unit_of;
pub use restripe::{MoveEvent, Restriped};
pub use setattr::{SetAttr, TimeSet};
pub(crate) use space::Store;
pub use subvol::SubvolLink;
pub use types::{BioFn, BioHook, BioRecord, BioStage, CompressOpts, Place, WriteOpts, WriteReport};

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::format::*;
use crate::fs::Filesystem;
use crate::tree::cow::CowTree;
use crate::tree::RootPtr;
use commit::WRITE_BACK_BYTES;
use readers::{wait_for_readers, InPlace};

/// A running transaction. Dropping it without [`Transaction::commit`] aborts:
/// nothing reachable from the superblock was written.
pub struct Transaction {
    pub(crate) store: Store,
    pub(crate) trees: BTreeMap<u64, CowTree>,
    /// Root items as found at open, to notice which changed.
    root_items: HashMap<u64, (Key, RootItem)>,
    /// Current time for inode stamps.
    pub(crate) now: crate::format::Timespec,
    /// Direct bios of this transaction's writes, on the devices' threads
    /// (started by the first direct write).
    pub(crate) direct: Option<crate::volumes::bio::DirectWriter>,
    /// Paths commands named inodes by, for messages: (tree, inode) -> path.
    pub(crate) names: HashMap<(u64, u64), String>,
    /// The in-place mark is held (see `volumes::guard::mark_in_place`), and
    /// whether committed bytes were overwritten under it.
    pub(crate) in_place: InPlace,
    /// The superblock's total_bytes after a device size changed (see
    /// `set_device_size`), else the committed one.
    pub(crate) total_bytes: Option<u64>,
    /// Dirty tree block bytes past which [`Transaction::write_back_if_over`]
    /// writes them out before the commit ([`WRITE_BACK_BYTES`]; tests lower it).
    pub(crate) write_back_at: u64,
    /// Tests: every address [`Transaction::write_back_if_over`] wrote.
    #[cfg(test)]
    pub(crate) written_out: Vec<u64>,
    /// Test-only switches of the direct writer (see `fs::direct`).
    #[cfg(test)]
    pub(crate) direct_no_bounce: bool,
    #[cfg(test)]
    pub(crate) direct_fail_at: Option<u64>,
}

impl Transaction {
    /// Start a transaction on a filesystem opened with `OpenOptions.writable`.
    pub fn begin(fs: Filesystem) -> Result<Transaction> {
        Transaction::begin_holding(fs, Held::default())
    }

    /// Start a transaction that keeps `held` (from this process's earlier
    /// transactions) unused as long as readers need it.
    fn begin_holding(fs: Filesystem, mut held: Held) -> Result<Transaction> {
        let sb = fs.sb;
        let committed = sb.generation.get();
        // A log tree holds what was fsynced after the last commit; the kernel
        // replays it at its next mount. Its blocks (and the data extents it
        // logged) are in no extent tree, so a commit here could allocate over
        // them, and the replay would then read whatever was written there.
        if sb.log_root.get() != 0 {
            return Err(Error::Unsupported(format!(
                "writing to a filesystem with a log tree (block {}: changes fsynced after generation {committed}, which the \
                 kernel replays at its next mount): btrs does not replay it, and a write could reuse the space it lies \
                 in; mount it with the kernel once (which replays and commits it), or drop those changes with \
                 `btrfs rescue zero-log`",
                sb.log_root.get()
            )));
        }
        let since = *held.since.get_or_insert(committed);
        // A reader of a generation older than what this process has seen
        // freed may read blocks freed by an earlier writer: wait for it.
        let oldest = wait_for_readers(&fs, committed, since)?;
        held.release(oldest);
        refuse_unwritable(&fs)?;
        let store = Store::load(fs, held)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(Transaction {
            store,
            trees: BTreeMap::new(),
            root_items: HashMap::new(),
            now: crate::format::Timespec::new(now.as_secs(), now.subsec_nanos()),
            direct: None,
            names: HashMap::new(),
            in_place: InPlace::Unmarked,
            total_bytes: None,
            write_back_at: WRITE_BACK_BYTES,
            #[cfg(test)]
            written_out: Vec::new(),
            #[cfg(test)]
            direct_no_bounce: false,
            #[cfg(test)]
            direct_fail_at: None,
        })
    }

    pub(crate) fn transid(&self) -> u64 {
        self.store.transid
    }

    /// Turn on incompat feature `flag` in the superblock this transaction
    /// commits (a feature the kernel itself turns on when first used).
    pub(crate) fn set_incompat(&mut self, flag: u64) {
        let sb = &mut self.store.fs.sb;
        sb.incompat_flags = (sb.incompat_flags.get() | flag).into();
    }

    pub(crate) fn fs(&self) -> &Filesystem {
        &self.store.fs
    }

    /// Make sure tree `id` is loaded as a CowTree.
    pub(crate) fn open_tree(&mut self, id: u64) -> Result<()> {
        if self.trees.contains_key(&id) {
            return Ok(());
        }
        // The root and chunk trees are named by the superblock, not a root item.
        let root = if id == ROOT_TREE_OBJECTID || id == CHUNK_TREE_OBJECTID {
            self.store.fs.tree_root(id)?
        } else {
            let (k, ri) = self.root_item_now(id)?.ok_or_else(|| Error::NotFound(format!("tree {id} has no root item")))?;
            self.root_items.insert(id, (k, ri));
            RootPtr { bytenr: ri.bytenr.get(), level: ri.level, generation: ri.generation.get(), owner: id }
        };
        self.trees.insert(id, CowTree::new(root));
        Ok(())
    }

    /// The root item of tree `id` as this transaction has it (changed or
    /// made in it, or as committed), largest key offset first.
    pub(crate) fn root_item_now(&mut self, id: u64) -> Result<Option<(Key, RootItem)>> {
        if let Some(c) = self.root_items.get(&id) {
            return Ok(Some(*c));
        }
        match self.last_le(ROOT_TREE_OBJECTID, Key::new(id, ROOT_ITEM_KEY, u64::MAX))? {
            Some((k, body)) if k.objectid == id && k.item_type == ROOT_ITEM_KEY => {
                Ok(Some((k, crate::format::items::parse_root_item(&body).map_err(|e| e.within(format!("root item {k}")))?)))
            }
            _ => Ok(None),
        }
    }

    /// Run `f` on tree `id` with the store.
    pub(crate) fn with_tree<T>(&mut self, id: u64, f: impl FnOnce(&mut CowTree, &mut Store) -> Result<T>) -> Result<T> {
        self.open_tree(id)?;
        let t = self.trees.get_mut(&id).ok_or_else(|| Error::Invalid(format!("tree {id} not open")))?;
        f(t, &mut self.store)
    }

    pub(crate) fn get(&mut self, tree: u64, key: Key) -> Result<Option<Vec<u8>>> {
        self.with_tree(tree, |t, s| t.get(s, key))
    }

    pub(crate) fn range(&mut self, tree: u64, min: Key, max: Key) -> Result<Vec<(Key, Vec<u8>)>> {
        self.with_tree(tree, |t, s| t.range(s, min, max))
    }

    pub(crate) fn insert(&mut self, tree: u64, key: Key, data: Vec<u8>) -> Result<()> {
        self.with_tree(tree, |t, s| t.insert(s, key, data))
    }

    pub(crate) fn put(&mut self, tree: u64, key: Key, data: Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.with_tree(tree, |t, s| t.put(s, key, data))
    }

    pub(crate) fn delete(&mut self, tree: u64, key: Key) -> Result<Option<Vec<u8>>> {
        self.with_tree(tree, |t, s| t.delete(s, key))
    }

    pub(crate) fn last_le(&mut self, tree: u64, key: Key) -> Result<Option<(Key, Vec<u8>)>> {
        self.with_tree(tree, |t, s| t.last_le(s, key))
    }

    /// Wait for every direct bio queued in this transaction; the first error.
    pub(crate) fn finish_direct(&mut self) -> Result<()> {
        match &mut self.direct {
            Some(dw) => dw.finish(),
            None => Ok(()),
        }
    }
}

/// Refuse what the engine cannot write (a filesystem without skinny
/// metadata or a free space tree, with simple quotas or a log tree) and
/// device sets it must not write (read-only, degraded, or with a stale
/// device).
fn refuse_unwritable(fs: &Filesystem) -> Result<()> {
    let sb = fs.sb;
    if !sb.has_incompat(INCOMPAT_SKINNY_METADATA) {
        return Err(Error::Unsupported("writing filesystems without skinny-metadata".into()));
    }
    if !sb.has_compat_ro(COMPAT_RO_FREE_SPACE_TREE) || !sb.has_compat_ro(COMPAT_RO_FREE_SPACE_TREE_VALID) {
        return Err(Error::Unsupported("writing filesystems without a free space tree (v1 space cache)".into()));
    }
    // Simple quotas need an owner ref on every new data extent, which
    // btrs does not write.
    if sb.has_incompat(INCOMPAT_SIMPLE_QUOTA) {
        return Err(Error::Unsupported("writing filesystems with simple quotas".into()));
    }
    if sb.log_root.get() != 0 {
        return Err(Error::Unsupported("the filesystem has a log tree to replay; mount it once with the kernel".into()));
    }
    for (_, d) in fs.volume().devices.iter() {
        if !d.opened_writable()? {
            return Err(Error::Invalid("filesystem opened read-only; open with writable".into()));
        }
    }
    if !fs.volume().missing.is_empty() {
        return Err(Error::Unsupported("writing a degraded filesystem".into()));
    }
    // A write would seal a new generation over a device that lacks
    // earlier ones, and its superblock would then hide that it is stale.
    if let Some(&devid) = fs.volume().stale.keys().next() {
        let after_crash = if fs.volume().lagging.contains(&devid) { " (or --accept-lagging after a crash)" } else { "" };
        return Err(Error::Devices(format!(
            "{}; not writing: run `btrs scrub --repair` to rebuild it from the current copies first{after_crash}",
            fs.volume().stale_text(devid)
        )));
    }
    Ok(())
}
