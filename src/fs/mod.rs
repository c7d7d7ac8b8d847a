//! The filesystem as files: opening a device set, subvolumes, inodes,
//! directories, symlinks, xattrs and file data (with checksum verification
//! and fallback to other copies).

pub mod check;
pub(crate) mod data;
pub(crate) mod direct;
pub(crate) mod inode;
pub(crate) mod pagecache;
pub(crate) mod path;
pub(crate) mod props;
pub mod txn;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

pub use data::FileChunk;
pub use inode::{Inode, InodeId, Timespec};
pub use path::ImagePath;

use crate::error::{CorruptKind, Error, Result};
use crate::format::items::{self, parse_root_item, DirEntry};
use crate::format::*;
use crate::tree::{Expect, RootPtr, TreeBlock, TreeReader};
use crate::volumes::{OpenOptions, Volume};

/// A problem that did not stop the read, e.g. a bad copy served from another.
#[derive(Clone, Debug)]
pub struct Warning(pub String);

pub struct Filesystem {
    pub reader: TreeReader,
    pub sb: SuperBlock,
    pub csum: CsumType,
    pub sectorsize: u32,
    roots: Mutex<HashMap<u64, RootPtr>>,
    warnings: Mutex<Vec<Warning>>,
    /// Two histories on the current devices (see `divergent_histories`),
    /// when the caller opened such a set anyway (`OpenOptions::divergent_ok`).
    pub(crate) divergence: Option<String>,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEnt {
    pub name: Vec<u8>,
    pub id: InodeId,
    pub file_type: FileType,
    /// The entry is a subvolume (or snapshot) root.
    pub(crate) subvol: bool,
    /// For the kernel's placeholder of a subvolume not held here (see
    /// [`Filesystem::entry_inode`]): the directory it is in.
    pub(crate) placeholder_in: Option<InodeId>,
}

// The read half of fs: bytes from images, checked like the layers below.
#[warn(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
impl Filesystem {
    pub fn open(opts: &OpenOptions) -> Result<Filesystem> {
        // A reader beside a writer can open between the superblock writes of
        // its commit: one device a commit behind, holding the only copies of
        // what it then cannot trust. Such a state lasts milliseconds; a crash
        // leaves it for good, and the error then stands.
        const TRIES: u32 = 20;
        for _ in 0..TRIES {
            match Filesystem::open_once(opts) {
                Err(e) if opts.alongside_writer && e.to_string().contains("one commit behind") => {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                r => return r,
            }
        }
        Filesystem::open_once(opts)
    }

    fn open_once(opts: &OpenOptions) -> Result<Filesystem> {
        let mut vol = Volume::open(opts)?;
        let sb = vol.sb;
        let unsupported = sb.unsupported_incompat();
        if unsupported != 0 {
            return Err(Error::Incompatible(format!(
                "incompat features {} are not supported",
                crate::format::superblock::incompat_names(unsupported).join(", ")
            )));
        }
        let sys_chunks = sb.sys_chunks()?;
        for (key, chunk) in &sys_chunks {
            vol.chunks.insert(key.offset, chunk.clone())?;
        }
        // The chunk tree is read before the stale devices can be told apart
        // from lagging ones (that needs the chunk map), but their superblocks
        // already say which are behind: none of those serves it (see
        // ReadCopy::stale), but for one commit behind under
        // --accept-lagging, checked again below once it is known.
        let mut taken = Vec::new();
        for (devid, generation, one_behind) in devices_behind(&vol) {
            if one_behind && vol.accept_lagging {
                taken.push(devid);
                continue;
            }
            vol.stale.insert(devid, generation);
            if one_behind {
                vol.lagging.insert(devid);
            }
        }
        // Read the chunk tree with the bootstrap map, then rebuild the map from it.
        let chunk_root = RootPtr {
            bytenr: sb.chunk_root.get(),
            level: sb.chunk_root_level,
            generation: sb.chunk_root_generation.get(),
            owner: CHUNK_TREE_OBJECTID,
        };
        let (chunks, devids, vol_back, chunk_items) = {
            let vol = Arc::new(vol);
            let reader = TreeReader::new(vol.clone())?;
            let items = reader.range(&chunk_root, Key::MIN, Key::MAX)?;
            let mut chunks = Vec::new();
            let mut devids = BTreeMap::new();
            for (key, data) in &items {
                let (key, data) = (*key, data.as_slice());
                match key.item_type {
                    CHUNK_ITEM_KEY => {
                        let (c, _) = items::parse_chunk(data).map_err(|e| e.within(format!("chunk tree item {key}")))?;
                        chunks.push((key.offset, c));
                    }
                    DEV_ITEM_KEY => {
                        let (d, _) =
                            items::read_prefix::<DevItem>(data, "dev item").map_err(|e| e.within(format!("chunk tree item {key}")))?;
                        devids.insert(key.offset, (d.total_bytes.get(), d.uuid));
                    }
                    _ => {}
                }
            }
            drop(reader);
            let back = Arc::try_unwrap(vol).map_err(|_| Error::Invalid("volume still shared".into()))?;
            (chunks, devids, back, items)
        };
        let mut vol = vol_back;
        vol.stale.clear();
        vol.lagging.clear();
        vol.chunks.clear();
        for (logical, c) in &chunks {
            vol.chunks.insert(*logical, c.clone())?;
        }
        vol.expect_devices(&devids.iter().map(|(devid, (_, uuid))| (*devid, *uuid)).collect())?;
        let devids: BTreeMap<u64, u64> = devids.into_iter().map(|(devid, (total, _))| (devid, total)).collect();
        // (After the device check: a device of another filesystem with the
        // same fsid fails that one first, naming both images.)
        // The superblock's copy of the system chunks is what the kernel maps
        // the chunk tree with, and what every commit writes back: it must map
        // like the chunk tree's, or a copy that overlaps other chunks or lies
        // past its device would be taken and spread to every superblock.
        // (Fields that steer no I/O may differ: btrfs-image -r leaves such
        // images, and the kernel and btrfs check take them.)
        for (key, chunk) in &sys_chunks {
            if !chunks.iter().any(|(logical, c)| *logical == key.offset && c.same_mapping(chunk)) {
                return Err(Error::corrupt(
                    CorruptKind::Superblock,
                    "superblock sys_chunk_array",
                    format!("system chunk {} differs from the chunk tree's", key.offset),
                ));
            }
        }
        crate::volumes::chunks::verify_stripes(&vol.chunks.entries(), &devids, None, false)?;
        let mut open_warnings = mark_stale(&mut vol)?;
        for (path, generation) in &vol.not_members {
            open_warnings.push(format!(
                "{} carries a superblock of this filesystem (generation {generation}) but is no device of it (a `device \
                 remove` stopped before wiping it?): left out; `btrs device remove IMAGE {}` wipes it",
                path.display(),
                path.display()
            ));
        }
        let divergence = divergent_histories(&vol);
        if let Some(w) = &divergence {
            if !opts.divergent_ok {
                return Err(Error::corrupt(CorruptKind::Superblock, "device set", w.clone()));
            }
            open_warnings.push(w.clone());
        }
        let reader = TreeReader::new(Arc::new(vol))?;
        // A device --accept-lagging let serve the chunk tree that then proved
        // stale (it missed the newest commit): read it again without it.
        if taken.iter().any(|d| reader.vol.is_stale(*d)) && reader.range(&chunk_root, Key::MIN, Key::MAX)? != chunk_items {
            return Err(Error::corrupt(CorruptKind::Superblock, "chunk tree", "a stale device's copy differs from the current one"));
        }
        let fs = Filesystem {
            csum: sb.csum_kind()?,
            sectorsize: sb.sectorsize.get(),
            sb,
            reader,
            roots: Mutex::new(HashMap::new()),
            warnings: Mutex::new(Vec::new()),
            divergence,
        };
        {
            let mut roots = fs.roots.lock().map_err(|_| poisoned())?;
            roots.insert(CHUNK_TREE_OBJECTID, chunk_root);
            roots.insert(
                ROOT_TREE_OBJECTID,
                RootPtr { bytenr: sb.root.get(), level: sb.root_level, generation: sb.generation.get(), owner: ROOT_TREE_OBJECTID },
            );
        }
        for w in open_warnings {
            fs.warn(w);
        }
        if let Some(w) = log_tree_note(&sb) {
            fs.warn(w);
        }
        // The dev tree must agree with the chunks. A writer allocates from
        // it, so it must be readable; a reader can go on without it.
        match fs.dev_extents() {
            Ok(exts) => {
                for w in crate::volumes::chunks::verify_stripes(&fs.volume().chunks.entries(), &devids, Some(&exts), opts.writable)? {
                    fs.warn(w);
                }
            }
            Err(e) if opts.writable || !e.is_corrupt() => return Err(e.within("dev tree")),
            Err(e) => fs.warn(format!("dev tree unreadable, device extents not checked against the chunks: {e}")),
        }
        Ok(fs)
    }

    /// Every dev extent: (devid, physical, length, chunk logical).
    pub(crate) fn dev_extents(&self) -> Result<Vec<(u64, u64, u64, u64)>> {
        let root = self.tree_root(DEV_TREE_OBJECTID)?;
        let mut out = Vec::new();
        let mut c = self.reader.seek(&root, Key::MIN)?;
        while let Some(it) = c.next_item()? {
            if it.key.item_type != DEV_EXTENT_KEY {
                continue;
            }
            let (de, _) =
                items::read_prefix::<DevExtent>(it.data(), "dev extent").map_err(|e| e.within(format!("dev tree item {}", it.key)))?;
            out.push((it.key.objectid, it.key.offset, de.length.get(), de.chunk_offset.get()));
        }
        Ok(out)
    }

    /// Take up the superblock this process just committed: roots and caches
    /// of the previous generation are dropped.
    pub(crate) fn committed(&mut self, sb: SuperBlock) -> Result<()> {
        self.sb = sb;
        self.reader.committed(sb.generation.get());
        let mut roots = self.roots.lock().map_err(|_| poisoned())?;
        roots.clear();
        roots.insert(
            CHUNK_TREE_OBJECTID,
            RootPtr {
                bytenr: sb.chunk_root.get(),
                level: sb.chunk_root_level,
                generation: sb.chunk_root_generation.get(),
                owner: CHUNK_TREE_OBJECTID,
            },
        );
        roots.insert(
            ROOT_TREE_OBJECTID,
            RootPtr { bytenr: sb.root.get(), level: sb.root_level, generation: sb.generation.get(), owner: ROOT_TREE_OBJECTID },
        );
        Ok(())
    }

    pub fn volume(&self) -> &Volume {
        &self.reader.vol
    }

    pub(crate) fn warn(&self, w: String) {
        if let Ok(mut v) = self.warnings.lock() {
            v.push(Warning(w));
        }
    }

    /// Warnings gathered so far (bad copies served from good ones), drained.
    pub fn take_warnings(&self) -> Vec<Warning> {
        let mut out: Vec<Warning> = self
            .reader
            .take_bad_copies()
            .into_iter()
            .map(|b| {
                let loc = match (b.devid, b.physical) {
                    (Some(d), Some(p)) => format!(" (devid {d} physical {p})"),
                    _ => String::new(),
                };
                Warning(format!(
                    "tree block {} copy {}{loc} is bad: {}; read another copy",
                    b.logical,
                    b.mirror.saturating_add(1),
                    b.problem
                ))
            })
            .collect();
        if let Ok(mut v) = self.warnings.lock() {
            out.append(&mut v);
        }
        out
    }

    /// The root item of tree `id` (largest key offset, as snapshots of reloc trees may repeat ids).
    pub(crate) fn root_item(&self, id: u64) -> Result<Option<(Key, RootItem)>> {
        let root = self.tree_root(ROOT_TREE_OBJECTID)?;
        match self.reader.lookup_le(&root, Key::new(id, ROOT_ITEM_KEY, u64::MAX))? {
            Some((k, data)) => Ok(Some((k, parse_root_item(&data).map_err(|e| e.within(format!("root item {k}")))?))),
            None => Ok(None),
        }
    }

    /// Where tree `id` starts.
    pub fn tree_root(&self, id: u64) -> Result<RootPtr> {
        if let Some(r) = self.roots.lock().map_err(|_| poisoned())?.get(&id) {
            return Ok(*r);
        }
        let (_, ri) = self.root_item(id)?.ok_or_else(|| Error::NotFound(format!("tree {} has no root item", tree_label(id))))?;
        let r = RootPtr { bytenr: ri.bytenr.get(), level: ri.level, generation: ri.generation.get(), owner: id };
        self.roots.lock().map_err(|_| poisoned())?.insert(id, r);
        Ok(r)
    }

    /// Whether a tree exists (e.g. the free space tree or block group tree).
    pub fn has_tree(&self, id: u64) -> Result<bool> {
        Ok(matches!(id, ROOT_TREE_OBJECTID | CHUNK_TREE_OBJECTID) || self.root_item(id)?.is_some())
    }

    /// The top-level subvolume's root directory.
    pub fn root_dir(&self) -> InodeId {
        InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID }
    }

