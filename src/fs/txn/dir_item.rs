//! Names in directories: dir items and dir index items, and the inode
//! refs and extrefs that name each inode's parents (the kernel's
//! dir-item.c and inode-item.c); lookups by name and by path.
//!
//! Names: an inode's names in one directory share an INODE_REF item until
//! it would pass a leaf's largest item, then go into INODE_EXTREF items, as
//! the kernel keeps them.

use crate::error::{CorruptKind, Error, Result};
use crate::format::encode;
use crate::format::items::{self, parse_dir_items};
use crate::format::limits;
use crate::format::*;

use super::types::Place;
use super::Transaction;
use crate::fs::InodeId;

impl Transaction {
    /// (inode, dir type) named `name` in directory `dir`.
    /// `name` in directory `dir` of tree `root`: (inode, dir type). An entry
    /// that is a subvolume is an error here: the engine's own edits (unlink,
    /// rename, link) stay inside one tree; [`Self::lookup`] steps into it.
    pub(crate) fn lookup_name(&mut self, root: u64, dir: u64, name: &[u8]) -> Result<Option<(u64, u8)>> {
        match self.lookup_entry(root, dir, name)? {
            None => Ok(None),
            Some(e) if e.location.item_type == INODE_ITEM_KEY => Ok(Some((e.location.objectid, e.dir_type))),
            Some(e) if !self.subvol_linked_here(root, dir, e.location.objectid, name)? => Err(placeholder(e.location.objectid, name)),
            Some(_) => Err(Error::Unsupported(format!(
                "{}: is a subvolume (`btrs subvolume delete` deletes it; btrs does not move or link subvolumes)",
                crate::name::Name(name)
            ))),
        }
    }

    /// Whether subvolume `sub` is linked as `dir/name` in tree `root` (its
    /// ROOT_REF, as this transaction has it: one made or deleted in it
    /// too); a snapshot's entry for a subvolume nested in its source is not.
    pub(crate) fn subvol_linked_here(&mut self, root: u64, dir: u64, sub: u64, name: &[u8]) -> Result<bool> {
        Ok(match self.get(ROOT_TREE_OBJECTID, Key::new(root, ROOT_REF_KEY, sub))? {
            Some(body) => {
                let r = items::parse_root_ref(&body).map_err(|e| e.within(format!("root ref {root} -> {sub}")))?;
                r.dirid == dir && r.name == name
            }
            None => false,
        })
    }

    pub(crate) fn lookup_entry(&mut self, root: u64, dir: u64, name: &[u8]) -> Result<Option<items::DirEntry>> {
        let Some(data) = self.get(root, Key::new(dir, DIR_ITEM_KEY, items::name_hash(name)))? else { return Ok(None) };
        Ok(parse_dir_items(&data)?.into_iter().find(|e| e.name == name))
    }

