//! Items that account for space: extent items and their keyed backrefs,
//! checksum ranges, block groups, the free space tree and the free space
//! cache (v1) header.

use std::io::Write;

use super::body::{need, u64_at};
use super::names::{bg_flags_str, extent_flags_str, key_str, objectid_str};
use super::DumpCtx;
use crate::error::{CorruptKind, Error, Result};
use crate::format::items::{self, ExtentRef};
use crate::format::ondisk::*;
use crate::format::Key;

pub(super) fn print_extent_item(buf: &mut Vec<u8>, key: Key, data: &[u8]) -> Result<()> {
    let e = items::parse_extent_item(key, data)?;
    w!(buf, "\t\trefs {} gen {} flags {}\n", e.refs, e.generation, extent_flags_str(e.flags));
    if let Some((k, level)) = e.tree_block {
        w!(buf, "\t\ttree block {} level {level}\n", key_str(&k));
    } else if key.item_type == METADATA_ITEM_KEY {
        w!(buf, "\t\ttree block skinny level {}\n", key.offset as i32);
    }
    for r in &e.inline_refs {
        match r {
            ExtentRef::TreeBlock { root } => w!(buf, "\t\ttree block backref root {}\n", objectid_str(*root, 0)),
            ExtentRef::SharedBlock { parent } => w!(buf, "\t\tshared block backref parent {parent}\n"),
            ExtentRef::Data { root, objectid, offset, count } => {
                w!(buf, "\t\textent data backref root {} objectid {objectid} offset {offset} count {count}\n", objectid_str(*root, 0))
            }
            ExtentRef::SharedData { parent, count } => {
                w!(buf, "\t\tshared data backref parent {parent} count {count}\n")
            }
            ExtentRef::Owner { root } => w!(buf, "\t\textent owner root {root}\n"),
        }
    }
    Ok(())
}

pub(super) fn extent_data_ref(buf: &mut Vec<u8>, key: Key, data: &[u8]) -> Result<()> {
    if let ExtentRef::Data { root, objectid, offset, count } = items::parse_keyed_ref(key, data)? {
        w!(buf, "\t\textent data backref root {} objectid {objectid} offset {offset} count {count}\n", objectid_str(root, 0));
    }
    Ok(())
}

pub(super) fn shared_data_ref(buf: &mut Vec<u8>, key: Key, data: &[u8]) -> Result<()> {
    if let ExtentRef::SharedData { count, .. } = items::parse_keyed_ref(key, data)? {
        w!(buf, "\t\tshared data backref count {count}\n");
    }
    Ok(())
}

pub(super) fn extent_owner_ref(buf: &mut Vec<u8>, key: Key, data: &[u8]) -> Result<()> {
    if let ExtentRef::Owner { root } = items::parse_keyed_ref(key, data)? {
        w!(buf, "\t\textent owner root {root}\n");
    }
    Ok(())
}

/// The range of data an EXTENT_CSUM item covers.
pub(super) fn extent_csum(buf: &mut Vec<u8>, ctx: &DumpCtx, key: Key, data: &[u8]) -> Result<()> {
    let cs = ctx.csum_size.max(1);
    if data.len() % cs != 0 {
        return Err(Error::corrupt(
            CorruptKind::ItemSize,
            "extent csum",
            format!("item size {} is not a multiple of the checksum size {cs}", data.len()),
        ));
    }
    let len = (data.len() / cs) as u64 * ctx.sectorsize as u64;
    w!(buf, "\t\trange start {} end {} length {len}\n", key.offset, key.offset.wrapping_add(len));
    if ctx.csum_items {
        // btrfs-progs fills a line with 32 bytes of checksum text: four crc32c,
        // two xxhash, one sha256 or blake2 per line.
        let per_line = (CSUM_SIZE / cs / 2).max(1);
        let mut offset = key.offset;
        for (i, csum) in data.chunks_exact(cs).enumerate() {
            buf.extend_from_slice(match i {
                0 => b"\t\t".as_slice(),
                _ if i % per_line == 0 => b"\n\t\t",
                _ => b" ",
            });
            w!(buf, "[{offset}] 0x");
            for b in csum {
                w!(buf, "{b:02x}");
            }
            offset = offset.wrapping_add(u64::from(ctx.sectorsize));
        }
        buf.push(b'\n');
    }
    Ok(())
}

pub(super) fn block_group(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    let bg: BlockGroupItem = need(data, "block group item")?;
    w!(buf, "\t\tblock group used {} chunk_objectid {} flags {}\n", bg.used.get(), bg.chunk_objectid.get(), bg_flags_str(bg.flags.get()));
    Ok(())
}

pub(super) fn free_space_info(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    let fi: FreeSpaceInfo = need(data, "free space info")?;
    w!(buf, "\t\tfree space info extent count {} flags {}\n", fi.extent_count.get(), fi.flags.get());
    Ok(())
}

/// Free space cache (v1) header: location key, generation, entries, bitmaps.
pub(super) fn free_space_header(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    let loc: DiskKey = need(data, "free space header")?;
    let at = std::mem::size_of::<DiskKey>();
    let gen = u64_at(data, at, "free space header")?;
    let entries = u64_at(data, at + 8, "free space header")?;
    let bitmaps = u64_at(data, at + 16, "free space header")?;
    w!(buf, "\t\tlocation {}\n", key_str(&Key::from_disk(&loc)));
    w!(buf, "\t\tcache generation {gen} entries {entries} bitmaps {bitmaps}\n");
    Ok(())
}
