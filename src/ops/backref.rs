//! Which files use a data extent: from a logical address to (subvolume,
//! inode, path, file offset), through the extent tree's back references and
//! the INODE_REF / ROOT_BACKREF chains. Used to name the files a scrub
//! finding hurts.

use crate::error::{CorruptKind, Error, Result};
use crate::format::items::{self, ExtentRef, FileExtentKind};
use crate::format::*;
use crate::fs::Filesystem;
use crate::tree::Expect;

/// One file that maps some of the bytes in question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileUse {
    pub(crate) subvol: u64,
    pub(crate) ino: u64,
    /// Relative to the top-level subvolume ("sub/dir/file"); `<subvol N>/...`
    /// or `<inode N>` when a link is missing (an orphan or an unlinked snapshot).
    pub(crate) path: String,
    /// Offset in the file of `logical` (for compressed extents: of the start of
    /// the file extent, as compressed bytes do not map linearly).
    pub(crate) file_offset: u64,
}

/// Upper bounds, so that a damaged (looping or huge) tree cannot stall a scrub report.
const MAX_PATH_DEPTH: usize = 4096;
const MAX_USES: usize = 64;
const MAX_MAPPINGS: usize = 4096;

/// One file extent item that points into a data extent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub(crate) subvol: u64,
    pub(crate) ino: u64,
    /// File offset of the file extent item (its key offset).
    pub(crate) key_offset: u64,
    /// The bytes of the extent it maps, relative to the extent start: [start, end).
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) prealloc: bool,
    pub(crate) compressed: bool,
}