    pub fn inode(&self, id: InodeId) -> Result<Inode> {
        if id.ino == EMPTY_SUBVOL_DIR_OBJECTID {
            return Ok(Inode::empty_subvol_placeholder(id));
        }
        let root = self.tree_root(id.subvol)?;
        let data = self
            .reader
            .lookup(&root, Key::new(id.ino, INODE_ITEM_KEY, 0))?
            .ok_or_else(|| Error::NotFound(format!("inode {id} has no inode item")))?;
        Inode::parse(id, &data).map_err(|e| e.within(format!("inode {id}")))
    }

    /// The inode an entry leads to. The kernel's placeholder for a
    /// subvolume not held here takes the owner and group of the directory
    /// it is in (its new_simple_dir; checked on 6.18), which
    /// [`Filesystem::inode`] cannot know from the id alone.
    pub fn entry_inode(&self, e: &DirEnt) -> Result<Inode> {
        match e.placeholder_in {
            Some(dir) => self.inode_in(e.id, dir),
            None => self.inode(e.id),
        }
    }

    /// Inode `id` as found in directory `dir`: [`Filesystem::inode`], but
    /// a placeholder (see [`Filesystem::entry_inode`]) owned as `dir` is.
    pub fn inode_in(&self, id: InodeId, dir: InodeId) -> Result<Inode> {
        let mut ino = self.inode(id)?;
        if id.ino == EMPTY_SUBVOL_DIR_OBJECTID {
            let d = self.inode(dir)?;
            (ino.uid, ino.gid) = (d.uid, d.gid);
        }
        Ok(ino)
    }