    /// `name` in directory `dir` of tree `root`, stepping into a subvolume
    /// when the entry is one (its root directory), as path walks do.
    pub(crate) fn lookup(&mut self, root: u64, dir: u64, name: &[u8]) -> Result<Option<Place>> {
        let Some(e) = self.lookup_entry(root, dir, name)? else { return Ok(None) };
        match e.location.item_type {
            INODE_ITEM_KEY => Ok(Some(Place { id: InodeId { subvol: root, ino: e.location.objectid }, dir_type: e.dir_type })),
            ROOT_ITEM_KEY => {
                let sub = e.location.objectid;
                let at = || format!("subvolume {} ({})", sub, crate::name::Name(name));
                // A snapshot's stand-in for a subvolume nested in its source,
                // or one being deleted (its entry stays until the kernel's
                // cleaner runs).
                if !self.subvol_linked_here(root, dir, sub, name)? {
                    return Err(placeholder(sub, name));
                }
                let (_, ri) = self.root_item_now(sub)?.ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, at(), "no root item"))?;
                Ok(Some(Place { id: InodeId { subvol: sub, ino: ri.root_dirid.get() }, dir_type: FT_DIR }))
            }
            t => Err(Error::corrupt(CorruptKind::ItemValue, format!("directory {dir} of tree {root}"), format!("entry location type {t}"))),
        }
    }

    /// Resolve an absolute path from the top-level subvolume, through nested
    /// subvolumes, to where it leads.
    pub fn resolve<'p>(&mut self, path: impl Into<crate::fs::path::ImagePath<'p>>) -> Result<Option<Place>> {
        let path = path.into();
        let top = Place { id: InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID }, dir_type: FT_DIR };
        crate::fs::path::walk(path, top, |p| p.dir_type == FT_DIR, |p, name| self.lookup(p.root(), p.ino(), name))?.if_present(path)
    }

    fn next_index(&mut self, root: u64, dir: u64) -> Result<u64> {
        match self.last_le(root, Key::new(dir, DIR_INDEX_KEY, u64::MAX))? {
            Some((k, _)) if k.objectid == dir && k.item_type == DIR_INDEX_KEY => Ok(k.offset + 1),
            _ => Ok(2),
        }
    }

    /// Add the name `name` in `dir` for inode `ino` (dir item, dir index,
    /// inode ref); the caller adjusts `ino`'s nlink.
    pub(crate) fn add_link(&mut self, root: u64, dir: u64, name: &[u8], ino: u64, dir_type: u8) -> Result<()> {
        let index = self.add_entry(root, dir, name, Key::new(ino, INODE_ITEM_KEY, 0), dir_type)?;
        self.add_inode_ref(root, ino, dir, name, index)
    }

    /// The dir item and dir index of `dir/name` leading to `location` (an
    /// inode, or a subvolume's ROOT_ITEM key); the directory grows by the
    /// name twice, as the kernel counts it. Its index.
    pub(crate) fn add_entry(&mut self, root: u64, dir: u64, name: &[u8], location: Key, dir_type: u8) -> Result<u64> {
        limits::check_entry_name(name)?;
        // Names with the same hash share one DIR_ITEM (read once: whether
        // the name is there, and what the new entry joins).
        let hkey = Key::new(dir, DIR_ITEM_KEY, items::name_hash(name));
        let mut body = self.get(root, hkey)?.unwrap_or_default();
        if parse_dir_items(&body)?.iter().any(|e| e.name == name) {
            return Err(Error::Invalid(format!("{} already exists", crate::name::Name(name))));
        }
        let mut d = self.read_inode(root, dir)?;
        if d.mode.get() & S_IFMT != S_IFDIR {
            return Err(Error::Invalid(format!("inode {dir} is not a directory")));
        }
        // As may_change_dir, with the flags just read.
        self.may_change_flags(root, dir, d.flags.get(), true)?;
        let index = self.next_index(root, dir)?;
        let transid = self.transid();
        let entry = encode::dir_item(&items::DirEntry { location, transid, dir_type, name: name.to_vec(), data: Vec::new() })?;
        // The shared DIR_ITEM must still fit a leaf.
        body.extend_from_slice(&entry);
        let max = limits::max_item_size(self.store.fs.sb.nodesize.get());
        if body.len() > max {
            return Err(Error::Invalid(format!(
                "{}: the directory entries sharing its name hash would take {} bytes, more than a leaf's {max}",
                crate::name::Name(name),
                body.len()
            )));
        }
        self.put(root, hkey, body)?;
        self.insert(root, Key::new(dir, DIR_INDEX_KEY, index), entry)?;
        d.size = (d.size.get() + 2 * name.len() as u64).into();
        self.touch(&mut d, true);
        self.put_inode(root, dir, &d)?;
        Ok(index)
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
        let body = encode::inode_refs(&refs)?;
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
        let body = encode::inode_extrefs(&xrefs)?;
        if body.len() > max {
            return Err(Error::Invalid(format!(
                "{}: the extended inode refs of inode {ino} sharing its hash would take {} bytes, more than a leaf's {max}",
                crate::name::Name(name),
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
                    self.put(root, rkey, encode::inode_refs(&refs)?)?;
                }
                return Ok(r.index);
            }
        }
        let xkey = Key::new(ino, INODE_EXTREF_KEY, items::extref_hash(dir, name));
        let missing = || {
            Error::corrupt(
                CorruptKind::MissingItem,
                format!("inode {root}/{ino}"),
                format!("no inode ref or extref for {} in directory {dir}", crate::name::Name(name)),
            )
        };
        let d = self.get(root, xkey)?.ok_or_else(missing)?;
        let mut refs = items::parse_inode_extrefs(&d)?;
        let i = refs.iter().position(|r| r.parent == dir && r.name == name).ok_or_else(missing)?;
        let r = refs.remove(i);
        if refs.is_empty() {
            self.delete(root, xkey)?;
        } else {
            self.put(root, xkey, encode::inode_extrefs(&refs)?)?;
        }
        Ok(r.index)
    }

    /// Remove the name `name` from `dir` (not the inode itself); returns the inode.
    pub(super) fn remove_link(&mut self, root: u64, dir: u64, name: &[u8]) -> Result<u64> {
        let ent = self.lookup_entry(root, dir, name)?.ok_or_else(|| Error::NotFound(crate::name::Name(name).to_string()))?;
        if ent.location.item_type != INODE_ITEM_KEY {
            return Err(Error::Unsupported("removing a subvolume".into()));
        }
        let ino = ent.location.objectid;
        // An immutable or append-only inode keeps its names.
        self.may_change(root, ino, false)?;
        let index = self.remove_inode_ref(root, ino, dir, name)?;
        self.remove_entry(root, dir, name, index)?;
        Ok(ino)
    }

    /// Take `dir/name` (dir index `index`) out of the directory: its dir
    /// item entry and dir index; the directory shrinks by the name twice.
    pub(crate) fn remove_entry(&mut self, root: u64, dir: u64, name: &[u8], index: u64) -> Result<()> {
        self.may_change_dir(root, dir, true)?;
        let hkey = Key::new(dir, DIR_ITEM_KEY, items::name_hash(name));
        let data = self.get(root, hkey)?.ok_or_else(|| Error::NotFound(crate::name::Name(name).to_string()))?;
        let entries = parse_dir_items(&data)?;
        if !entries.iter().any(|e| e.name == name) {
            return Err(Error::NotFound(crate::name::Name(name).to_string()));
        }
        // Rebuild the dir item without this name.
        let remaining: Vec<items::DirEntry> = entries.into_iter().filter(|e| e.name != name).collect();
        let rest = encode::dir_items(&remaining)?;
        if rest.is_empty() {
            self.delete(root, hkey)?;
        } else {
            self.put(root, hkey, rest)?;
        }
        self.delete(root, Key::new(dir, DIR_INDEX_KEY, index))?;
        let mut d = self.read_inode(root, dir)?;
        d.size = d.size.get().saturating_sub(2 * name.len() as u64).into();
        self.touch(&mut d, true);
        self.put_inode(root, dir, &d)
    }
}

/// The refusal to step into or change a snapshot's placeholder of subvolume `sub`.
fn placeholder(sub: u64, name: &[u8]) -> Error {
    Error::Unsupported(format!(
        "{}: an empty placeholder for subvolume {sub}, which is not held here (a snapshot does not hold the \
         subvolumes nested in its source; a deleted one stays until cleaned up); btrs does not change placeholders",
        crate::name::Name(name)
    ))
}