/// Every file extent item that points into the data extent at `extent_start`,
/// found through its back references (inline and keyed data refs, shared
/// data refs to leaves).
pub(crate) fn extent_mappings(fs: &Filesystem, extent_start: u64) -> Result<Vec<Mapping>> {
    let extent_root = fs.tree_root(EXTENT_TREE_OBJECTID)?;
    let mut refs = Vec::new();
    let mut extent_len = u64::MAX;
    let mut c = fs.reader.seek(&extent_root, Key::new(extent_start, 0, 0))?;
    while let Some(item) = c.next_item()? {
        let k = item.key;
        if k.objectid != extent_start {
            break;
        }
        match k.item_type {
            EXTENT_ITEM_KEY => {
                extent_len = k.offset;
                refs.extend(items::parse_extent_item(k, item.data())?.inline_refs)
            }
            EXTENT_DATA_REF_KEY | SHARED_DATA_REF_KEY => refs.push(items::parse_keyed_ref(k, item.data())?),
            _ => {}
        }
    }
    let mut out: Vec<Mapping> = Vec::new();
    let add = |out: &mut Vec<Mapping>, root: u64, ino: u64, key_off: u64, fe: &items::FileExtent| {
        let FileExtentKind::Regular { disk_bytenr, offset, num_bytes, prealloc, .. } = fe.kind else { return };
        if disk_bytenr != extent_start || out.len() >= MAX_MAPPINGS {
            return;
        }
        let compressed = fe.compression != COMPRESS_NONE;
        // Compressed bytes do not map linearly to file bytes: the item uses the whole extent.
        let (start, end) = if compressed { (0, extent_len) } else { (offset, offset.saturating_add(num_bytes)) };
        let m = Mapping { subvol: root, ino, key_offset: key_off, start, end, prealloc, compressed };
        if !out.contains(&m) {
            out.push(m);
        }
    };
    for r in refs {
        match r {
            ExtentRef::Data { root, objectid, offset, .. } => {
                for (key_off, fe) in inode_extents_from(fs, root, objectid, offset)? {
                    add(&mut out, root, objectid, key_off, &fe);
                }
            }
            ExtentRef::SharedData { parent, .. } => {
                // The parent leaf is shared by several trees (snapshots); its
                // owner is the tree that created it, which still references it.
                let leaf = fs.reader.read_block(parent, Expect { level: Some(0), ..Default::default() }, None)?;
                let root = leaf.owner();
                for slot in 0..leaf.nritems() {
                    let k = leaf.key(slot);
                    if k.item_type != EXTENT_DATA_KEY {
                        continue;
                    }
                    let fe = items::parse_file_extent(leaf.item_data(slot))?;
                    add(&mut out, root, k.objectid, k.offset, &fe);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Files that map the byte at `logical` inside the data extent starting at
/// `extent_start`.
pub(crate) fn resolve_data(fs: &Filesystem, extent_start: u64, logical: u64) -> Result<Vec<FileUse>> {
    let rel = logical - extent_start;
    let mut out: Vec<FileUse> = Vec::new();
    for m in extent_mappings(fs, extent_start)? {
        if rel < m.start || rel >= m.end || out.len() >= MAX_USES {
            continue;
        }
        let file_offset = if m.compressed { m.key_offset } else { m.key_offset + (rel - m.start) };
        if out.iter().any(|u| u.subvol == m.subvol && u.ino == m.ino && u.file_offset == file_offset) {
            continue;
        }
        let path = inode_path(fs, m.subvol, m.ino).unwrap_or_else(|_| format!("<subvol {} inode {}>", m.subvol, m.ino));
        out.push(FileUse { subvol: m.subvol, ino: m.ino, path, file_offset });
    }
    Ok(out)
}

/// EXTENT_DATA items of one inode at file offsets >= `min_offset` (the data
/// ref's offset is the file offset minus the offset into the extent).
fn inode_extents_from(fs: &Filesystem, root: u64, ino: u64, min_offset: u64) -> Result<Vec<(u64, items::FileExtent)>> {
    let root_ptr = match fs.tree_root(root) {
        Ok(r) => r,
        Err(Error::NotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let items = fs.reader.range(&root_ptr, Key::new(ino, EXTENT_DATA_KEY, min_offset), Key::new(ino, EXTENT_DATA_KEY, u64::MAX))?;
    items.into_iter().map(|(k, d)| items::parse_file_extent(&d).map(|fe| (k.offset, fe))).collect()
}

/// The path of an inode from the top-level subvolume, walking INODE_REF /
/// INODE_EXTREF to its subvolume's root directory, then ROOT_BACKREF up
/// through the parent subvolumes.
pub(crate) fn inode_path(fs: &Filesystem, subvol: u64, ino: u64) -> Result<String> {
    // As commands show paths: one line, what `$'...'` types back.
    inode_path_bytes(fs, subvol, ino).map(|p| crate::name::Name(&p).to_string())
}

/// [`inode_path`] as the bytes it is, for output that carries names raw
/// (`subvolume list`, as progs prints it).
pub(crate) fn inode_path_bytes(fs: &Filesystem, subvol: u64, ino: u64) -> Result<Vec<u8>> {
    let root_tree = fs.tree_root(ROOT_TREE_OBJECTID)?;
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let (mut subvol, mut ino) = (subvol, ino);
    for _ in 0..MAX_PATH_DEPTH {
        let root_dirid = match fs.root_item(subvol)? {
            Some((_, ri)) => ri.root_dirid.get(),
            None => FIRST_FREE_OBJECTID,
        };
        if ino == root_dirid {
            if subvol == FS_TREE_OBJECTID {
                return Ok(join(&parts));
            }
            let backrefs =
                fs.reader.range(&root_tree, Key::new(subvol, ROOT_BACKREF_KEY, 0), Key::new(subvol, ROOT_BACKREF_KEY, u64::MAX))?;
            let Some((k, data)) = backrefs.into_iter().next() else {
                // A subvolume not linked anywhere (deleted, or a snapshot whose link went).
                return Ok([format!("<subvol {subvol}>/").into_bytes(), join(&parts)].concat());
            };
            let r = items::parse_root_ref(&data)?;
            parts.push(r.name);
            subvol = k.offset;
            ino = r.dirid;
            continue;
        }
        let tree = fs.tree_root(subvol)?;
        let refs = fs.reader.range(&tree, Key::new(ino, INODE_REF_KEY, 0), Key::new(ino, INODE_REF_KEY, u64::MAX))?;
        let entry = match refs.into_iter().next() {
            Some((k, data)) => items::parse_inode_refs(k, &data)?.into_iter().next(),
            None => {
                let ext = fs.reader.range(&tree, Key::new(ino, INODE_EXTREF_KEY, 0), Key::new(ino, INODE_EXTREF_KEY, u64::MAX))?;
                match ext.into_iter().next() {
                    Some((_, data)) => items::parse_inode_extrefs(&data)?.into_iter().next(),
                    None => None,
                }
            }
        };
        let Some(entry) = entry else {
            return Ok([format!("<subvol {subvol} inode {ino}>/").into_bytes(), join(&parts)].concat());
        };
        parts.push(entry.name);
        ino = entry.parent;
    }
    Err(Error::corrupt(CorruptKind::Loop, format!("inode {ino} of subvolume {subvol}"), "path deeper than 4096 levels (loop?)"))
}

fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.iter().rev().map(Vec::as_slice).collect::<Vec<_>>().join(&b'/')
}