    /// Entries of a directory in index (creation) order.
    pub fn read_dir(&self, dir: InodeId) -> Result<Vec<DirEnt>> {
        if dir.ino == EMPTY_SUBVOL_DIR_OBJECTID {
            return Ok(Vec::new());
        }
        let root = self.tree_root(dir.subvol)?;
        let items = self.reader.range(&root, Key::new(dir.ino, DIR_INDEX_KEY, 0), Key::new(dir.ino, DIR_INDEX_KEY, u64::MAX))?;
        let mut out = Vec::with_capacity(items.len());
        for (key, data) in items {
            for e in items::parse_dir_items(&data).map_err(|e| e.within(format!("directory {dir} index {}", key.offset)))? {
                out.push(self.dirent(dir, e)?);
            }
        }
        Ok(out)
    }

    fn dirent(&self, dir: InodeId, e: DirEntry) -> Result<DirEnt> {
        let at = || format!("directory {dir} entry {:?}", crate::name::Name(&e.name));
        let file_type = FileType::from_dir_type(e.dir_type)
            .ok_or_else(|| Error::corrupt(CorruptKind::ItemValue, at(), format!("unknown file type {}", e.dir_type)))?;
        match e.location.item_type {
            INODE_ITEM_KEY => Ok(DirEnt {
                name: e.name,
                id: InodeId { subvol: dir.subvol, ino: e.location.objectid },
                file_type,
                subvol: false,
                placeholder_in: None,
            }),
            ROOT_ITEM_KEY => {
                let subvol = e.location.objectid;
                if !self.subvol_linked_at(dir, subvol, &e.name)? {
                    // Like the kernel: an empty read-only directory stands in.
                    return Ok(DirEnt {
                        name: e.name,
                        id: InodeId { subvol: dir.subvol, ino: EMPTY_SUBVOL_DIR_OBJECTID },
                        file_type: FileType::Directory,
                        subvol: false,
                        placeholder_in: Some(dir),
                    });
                }
                let dirid = match self.root_item(subvol)? {
                    Some((_, ri)) => ri.root_dirid.get(),
                    None => return Err(Error::corrupt(CorruptKind::MissingItem, at(), format!("subvolume {subvol} has no root item"))),
                };
                Ok(DirEnt {
                    name: e.name,
                    id: InodeId { subvol, ino: dirid },
                    file_type: FileType::Directory,
                    subvol: true,
                    placeholder_in: None,
                })
            }
            t => Err(Error::corrupt(CorruptKind::ItemValue, at(), format!("location key type {t}"))),
        }
    }

