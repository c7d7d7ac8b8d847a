//! Items of files and directories: inodes, their names, directory entries
//! and xattrs, file extents, verity descriptors.

use std::io::Write;

use super::body::{need, u64_at};
use super::names::{compress_str, dir_type_str, inode_flags_str, key_str};
use super::text::{c_str, hex_dump, time_str};
use super::DumpCtx;
use crate::error::Result;
use crate::format::items::{self, FileExtentKind};
use crate::format::ondisk::*;
use crate::format::Key;

pub(super) fn print_inode_item(buf: &mut Vec<u8>, ii: &InodeItem) {
    w!(buf, "\t\tgeneration {} transid {} size {} nbytes {}\n", ii.generation.get(), ii.transid.get(), ii.size.get(), ii.nbytes.get());
    w!(
        buf,
        "\t\tblock group {} mode {:o} links {} uid {} gid {} rdev {}\n",
        ii.block_group.get(),
        ii.mode.get(),
        ii.nlink.get(),
        ii.uid.get(),
        ii.gid.get(),
        ii.rdev.get()
    );
    let flags = ii.flags.get();
    w!(buf, "\t\tsequence {} flags {flags:#x}({})\n", ii.sequence.get(), inode_flags_str(flags));
    w!(buf, "\t\tatime {}\n", time_str(&ii.atime));
    w!(buf, "\t\tctime {}\n", time_str(&ii.ctime));
    w!(buf, "\t\tmtime {}\n", time_str(&ii.mtime));
    w!(buf, "\t\totime {}\n", time_str(&ii.otime));
}

/// A name as btrfs-progs prints it (at most NAME_LEN bytes, up to a NUL),
/// or `HIDDEN` under `--hide-names`.
pub(super) fn name_bytes<'a>(ctx: &DumpCtx, name: &'a [u8]) -> &'a [u8] {
    if ctx.hide_names {
        b"HIDDEN"
    } else {
        c_str(name, NAME_LEN)
    }
}

pub(super) fn inode_refs(buf: &mut Vec<u8>, ctx: &DumpCtx, key: Key, data: &[u8]) -> Result<()> {
    for r in items::parse_inode_refs(key, data)? {
        w!(buf, "\t\tindex {} namelen {} name: ", r.index, r.name.len());
        buf.extend_from_slice(name_bytes(ctx, &r.name));
        w!(buf, "\n");
    }
    Ok(())
}

pub(super) fn inode_extrefs(buf: &mut Vec<u8>, ctx: &DumpCtx, data: &[u8]) -> Result<()> {
    for r in items::parse_inode_extrefs(data)? {
        w!(buf, "\t\tindex {} parent {} namelen {} name: ", r.index, r.parent, r.name.len());
        buf.extend_from_slice(name_bytes(ctx, &r.name));
        w!(buf, "\n");
    }
    Ok(())
}

/// DIR_ITEM, DIR_INDEX and XATTR_ITEM: one or more entries.
pub(super) fn dir_items(buf: &mut Vec<u8>, ctx: &DumpCtx, data: &[u8]) -> Result<()> {
    for e in items::parse_dir_items(data)? {
        w!(buf, "\t\tlocation {} type {}\n", key_str(&e.location), dir_type_str(e.dir_type));
        w!(buf, "\t\ttransid {} data_len {} name_len {}\n", e.transid, e.data.len(), e.name.len());
        w!(buf, "\t\tname: ");
        buf.extend_from_slice(name_bytes(ctx, &e.name));
        w!(buf, "\n");
        if !e.data.is_empty() {
            // btrfs-progs: "data HIDDEN", without the space-less colon of "name:".
            w!(buf, "\t\tdata ");
            buf.extend_from_slice(name_bytes(ctx, &e.data));
            w!(buf, "\n");
        }
    }
    Ok(())
}

pub(super) fn dir_log(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    w!(buf, "\t\tdir log end {}\n", u64_at(data, 0, "dir log item")?);
    Ok(())
}

pub(super) fn print_file_extent(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    let h: FileExtentHeader = need(data, "file extent")?;
    let kind = match h.extent_type {
        FILE_EXTENT_INLINE => "inline",
        FILE_EXTENT_PREALLOC => "prealloc",
        FILE_EXTENT_REG => "regular",
        _ => "unknown",
    };
    let fe = items::parse_file_extent(data)?;
    w!(buf, "\t\tgeneration {} type {} ({kind})\n", fe.generation, h.extent_type);
    let comp = compress_str(fe.compression);
    match fe.kind {
        FileExtentKind::Inline { data: inline } => {
            w!(buf, "\t\tinline extent data size {} ram_bytes {} compression {} ({comp})\n", inline.len(), fe.ram_bytes, fe.compression);
        }
        FileExtentKind::Regular { prealloc: true, disk_bytenr, disk_num_bytes, offset, num_bytes } => {
            w!(buf, "\t\tprealloc data disk byte {disk_bytenr} nr {disk_num_bytes}\n");
            w!(buf, "\t\tprealloc data offset {offset} nr {num_bytes}\n");
        }
        FileExtentKind::Regular { prealloc: false, disk_bytenr, disk_num_bytes, offset, num_bytes } => {
            w!(buf, "\t\textent data disk byte {disk_bytenr} nr {disk_num_bytes}\n");
            w!(buf, "\t\textent data offset {offset} nr {num_bytes} ram {}\n", fe.ram_bytes);
            w!(buf, "\t\textent compression {} ({comp})\n", fe.compression);
        }
    }
    Ok(())
}

pub(super) fn verity_desc(buf: &mut Vec<u8>, key: Key, data: &[u8]) -> Result<()> {
    if key.offset == 0 {
        let v: VerityDescriptorItem = need(data, "verity descriptor item")?;
        w!(buf, "\t\tverity descriptor size {} encryption {}\n", v.size.get(), v.encryption);
    } else {
        w!(buf, "\t\tverity descriptor data at offset {}, {} bytes\n", key.offset - 1, data.len());
        hex_dump(buf, data);
    }
    Ok(())
}