    /// Whether the root tree has the ROOT_REF that links subvolume `child`
    /// under this name in `dir`; snapshots carry entries for nested subvolumes
    /// without one.
    pub(crate) fn subvol_linked_at(&self, dir: InodeId, child: u64, name: &[u8]) -> Result<bool> {
        let root = self.tree_root(ROOT_TREE_OBJECTID)?;
        match self.reader.lookup(&root, Key::new(dir.subvol, ROOT_REF_KEY, child))? {
            Some(data) => {
                let r = items::parse_root_ref(&data).map_err(|e| e.within(format!("root ref {} -> {child}", dir.subvol)))?;
                Ok(r.dirid == dir.ino && r.name == name)
            }
            None => Ok(false),
        }
    }

    /// Look a name up in a directory through its DIR_ITEM (name hash) entries.
    pub fn lookup(&self, dir: InodeId, name: &[u8]) -> Result<Option<DirEnt>> {
        let root = self.tree_root(dir.subvol)?;
        let key = Key::new(dir.ino, DIR_ITEM_KEY, items::name_hash(name));
        let Some(data) = self.reader.lookup(&root, key)? else { return Ok(None) };
        for e in items::parse_dir_items(&data).map_err(|e| e.within(format!("directory {dir}")))? {
            if e.name == name {
                return self.dirent(dir, e).map(Some);
            }
        }
        Ok(None)
    }

    /// Resolve a '/'-separated path from the top-level subvolume (see
    /// `path::walk`: symlinks are not followed).
    pub fn resolve<'p>(&self, path: impl Into<path::ImagePath<'p>>) -> Result<DirEnt> {
        let path = path.into();
        // As the kernel's lookup: an empty path names nothing (not the root).
        if path.as_bytes().is_empty() {
            return Err(Error::NotFound("'': No such file or directory".into()));
        }
        let top = DirEnt { name: Vec::new(), id: self.root_dir(), file_type: FileType::Directory, subvol: true, placeholder_in: None };
        path::walk(
            path,
            top,
            |e| e.file_type == FileType::Directory,
            |e, name| {
                // A name no directory can hold: said as such, not as missing.
                crate::format::limits::check_entry_name(name).map_err(|err| Error::Invalid(format!("{path}: {err}")))?;
                self.lookup(e.id, name)
            },
        )?
        .found(path)
    }

    /// A symlink's target: the first i_size bytes of its inline extent, as
    /// the kernel reads it. mkfs.btrfs --rootdir stores the target with a
    /// trailing NUL in the extent (extent 25 bytes, inode size 24); the NUL
    /// is not part of the target.
    pub fn read_link(&self, id: InodeId) -> Result<Vec<u8>> {
        let size = self.inode(id)?.size;
        let exts = self.file_extents(id)?;
        let mut target = match exts.first() {
            Some((0, fe)) => match &fe.kind {
                items::FileExtentKind::Inline { data } if fe.compression == COMPRESS_NONE => data.clone(),
                items::FileExtentKind::Inline { data } => self.decompress(fe.compression, data, fe.ram_bytes, &format!("symlink {id}"))?,
                _ => return Err(Error::corrupt(CorruptKind::ItemValue, format!("symlink {id}"), "target is not an inline extent")),
            },
            _ => return Err(Error::corrupt(CorruptKind::MissingItem, format!("symlink {id}"), "no target extent")),
        };
        match usize::try_from(size) {
            Ok(n) if n <= target.len() => {
                target.truncate(n);
                Ok(target)
            }
            _ => Err(Error::corrupt(
                CorruptKind::ItemValue,
                format!("symlink {id}"),
                format!("inode size {size} past its {}-byte target extent", target.len()),
            )),
        }
    }

    /// Every xattr of an inode, in name-hash order.
    pub fn xattrs(&self, id: InodeId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let root = self.tree_root(id.subvol)?;
        let items = self.reader.range(&root, Key::new(id.ino, XATTR_ITEM_KEY, 0), Key::new(id.ino, XATTR_ITEM_KEY, u64::MAX))?;
        let mut out = Vec::new();
        for (_, data) in items {
            for e in items::parse_dir_items(&data).map_err(|e| e.within(format!("xattr of inode {id}")))? {
                out.push((e.name, e.data));
            }
        }
        Ok(out)
    }

    /// (file offset, extent) for every EXTENT_DATA item of an inode.
    pub fn file_extents(&self, id: InodeId) -> Result<Vec<(u64, items::FileExtent)>> {
        let root = self.tree_root(id.subvol)?;
        let items = self.reader.range(&root, Key::new(id.ino, EXTENT_DATA_KEY, 0), Key::new(id.ino, EXTENT_DATA_KEY, u64::MAX))?;
        items
            .into_iter()
            .map(|(k, d)| {
                items::parse_file_extent(&d)
                    .map(|fe| (k.offset, fe))
                    .map_err(|e| e.within(format!("inode {id} extent at file offset {}", k.offset)))
            })
            .collect()
    }

    /// Every block group item, from the block group tree when the
    /// filesystem has one, else the extent tree: (chunk start, length,
    /// the item).
    pub(crate) fn block_groups(&self) -> Result<Vec<(u64, u64, BlockGroupItem)>> {
        let tree = if self.sb.has_compat_ro(COMPAT_RO_BLOCK_GROUP_TREE) { BLOCK_GROUP_TREE_OBJECTID } else { EXTENT_TREE_OBJECTID };
        let root = self.tree_root(tree)?;
        let mut out = Vec::new();
        let mut c = self.reader.seek(&root, Key::new(0, BLOCK_GROUP_ITEM_KEY, 0))?;
        while let Some(item) = c.next_item()? {
            if item.key.item_type != BLOCK_GROUP_ITEM_KEY {
                continue;
            }
            let (bg, _) = items::read_prefix::<BlockGroupItem>(item.data(), "block group item")
                .map_err(|e| e.within(format!("block group {}", item.key)))?;
            out.push((item.key.objectid, item.key.offset, bg));
        }
        Ok(out)
    }

    /// Every device the chunk tree lists: devid → its dev item.
    pub(crate) fn dev_items(&self) -> Result<BTreeMap<u64, DevItem>> {
        let root = self.tree_root(CHUNK_TREE_OBJECTID)?;
        let (lo, hi) = (Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, 0), Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, u64::MAX));
        let mut out = BTreeMap::new();
        for (k, data) in self.reader.range(&root, lo, hi)? {
            let (d, _) = items::read_prefix::<DevItem>(&data, "dev item").map_err(|e| e.within(format!("chunk tree {k}")))?;
            out.insert(k.offset, d);
        }
        Ok(out)
    }

    /// All subvolumes (id, parent id, name, root dirid) from ROOT_REF items.
    pub fn subvolumes(&self) -> Result<Vec<(u64, u64, Vec<u8>)>> {
        let root = self.tree_root(ROOT_TREE_OBJECTID)?;
        let mut out = Vec::new();
        let mut c = self.reader.seek(&root, Key::MIN)?;
        while let Some(item) = c.next_item()? {
            if item.key.item_type == ROOT_BACKREF_KEY {
                let r = items::parse_root_ref(item.data())?;
                out.push((item.key.objectid, item.key.offset, r.name));
            }
        }
        Ok(out)
    }

    pub(crate) fn decompress(&self, kind: u8, input: &[u8], ram_bytes: u64, at: &str) -> Result<Vec<u8>> {
        let k = compress::Compression::from_raw(kind).map_err(|e| Error::Compress { at: at.into(), source: e })?;
        let out_len = usize::try_from(ram_bytes).map_err(|_| Error::corrupt(CorruptKind::Compressed, at, "ram_bytes too large"))?;
        compress::decompress(k, input, out_len, self.sectorsize).map_err(|e| Error::Compress { at: at.into(), source: e })
    }
}

/// Find the stale devices (see [`Volume::stale`]) and say so: every device
/// whose superblock generation is behind the newest. One only a commit
/// behind whose copies of that commit's tree blocks are not shown to differ
/// from a current device's may be what a crash between the commit's
/// superblock writes left: lagging (see [`Volume::lagging`]), which
/// `--accept-lagging` takes as current. With `--degraded` a stale device is
/// left out like a missing one.
#[warn(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
fn mark_stale(vol: &mut Volume) -> Result<Vec<String>> {
    let newest = vol.sb.generation.get();
    let mut warnings = Vec::new();
    for (devid, generation, one_behind) in devices_behind(vol) {
        // Only one commit behind can be a crash between the superblock writes
        // of the newest commit; anything older missed a whole commit. Even
        // then it stays stale until `scrub --repair` has compared every copy
        // it holds with a current one (or the caller says it was a crash):
        // what it holds can match the newest commit's tree blocks and still
        // miss data (an older image put back after a repair that could not
        // rebuild its data), or hold a commit that never completed.
        let lagging = one_behind && holds_newest_commit(vol, devid) != Some(false);
        if lagging && vol.accept_lagging {
            let path = vol.devices.get(&devid).map(|d| d.path.display().to_string()).unwrap_or_default();
            warnings.push(format!(
                "devid {devid} ({path}): superblock generation {generation} is one behind the filesystem's {newest}; \
                 taken as current (--accept-lagging)"
            ));
            continue;
        }
        vol.stale.insert(devid, generation);
        if lagging {
            vol.lagging.insert(devid);
        }
        let text = vol.stale_text(devid);
        if vol.degraded {
            warnings.push(format!("{text}; left out (--degraded)"));
            vol.stale.remove(&devid);
            vol.lagging.remove(&devid);
            if let Some(dev) = vol.devices.remove(&devid) {
                vol.left_out.insert(devid, (dev.path, generation));
            }
            vol.missing.insert(devid);
        } else if lagging {
            warnings.push(format!(
                "{text}; its copies are not used unless a data checksum vouches for them (its tree blocks never: \
                 nothing in them tells a crash from an older copy or another history): run `btrs scrub --repair` \
                 to compare it with the current copies (or --accept-lagging to take it as current after a crash)"
            ));
        } else {
            warnings.push(format!(
                "{text}; its copies are not used unless a data checksum vouches for them (its tree blocks never: it \
                 may hold another history of this filesystem): run `btrs scrub --repair` to rebuild it"
            ));
        }
    }
    Ok(warnings)
}

/// What a reader must be told about a log tree, if the filesystem has one.
pub(crate) fn log_tree_note(sb: &SuperBlock) -> Option<String> {
    (sb.log_root.get() != 0).then(|| {
        format!(
            "the filesystem has a log tree (block {}): changes fsynced after generation {} are in it, and btrs shows the \
             last commit without them (the kernel replays them at its next mount)",
            sb.log_root.get(),
            sb.generation.get()
        )
    })
}

/// The devices whose superblock generation is behind the filesystem's:
/// (devid, generation, only one commit behind).
fn devices_behind(vol: &Volume) -> Vec<(u64, u64, bool)> {
    let newest = vol.sb.generation.get();
    vol.devices
        .values()
        .map(|d| (d.devid, d.sb.generation.get()))
        .filter(|&(_, generation)| generation < newest)
        .map(|(devid, generation)| (devid, generation, generation.checked_add(1) == Some(newest)))
        .collect()
}

/// How a walk of the newest commit's tree blocks ended.
enum Walked<R> {
    /// Every block (up to the budget) was visited.
    Done,
    /// The visitor stopped it with an answer.
    Found(R),
    /// A block no chunk maps, or with no copy that verifies as a block of
    /// that commit.
    Unreadable,
}

/// Walk the tree blocks the newest commit wrote, breadth first, at most
/// `budget` of them: the blocks of the superblock's generation, reached from
/// the root and chunk trees through pointers and root items of that
/// generation. `each` sees a block's logical address and its copies, each
/// (devid, the copy when it verifies as that commit's block there).
#[warn(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
fn walk_newest_commit<R>(vol: &Volume, budget: usize, mut each: impl FnMut(u64, &[(u64, Option<TreeBlock>)]) -> Option<R>) -> Walked<R> {
    let sb = vol.sb;
    let newest = sb.generation.get();
    let (Ok(csum), Ok(nodesize)) = (sb.csum_kind(), usize::try_from(sb.nodesize.get())) else { return Walked::Unreadable };
    let fsid = sb.metadata_fsid();
    let read = |logical: u64, level: u8, m: usize| -> Option<TreeBlock> {
        let mut buf = vec![0u8; nodesize];
        let expect = Expect { level: Some(level), generation: Some(newest), max_generation: None };
        vol.read_copy(logical, &mut buf, m).ok()?;
        TreeBlock::parse(logical, buf, csum, &fsid, expect).ok()
    };
    let current = |d: u64| vol.devices.get(&d).is_some_and(|dev| dev.sb.generation.get() == newest);
    let mut todo = std::collections::VecDeque::from([(sb.root.get(), sb.root_level)]);
    if sb.chunk_root_generation.get() == newest {
        todo.push_back((sb.chunk_root.get(), sb.chunk_root_level));
    }
    let mut seen = std::collections::HashSet::new();
    while let Some((logical, level)) = todo.pop_front() {
        if seen.len() >= budget {
            break;
        }
        if !seen.insert(logical) {
            continue;
        }
        let Ok((locs, n)) = vol.chunks.lookup(logical).and_then(|e| Ok((e.map(logical)?.0, e.num_copies()))) else {
            return Walked::Unreadable;
        };
        let copies: Vec<(u64, Option<TreeBlock>)> =
            locs.iter().take(n).enumerate().map(|(m, l)| (l.devid, read(logical, level, m))).collect();
        if let Some(r) = each(logical, &copies) {
            return Walked::Found(r);
        }
        // The children are found through a current device's copy when one verifies.
        let reference = copies.iter().find(|(d, b)| current(*d) && b.is_some()).and_then(|(_, b)| b.as_ref());
        let Some(block) = reference.or_else(|| copies.iter().find_map(|(_, b)| b.as_ref())) else { return Walked::Unreadable };
        if !block.is_leaf() {
            for i in 0..block.nritems() {
                let (_, child, generation) = block.ptr(i);
                if generation == newest {
                    todo.push_back((child, level.saturating_sub(1)));
                }
            }
        } else if block.owner() == ROOT_TREE_OBJECTID {
            for i in 0..block.nritems() {
                if block.key(i).item_type != ROOT_ITEM_KEY {
                    continue;
                }
                if let Ok(ri) = parse_root_item(block.item_data(i)) {
                    if ri.generation.get() == newest {
                        todo.push_back((ri.bytenr.get(), ri.level));
                    }
                }
            }
        }
    }
    Walked::Done
}

/// What device `devid`'s copies of the tree blocks the newest commit wrote
/// (see [`walk_newest_commit`]) say, each compared byte for byte with a copy
/// on a device whose superblock is the newest: Some(true) when it holds such
/// blocks, at least one has a copy to compare with, and every one it holds
/// is the same (it got the commit); Some(false) when one does not verify or
/// differs (it missed the commit, or holds the blocks of a commit that never
/// completed at the same addresses); None when nothing can be compared (an
/// older copy of it would hold none of the commit's blocks either, or only
/// blocks no current device has).
#[warn(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
fn holds_newest_commit(vol: &Volume, devid: u64) -> Option<bool> {
    let newest = vol.sb.generation.get();
    let current = |d: u64| vol.devices.get(&d).is_some_and(|dev| dev.sb.generation.get() == newest);
    let mut compared = false;
    let walked = walk_newest_commit(vol, usize::MAX, |_, copies| {
        if copies.iter().any(|(d, b)| *d == devid && b.is_none()) {
            return Some(());
        }
        let reference = copies.iter().find(|(d, b)| current(*d) && b.is_some()).and_then(|(_, b)| b.as_ref())?;
        for (_, b) in copies.iter().filter(|(d, _)| *d == devid) {
            if b.as_ref().map(TreeBlock::bytes) != Some(reference.bytes()) {
                return Some(());
            }
            compared = true;
        }
        None
    });
    match walked {
        Walked::Done => compared.then_some(true),
        Walked::Found(()) | Walked::Unreadable => Some(false),
    }
}

/// How many of the newest commit's tree blocks open compares across the
/// current devices: the root tree and the tops of the trees that commit
/// changed. A deeper difference (or one only in data) is scrub's to find.
const DIVERGENCE_BUDGET: usize = 64;

/// Whether the current devices (superblock of the newest generation) hold
/// two histories of the filesystem: their superblocks name different roots
/// for one generation, or two copies of one of the newest commit's tree
/// blocks both verify as that commit's block there and differ. One commit
/// writes the same superblock fields and the same bytes to every copy, so
/// only two copies of the set written apart (a split brain, or a device
/// from a copy of the set that made as many commits) look like this; a
/// damaged copy does not verify and is a repair's business. Nothing tells
/// which history is the right one. Returns the words for it.
#[warn(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
fn divergent_histories(vol: &Volume) -> Option<String> {
    let newest = vol.sb.generation.get();
    let current: Vec<&crate::volumes::Device> =
        vol.devices.values().filter(|d| d.sb.generation.get() == newest && !vol.is_stale(d.devid)).collect();
    let name = |devid: u64| {
        let path = vol.devices.get(&devid).map(|d| d.path.display().to_string()).unwrap_or_default();
        format!("devid {devid} ({path})")
    };
    let what = |a: u64, b: u64, differ: &str| {
        format!(
            "{} and {} both hold the commit of generation {newest} but {differ}: two histories of this filesystem \
             (a device from another copy of the set, or a split brain), and nothing tells which is current; \
             `btrs scrub` lists every difference, and `--degraded` with one of the images moved away reads the other's",
            name(a),
            name(b)
        )
    };
    let (first, rest) = current.split_first()?;
    // What one commit writes alike to every device's superblock.
    let fields = |sb: &SuperBlock| {
        (
            (sb.root.get(), sb.root_level, sb.chunk_root.get(), sb.chunk_root_level, sb.chunk_root_generation.get()),
            (sb.log_root.get(), sb.log_root_level, sb.bytes_used.get(), sb.total_bytes.get(), sb.num_devices.get()),
            (sb.incompat_flags.get(), sb.compat_ro_flags.get(), sb.cache_generation.get(), sb.uuid_tree_generation.get()),
        )
    };
    if let Some(other) = rest.iter().find(|d| fields(&d.sb) != fields(&first.sb)) {
        return Some(what(first.devid, other.devid, "their superblocks name different trees"));
    }
    if rest.is_empty() {
        return None;
    }
    let walked = walk_newest_commit(vol, DIVERGENCE_BUDGET, |logical, copies| {
        let verified: Vec<(u64, &TreeBlock)> =
            copies.iter().filter(|(d, _)| current.iter().any(|c| c.devid == *d)).filter_map(|(d, b)| Some((*d, b.as_ref()?))).collect();
        let (d0, b0) = verified.first()?;
        let (d1, _) = verified.iter().find(|(d, b)| d != d0 && b.bytes() != b0.bytes())?;
        Some(what(*d0, *d1, &format!("their copies of tree block {logical} differ (both verify)")))
    });
    match walked {
        Walked::Found(w) => Some(w),
        Walked::Done | Walked::Unreadable => None,
    }
}

fn poisoned() -> Error {
    Error::Internal("filesystem root cache lock poisoned".into())
}

fn tree_label(id: u64) -> String {
    crate::format::types::tree_name(id).map(str::to_string).unwrap_or_else(|| id.to_string())
}

/// Test images made by mkfs.btrfs, shared by the write-path unit tests.
#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;

    /// A reference image made by mkfs.btrfs and the kernel (`fixtures/foreign/NAME`),
    /// unpacked into a temporary directory and opened; None when it is absent.
    pub(crate) fn open_fixture(name: &str) -> Option<(tempfile::TempDir, crate::Filesystem)> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/foreign").join(name);
        let rd = std::fs::read_dir(&src).ok()?;
        let tmp = tempfile::tempdir().unwrap();
        let mut devs: Vec<_> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "zst"))
            .map(|p| {
                let out = tmp.path().join(p.file_stem().unwrap());
                crate::volumes::raw::unpack_zstd(&p, &out).unwrap();
                out
            })
            .collect();
        devs.sort();
        let opts = crate::volumes::OpenOptions { image: devs[0].clone(), devices: devs.clone(), ..Default::default() };
        Some((tmp, crate::Filesystem::open(&opts).unwrap()))
    }

    /// `ndev` fresh 256 MiB images formatted by `mkfs.btrfs -q ARGS`. `None`
    /// (after saying so) when btrfs-progs is missing, unless interop tests are
    /// required, which makes that a failure.
    pub(crate) fn mkfs_btrfs(ndev: usize, args: &[&str]) -> Option<(tempfile::TempDir, Vec<PathBuf>)> {
        let tmp = tempfile::tempdir().ok()?;
        let imgs: Vec<PathBuf> = (1..=ndev).map(|i| tmp.path().join(format!("dev{i}.img"))).collect();
        for p in &imgs {
            crate::volumes::raw::set_len(p, 256 << 20).ok()?;
        }
        let ok =
            std::process::Command::new("mkfs.btrfs").arg("-q").args(args).args(&imgs).output().map(|o| o.status.success()).unwrap_or(false);
        if !ok {
            assert_ne!(std::env::var("BTRS_INTEROP").as_deref(), Ok("require"), "mkfs.btrfs failed or is missing");
            eprintln!("skipped: mkfs.btrfs not available");
            return None;
        }
        Some((tmp, imgs))
    }
}
