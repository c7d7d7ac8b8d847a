//! `dump-super` and `dump-tree`: print superblocks and tree blocks the way
//! `btrfs inspect-internal dump-super -f` and `dump-tree` (btrfs-progs 6.2) do.
//!
//! Output follows btrfs-progs line for line where btrfs-progs prints something
//! (same field names, order, indentation and number formats), so the two can be
//! diffed. Where btrfs-progs prints nothing for an item (dev replace, verity,
//! unknown types) btrs prints a short decoded form or a hex dump. Nothing here
//! stops at damaged bytes: an item that does not decode prints an `ERROR:` line
//! and a hex dump of its body; a tree block that cannot be read prints an
//! `ERROR:` line naming it, and the dump goes on with the rest.
//!
//! Differences from btrfs-progs that remain on purpose:
//! - times are printed in UTC (btrfs-progs uses the local time zone; they agree
//!   under `TZ=UTC`);
//! - no `btrfs-progs vX.Y` banner line;
//! - a superblock copy with bad magic is dumped anyway after its `ERROR:` line
//!   (btrfs-progs wants `--force` for that);
//! - `dump_tree(Some(id))` for an id without a ROOT_ITEM is an error (btrfs-progs
//!   prints only the totals);
//! - the default traversal is depth first (btrfs-progs' `--dfs`); breadth first
//!   (btrfs-progs' default) is available through [`dump_tree_with`].

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use zerocopy::FromBytes;

use crate::error::{Error, Result};
use crate::format::items::{self, ChunkInfo, ExtentRef, FileExtentKind};
use crate::format::ondisk::*;
use crate::format::superblock::{compat_ro_names, incompat_names};
use crate::format::types::{item_type_name, uuid_string};
use crate::format::{CsumType, Key};
use crate::fs::Filesystem;
use crate::tree::block::{HEADER_SIZE, ITEM_SIZE, KEY_PTR_SIZE};
use crate::tree::{Expect, TreeBlock};
use crate::volumes::Device;

/// Append formatted text to a byte buffer (writing to a `Vec` cannot fail).
macro_rules! w {
    ($buf:expr, $($arg:tt)*) => {{
        let _ = write!($buf, $($arg)*);
    }};
}

fn out_err(e: std::io::Error) -> Error {
    Error::io("<output>", "write", e)
}

// ======================================================================
// dump-super
// ======================================================================

/// Print the superblock of `dev` like `btrfs inspect-internal dump-super -f`.
///
/// `all`: every copy location (64 KiB, 64 MiB, 256 GiB) that fits on the
/// device, each with its own checksum and magic verdict; a damaged copy is
/// still printed as far as it goes. `json`: one JSON object (or an array of
/// objects for `all`) with the same fields, plus `offset`, `csum_ok`,
/// `magic_ok` and `bytenr_ok` per copy.
pub fn dump_super(out: &mut dyn Write, dev: &Device, all: bool, json: bool) -> Result<()> {
    let offsets: Vec<u64> = if all {
        SUPER_MIRROR_OFFSETS.iter().copied().filter(|&o| o + SUPER_INFO_SIZE as u64 <= dev.size).collect()
    } else {
        vec![SUPER_INFO_OFFSET]
    };
    // btrfs-progs prints an empty line for each copy location past the end of the device.
    let missing = if all { SUPER_MIRROR_OFFSETS.len() - offsets.len() } else { 0 };
    let path = dev.path.display().to_string();
    let mut values = Vec::new();
    for &offset in &offsets {
        let mut raw = vec![0u8; SUPER_INFO_SIZE];
        let read = if offset + SUPER_INFO_SIZE as u64 > dev.size {
            Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "beyond the end of the device"))
        } else {
            dev.read_raw_at(offset, &mut raw)
        };
        if json {
            values.push(match read {
                Ok(()) => super_json(&raw, offset, &path),
                Err(e) => json!({
                    "offset": offset,
                    "device": path,
                    "error": format!("failed to read the superblock: {e}"),
                    "csum_ok": false,
                    "magic_ok": false,
                }),
            });
            continue;
        }
        let mut buf = Vec::new();
        match read {
            Ok(()) => {
                w!(buf, "superblock: bytenr={offset}, device={path}\n");
                w!(buf, "---------------------------------------------------------\n");
                if read_super_struct(&raw).magic != BTRFS_MAGIC {
                    w!(buf, "ERROR: bad magic on superblock on {path} at {offset}\n");
                }
                print_super(&mut buf, &raw);
            }
            Err(e) => {
                w!(buf, "ERROR: failed to read the superblock on {path} at {offset}: {e}\n");
            }
        }
        w!(buf, "\n");
        out.write_all(&buf).map_err(out_err)?;
    }
    if !json && missing > 0 {
        out.write_all(&b"\n".repeat(missing)).map_err(out_err)?;
    }
    if json {
        let v = if all { Value::Array(values) } else { values.into_iter().next().unwrap_or(Value::Null) };
        serde_json::to_writer_pretty(&mut *out, &v).map_err(|e| out_err(e.into()))?;
        out.write_all(b"\n").map_err(out_err)?;
    }
    Ok(())
}

/// What the checks on one raw superblock copy found.
struct SuperVerdict {
    csum_type: Option<CsumType>,
    csum_size: usize,
    csum_ok: bool,
    magic_ok: bool,
}

fn super_verdict(raw: &[u8], sb: &SuperBlock) -> SuperVerdict {
    let csum_type = CsumType::from_raw(sb.csum_type.get());
    let csum_size = csum_type.map(|c| c.size()).unwrap_or(CSUM_SIZE);
    let csum_ok = csum_type.is_some_and(|c| c.matches(&c.compute(raw.get(CSUM_SIZE..SUPER_INFO_SIZE).unwrap_or(&[])), &sb.csum));
    SuperVerdict { csum_type, csum_size, csum_ok, magic_ok: sb.magic == BTRFS_MAGIC }
}

fn read_super_struct(raw: &[u8]) -> SuperBlock {
    let mut full = [0u8; SUPER_INFO_SIZE];
    let n = raw.len().min(SUPER_INFO_SIZE);
    full[..n].copy_from_slice(&raw[..n]);
    // 4096 bytes always make a SuperBlock.
    SuperBlock::read_from_prefix(&full[..]).map(|(s, _)| s).unwrap_or_else(|_| zerocopy::FromZeros::new_zeroed())
}

/// Checksum names as dump-super prints them (`blake2`, where `CsumType::name` says `blake2b`).
fn csum_name(t: Option<CsumType>) -> &'static str {
    match t {
        Some(CsumType::Crc32c) => "crc32c",
        Some(CsumType::Xxhash64) => "xxhash64",
        Some(CsumType::Sha256) => "sha256",
        Some(CsumType::Blake2b256) => "blake2",
        None => "INVALID",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn printable(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '.' }).collect()
}

fn label_of(sb: &SuperBlock) -> String {
    let end = sb.label.iter().position(|&b| b == 0).unwrap_or(LABEL_SIZE);
    printable(&sb.label[..end])
}

fn metadata_uuid_of(sb: &SuperBlock) -> [u8; 16] {
    if sb.incompat_flags.get() & INCOMPAT_METADATA_UUID != 0 {
        sb.metadata_uuid
    } else {
        sb.fsid
    }
}

/// Superblock flag names in the order btrfs-progs prints them.
fn super_flag_names_progs(flags: u64) -> Vec<String> {
    let table: &[(u64, &str)] = &[
        (SUPER_FLAG_WRITTEN, "WRITTEN"),
        (SUPER_FLAG_RELOC, "RELOC"),
        (SUPER_FLAG_CHANGING_FSID, "CHANGING_FSID"),
        (SUPER_FLAG_SEEDING, "SEEDING"),
        (SUPER_FLAG_METADUMP, "METADUMP"),
        (SUPER_FLAG_METADUMP_V2, "METADUMP_V2"),
        (SUPER_FLAG_CHANGING_FSID_V2, "CHANGING_FSID_V2"),
    ];
    let mut out: Vec<String> = table.iter().filter(|(b, _)| flags & b != 0).map(|(_, n)| n.to_string()).collect();
    let known = table.iter().fold(0, |a, (b, _)| a | b);
    if flags & !known != 0 {
        out.push(format!("unknown flag: {:#x}", flags & !known));
    }
    out
}

/// The `( A |\n\t\t\t  B )` block btrfs-progs prints under a flags field.
fn print_readable_flags(buf: &mut Vec<u8>, flags: u64, names: &[String]) {
    if flags == 0 {
        return;
    }
    w!(buf, "\t\t\t( ");
    for (i, n) in names.iter().enumerate() {
        if i == 0 {
            w!(buf, "{n} ");
        } else {
            w!(buf, "|\n\t\t\t  {n} ");
        }
    }
    w!(buf, ")\n");
}

fn print_super(buf: &mut Vec<u8>, raw: &[u8]) {
    let sb = read_super_struct(raw);
    let v = super_verdict(raw, &sb);
    let csum_type = sb.csum_type.get();
    w!(buf, "csum_type\t\t{csum_type} ({})\n", csum_name(v.csum_type));
    w!(buf, "csum_size\t\t{}\n", v.csum_size);
    w!(buf, "csum\t\t\t0x{}", hex(&sb.csum[..v.csum_size]));
    if v.csum_type.is_none() {
        w!(buf, " [UNKNOWN CSUM TYPE OR SIZE]\n");
    } else if v.csum_ok {
        w!(buf, " [match]\n");
    } else {
        w!(buf, " [DON'T MATCH]\n");
    }
    w!(buf, "bytenr\t\t\t{}\n", sb.bytenr.get());
    let flags = sb.flags.get();
    w!(buf, "flags\t\t\t{flags:#x}\n");
    print_readable_flags(buf, flags, &super_flag_names_progs(flags));
    w!(buf, "magic\t\t\t{} {}\n", printable(&sb.magic), if v.magic_ok { "[match]" } else { "[DON'T MATCH]" });
    w!(buf, "fsid\t\t\t{}\n", uuid_string(&sb.fsid));
    let meta_uuid = metadata_uuid_of(&sb);
    w!(buf, "metadata_uuid\t\t{}\n", uuid_string(&meta_uuid));
    w!(buf, "label\t\t\t{}\n", label_of(&sb));
    w!(buf, "generation\t\t{}\n", sb.generation.get());
    w!(buf, "root\t\t\t{}\n", sb.root.get());
    w!(buf, "sys_array_size\t\t{}\n", sb.sys_chunk_array_size.get());
    w!(buf, "chunk_root_generation\t{}\n", sb.chunk_root_generation.get());
    w!(buf, "root_level\t\t{}\n", sb.root_level);
    w!(buf, "chunk_root\t\t{}\n", sb.chunk_root.get());
    w!(buf, "chunk_root_level\t{}\n", sb.chunk_root_level);
    w!(buf, "log_root\t\t{}\n", sb.log_root.get());
    w!(buf, "log_root_transid (deprecated)\t{}\n", sb.unused_log_root_transid.get());
    w!(buf, "log_root_level\t\t{}\n", sb.log_root_level);
    w!(buf, "total_bytes\t\t{}\n", sb.total_bytes.get());
    w!(buf, "bytes_used\t\t{}\n", sb.bytes_used.get());
    w!(buf, "sectorsize\t\t{}\n", sb.sectorsize.get());
    w!(buf, "nodesize\t\t{}\n", sb.nodesize.get());
    w!(buf, "leafsize (deprecated)\t{}\n", sb.unused_leafsize.get());
    w!(buf, "stripesize\t\t{}\n", sb.stripesize.get());
    w!(buf, "root_dir\t\t{}\n", sb.root_dir_objectid.get());
    w!(buf, "num_devices\t\t{}\n", sb.num_devices.get());
    w!(buf, "compat_flags\t\t{:#x}\n", sb.compat_flags.get());
    let ro = sb.compat_ro_flags.get();
    w!(buf, "compat_ro_flags\t\t{ro:#x}\n");
    print_readable_flags(buf, ro, &compat_ro_names(ro));
    let inc = sb.incompat_flags.get();
    w!(buf, "incompat_flags\t\t{inc:#x}\n");
    print_readable_flags(buf, inc, &incompat_names(inc));
    w!(buf, "cache_generation\t{}\n", sb.cache_generation.get());
    w!(buf, "uuid_tree_generation\t{}\n", sb.uuid_tree_generation.get());
    let d = &sb.dev_item;
    w!(buf, "dev_item.uuid\t\t{}\n", uuid_string(&d.uuid));
    w!(
        buf,
        "dev_item.fsid\t\t{} {}\n",
        uuid_string(&d.fsid),
        if d.fsid == meta_uuid { "[match]" } else { "[DON'T MATCH]" }
    );
    w!(buf, "dev_item.type\t\t{}\n", d.dev_type.get());
    w!(buf, "dev_item.total_bytes\t{}\n", d.total_bytes.get());
    w!(buf, "dev_item.bytes_used\t{}\n", d.bytes_used.get());
    w!(buf, "dev_item.io_align\t{}\n", d.io_align.get());
    w!(buf, "dev_item.io_width\t{}\n", d.io_width.get());
    w!(buf, "dev_item.sector_size\t{}\n", d.sector_size.get());
    w!(buf, "dev_item.devid\t\t{}\n", d.devid.get());
    w!(buf, "dev_item.dev_group\t{}\n", d.dev_group.get());
    w!(buf, "dev_item.seek_speed\t{}\n", d.seek_speed);
    w!(buf, "dev_item.bandwidth\t{}\n", d.bandwidth);
    w!(buf, "dev_item.generation\t{}\n", d.generation.get());
    w!(buf, "sys_chunk_array[{SYSTEM_CHUNK_ARRAY_SIZE}]:\n");
    let (chunks, err) = sys_array_entries(&sb);
    for (i, (key, chunk)) in chunks.iter().enumerate() {
        w!(buf, "\titem {i} {}\n", key_str(key));
        print_chunk(buf, chunk);
    }
    if let Some(e) = err {
        w!(buf, "ERROR: {e}\n");
    }
    w!(buf, "backup_roots[{NUM_BACKUP_ROOTS}]:\n");
    let v2 = inc & INCOMPAT_EXTENT_TREE_V2 != 0;
    for (i, b) in sb.super_roots.iter().enumerate() {
        if b.tree_root.get() == 0 && b.tree_root_gen.get() == 0 {
            continue;
        }
        w!(buf, "\tbackup {i}:\n");
        w!(buf, "\t\tbackup_tree_root:\t{}\tgen: {}\tlevel: {}\n", b.tree_root.get(), b.tree_root_gen.get(), b.tree_root_level);
        w!(buf, "\t\tbackup_chunk_root:\t{}\tgen: {}\tlevel: {}\n", b.chunk_root.get(), b.chunk_root_gen.get(), b.chunk_root_level);
        w!(
            buf,
            "\t\t{}:\t{}\tgen: {}\tlevel: {}\n",
            if v2 { "backup_block_group_root" } else { "backup_extent_root" },
            b.extent_root.get(),
            b.extent_root_gen.get(),
            b.extent_root_level
        );
        w!(buf, "\t\tbackup_fs_root:\t\t{}\tgen: {}\tlevel: {}\n", b.fs_root.get(), b.fs_root_gen.get(), b.fs_root_level);
        w!(buf, "\t\tbackup_dev_root:\t{}\tgen: {}\tlevel: {}\n", b.dev_root.get(), b.dev_root_gen.get(), b.dev_root_level);
        w!(buf, "\t\tcsum_root:\t{}\tgen: {}\tlevel: {}\n", b.csum_root.get(), b.csum_root_gen.get(), b.csum_root_level);
        w!(buf, "\t\tbackup_total_bytes:\t{}\n", b.total_bytes.get());
        w!(buf, "\t\tbackup_bytes_used:\t{}\n", b.bytes_used.get());
        w!(buf, "\t\tbackup_num_devices:\t{}\n", b.num_devices.get());
        w!(buf, "\n");
    }
}

/// Walk the system chunk array the way btrfs-progs does: every chunk that
/// decodes, then the first problem (with btrfs-progs' wording), if any.
fn sys_array_entries(sb: &SuperBlock) -> (Vec<(Key, ChunkInfo)>, Option<String>) {
    let size = sb.sys_chunk_array_size.get() as usize;
    let mut out = Vec::new();
    if size > SYSTEM_CHUNK_ARRAY_SIZE {
        return (out, Some(format!("sys_array_size {size} shouldn't exceed {SYSTEM_CHUNK_ARRAY_SIZE} bytes")));
    }
    let arr = &sb.sys_chunk_array[..size];
    let key_len = std::mem::size_of::<DiskKey>();
    let chunk_len = std::mem::size_of::<Chunk>();
    let stripe_len = std::mem::size_of::<Stripe>();
    let mut cur = 0usize;
    while cur < size {
        if cur + key_len > size {
            return (out, Some(format!("sys_array too short to read {key_len} bytes at offset {cur}")));
        }
        let key = match DiskKey::read_from_prefix(&arr[cur..]) {
            Ok((k, _)) => Key::from_disk(&k),
            Err(_) => return (out, Some(format!("sys_array too short to read {key_len} bytes at offset {cur}"))),
        };
        cur += key_len;
        if key.item_type != CHUNK_ITEM_KEY {
            return (out, Some(format!("unexpected item type {} in sys_array at offset {cur}", key.item_type)));
        }
        if cur + chunk_len + stripe_len > size {
            return (out, Some(format!("sys_array too short to read {} bytes at offset {cur}", chunk_len + stripe_len)));
        }
        let num_stripes = Chunk::read_from_prefix(&arr[cur..]).map(|(c, _)| c.num_stripes.get()).unwrap_or(0);
        if num_stripes == 0 {
            return (out, Some(format!("invalid number of stripes {num_stripes} in sys_array at offset {cur}")));
        }
        let len = chunk_len + stripe_len * num_stripes as usize;
        if cur + len > size {
            return (out, Some(format!("sys_array too short to read {len} bytes at offset {cur}")));
        }
        match items::parse_chunk(&arr[cur..cur + len]) {
            Ok((c, _)) => out.push((key, c)),
            Err(e) => return (out, Some(format!("sys_array chunk at offset {cur}: {e}"))),
        }
        cur += len;
    }
    (out, None)
}

fn flags_json(value: u64, names: Vec<String>) -> Value {
    json!({ "value": value, "names": names })
}

fn key_json(k: &Key) -> Value {
    json!({ "objectid": k.objectid, "type": k.item_type, "offset": k.offset, "text": key_str(k) })
}

fn super_json(raw: &[u8], offset: u64, path: &str) -> Value {
    let sb = read_super_struct(raw);
    let v = super_verdict(raw, &sb);
    let meta_uuid = metadata_uuid_of(&sb);
    let d = &sb.dev_item;
    let (chunks, sys_err) = sys_array_entries(&sb);
    let sys: Vec<Value> = chunks
        .iter()
        .map(|(k, c)| {
            json!({
                "key": key_json(k),
                "length": c.length,
                "owner": c.owner,
                "stripe_len": c.stripe_len,
                "type": flags_json(c.chunk_type, vec![bg_flags_str(c.chunk_type)]),
                "io_align": c.io_align,
                "io_width": c.io_width,
                "sector_size": c.sector_size,
                "num_stripes": c.stripes.len(),
                "sub_stripes": c.sub_stripes,
                "stripes": c.stripes.iter().map(|s| json!({
                    "devid": s.devid,
                    "offset": s.offset,
                    "dev_uuid": uuid_string(&s.dev_uuid),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let backups: Vec<Value> = sb
        .super_roots
        .iter()
        .enumerate()
        .filter(|(_, b)| !(b.tree_root.get() == 0 && b.tree_root_gen.get() == 0))
        .map(|(i, b)| {
            json!({
                "slot": i,
                "tree_root": b.tree_root.get(), "tree_root_gen": b.tree_root_gen.get(), "tree_root_level": b.tree_root_level,
                "chunk_root": b.chunk_root.get(), "chunk_root_gen": b.chunk_root_gen.get(), "chunk_root_level": b.chunk_root_level,
                "extent_root": b.extent_root.get(), "extent_root_gen": b.extent_root_gen.get(), "extent_root_level": b.extent_root_level,
                "fs_root": b.fs_root.get(), "fs_root_gen": b.fs_root_gen.get(), "fs_root_level": b.fs_root_level,
                "dev_root": b.dev_root.get(), "dev_root_gen": b.dev_root_gen.get(), "dev_root_level": b.dev_root_level,
                "csum_root": b.csum_root.get(), "csum_root_gen": b.csum_root_gen.get(), "csum_root_level": b.csum_root_level,
                "total_bytes": b.total_bytes.get(),
                "bytes_used": b.bytes_used.get(),
                "num_devices": b.num_devices.get(),
            })
        })
        .collect();
    let flags = sb.flags.get();
    let ro = sb.compat_ro_flags.get();
    let inc = sb.incompat_flags.get();
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("offset", json!(offset));
    put("device", json!(path));
    put("csum_ok", json!(v.csum_ok));
    put("magic_ok", json!(v.magic_ok));
    put("bytenr_ok", json!(sb.bytenr.get() == offset));
    put("csum_type", json!(sb.csum_type.get()));
    put("csum_type_name", json!(csum_name(v.csum_type)));
    put("csum_size", json!(v.csum_size));
    put("csum", json!(format!("0x{}", hex(&sb.csum[..v.csum_size]))));
    put("bytenr", json!(sb.bytenr.get()));
    put("flags", flags_json(flags, super_flag_names_progs(flags)));
    put("magic", json!(printable(&sb.magic)));
    put("fsid", json!(uuid_string(&sb.fsid)));
    put("metadata_uuid", json!(uuid_string(&meta_uuid)));
    put("label", json!(label_of(&sb)));
    put("generation", json!(sb.generation.get()));
    put("root", json!(sb.root.get()));
    put("sys_array_size", json!(sb.sys_chunk_array_size.get()));
    put("chunk_root_generation", json!(sb.chunk_root_generation.get()));
    put("root_level", json!(sb.root_level));
    put("chunk_root", json!(sb.chunk_root.get()));
    put("chunk_root_level", json!(sb.chunk_root_level));
    put("log_root", json!(sb.log_root.get()));
    put("log_root_transid", json!(sb.unused_log_root_transid.get()));
    put("log_root_level", json!(sb.log_root_level));
    put("total_bytes", json!(sb.total_bytes.get()));
    put("bytes_used", json!(sb.bytes_used.get()));
    put("sectorsize", json!(sb.sectorsize.get()));
    put("nodesize", json!(sb.nodesize.get()));
    put("leafsize", json!(sb.unused_leafsize.get()));
    put("stripesize", json!(sb.stripesize.get()));
    put("root_dir", json!(sb.root_dir_objectid.get()));
    put("num_devices", json!(sb.num_devices.get()));
    put("compat_flags", flags_json(sb.compat_flags.get(), if sb.compat_flags.get() != 0 {
        vec![format!("unknown flag: {:#x}", sb.compat_flags.get())]
    } else {
        Vec::new()
    }));
    put("compat_ro_flags", flags_json(ro, compat_ro_names(ro)));
    put("incompat_flags", flags_json(inc, incompat_names(inc)));
    put("cache_generation", json!(sb.cache_generation.get()));
    put("uuid_tree_generation", json!(sb.uuid_tree_generation.get()));
    put("nr_global_roots", json!(sb.nr_global_roots.get()));
    put(
        "dev_item",
        json!({
            "uuid": uuid_string(&d.uuid),
            "fsid": uuid_string(&d.fsid),
            "fsid_ok": d.fsid == meta_uuid,
            "type": d.dev_type.get(),
            "total_bytes": d.total_bytes.get(),
            "bytes_used": d.bytes_used.get(),
            "io_align": d.io_align.get(),
            "io_width": d.io_width.get(),
            "sector_size": d.sector_size.get(),
            "devid": d.devid.get(),
            "dev_group": d.dev_group.get(),
            "seek_speed": d.seek_speed,
            "bandwidth": d.bandwidth,
            "generation": d.generation.get(),
            "start_offset": d.start_offset.get(),
        }),
    );
    put("sys_chunk_array", Value::Array(sys));
    if let Some(e) = sys_err {
        put("sys_chunk_array_error", json!(e));
    }
    put("backup_roots", Value::Array(backups));
    Value::Object(m)
}

// ======================================================================
// Names and keys, as btrfs-progs prints them
// ======================================================================

/// `print_objectid()` of btrfs-progs.
fn objectid_str(id: u64, item_type: u8) -> String {
    match item_type {
        PERSISTENT_ITEM_KEY => {
            return if id == DEV_STATS_OBJECTID { "DEV_STATS".into() } else { id.to_string() };
        }
        DEV_EXTENT_KEY => return id.to_string(),
        QGROUP_RELATION_KEY => return qgroup_str(id),
        UUID_KEY_SUBVOL | UUID_KEY_RECEIVED_SUBVOL => return format!("0x{id:016x}"),
        _ => {}
    }
    let s = match id {
        ROOT_TREE_OBJECTID => {
            if item_type == DEV_ITEM_KEY {
                "DEV_ITEMS"
            } else {
                "ROOT_TREE"
            }
        }
        EXTENT_TREE_OBJECTID => "EXTENT_TREE",
        CHUNK_TREE_OBJECTID => "CHUNK_TREE",
        DEV_TREE_OBJECTID => "DEV_TREE",
        FS_TREE_OBJECTID => "FS_TREE",
        ROOT_TREE_DIR_OBJECTID => "ROOT_TREE_DIR",
        CSUM_TREE_OBJECTID => "CSUM_TREE",
        BALANCE_OBJECTID => "BALANCE",
        ORPHAN_OBJECTID => "ORPHAN",
        TREE_LOG_OBJECTID => "TREE_LOG",
        TREE_LOG_FIXUP_OBJECTID => "LOG_FIXUP",
        TREE_RELOC_OBJECTID => "TREE_RELOC",
        DATA_RELOC_TREE_OBJECTID => "DATA_RELOC_TREE",
        EXTENT_CSUM_OBJECTID => "EXTENT_CSUM",
        FREE_SPACE_OBJECTID => "FREE_SPACE",
        FREE_INO_OBJECTID => "FREE_INO",
        QUOTA_TREE_OBJECTID => "QUOTA_TREE",
        UUID_TREE_OBJECTID => "UUID_TREE",
        FREE_SPACE_TREE_OBJECTID => "FREE_SPACE_TREE",
        MULTIPLE_OBJECTIDS => "MULTIPLE",
        BLOCK_GROUP_TREE_OBJECTID => "BLOCK_GROUP_TREE",
        RAID_STRIPE_TREE_OBJECTID => "RAID_STRIPE_TREE",
        u64::MAX => "-1",
        FIRST_CHUNK_TREE_OBJECTID if item_type == CHUNK_ITEM_KEY => "FIRST_CHUNK_TREE",
        _ => return id.to_string(),
    };
    s.to_string()
}

fn qgroup_str(v: u64) -> String {
    format!("{}/{}", v >> 48, v & ((1u64 << 48) - 1))
}

/// `print_key_type()` of btrfs-progs.
fn type_str(objectid: u64, t: u8) -> String {
    match t {
        0 if objectid == FREE_SPACE_OBJECTID => "UNTYPED".into(),
        120 => "CSUM_ITEM".into(),
        180 => "EXTENT_REF_V0".into(),
        _ => item_type_name(t),
    }
}

/// `btrfs_print_key()` of btrfs-progs: `key (OBJECTID TYPE OFFSET)`.
pub fn key_str(k: &Key) -> String {
    let off = match k.item_type {
        QGROUP_RELATION_KEY | QGROUP_INFO_KEY | QGROUP_LIMIT_KEY => qgroup_str(k.offset),
        UUID_KEY_SUBVOL | UUID_KEY_RECEIVED_SUBVOL => format!("0x{:016x}", k.offset),
        ROOT_ITEM_KEY if k.objectid == TREE_RELOC_OBJECTID => objectid_str(k.offset, k.item_type),
        ROOT_ITEM_KEY => k.offset.to_string(),
        _ if k.offset == u64::MAX => "-1".into(),
        _ => k.offset.to_string(),
    };
    format!("key ({} {} {})", objectid_str(k.objectid, k.item_type), type_str(k.objectid, k.item_type), off)
}

/// Block group / chunk type flags: `DATA|METADATA|single`, `SYSTEM|DUP`.
fn bg_flags_str(flags: u64) -> String {
    let mut parts = Vec::new();
    for (bit, name) in [(BLOCK_GROUP_DATA, "DATA"), (BLOCK_GROUP_METADATA, "METADATA"), (BLOCK_GROUP_SYSTEM, "SYSTEM")] {
        if flags & bit != 0 {
            parts.push(name.to_string());
        }
    }
    match crate::format::Profile::from_flags(flags) {
        Some(crate::format::Profile::Single) => parts.push("single".into()),
        Some(p) => parts.push(p.name().to_ascii_uppercase()),
        None => parts.push(format!("UNKNOWN.{:#x}", flags & BLOCK_GROUP_PROFILE_MASK)),
    }
    parts.join("|")
}

/// Name of a tree as the `TREE tree key (...)` lines of dump-tree print it.
fn tree_label(id: u64) -> &'static str {
    match id {
        ROOT_TREE_OBJECTID => "root",
        EXTENT_TREE_OBJECTID => "extent",
        CHUNK_TREE_OBJECTID => "chunk",
        DEV_TREE_OBJECTID => "device",
        FS_TREE_OBJECTID => "fs",
        ROOT_TREE_DIR_OBJECTID => "directory",
        CSUM_TREE_OBJECTID => "checksum",
        ORPHAN_OBJECTID => "orphan",
        TREE_LOG_OBJECTID => "log",
        TREE_LOG_FIXUP_OBJECTID => "log fixup",
        TREE_RELOC_OBJECTID => "reloc",
        DATA_RELOC_TREE_OBJECTID => "data reloc",
        EXTENT_CSUM_OBJECTID => "extent checksum",
        QUOTA_TREE_OBJECTID => "quota",
        UUID_TREE_OBJECTID => "uuid",
        FREE_SPACE_TREE_OBJECTID => "free space",
        BLOCK_GROUP_TREE_OBJECTID => "block group",
        RAID_STRIPE_TREE_OBJECTID => "raid stripe",
        MULTIPLE_OBJECTIDS => "multiple",
        _ => "file",
    }
}

fn compress_str(c: u8) -> String {
    match c {
        COMPRESS_NONE => "none".into(),
        COMPRESS_ZLIB => "zlib".into(),
        COMPRESS_LZO => "lzo".into(),
        COMPRESS_ZSTD => "zstd".into(),
        _ => format!("UNKNOWN.{c}"),
    }
}

fn inode_flags_str(flags: u64) -> String {
    let table = [
        (INODE_NODATASUM, "NODATASUM"),
        (INODE_NODATACOW, "NODATACOW"),
        (INODE_READONLY, "READONLY"),
        (INODE_NOCOMPRESS, "NOCOMPRESS"),
        (INODE_PREALLOC, "PREALLOC"),
        (INODE_SYNC, "SYNC"),
        (INODE_IMMUTABLE, "IMMUTABLE"),
        (INODE_APPEND, "APPEND"),
        (INODE_NODUMP, "NODUMP"),
        (INODE_NOATIME, "NOATIME"),
        (INODE_DIRSYNC, "DIRSYNC"),
        (INODE_COMPRESS, "COMPRESS"),
    ];
    let names: Vec<&str> = table.iter().filter(|(b, _)| flags & b != 0).map(|(_, n)| *n).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join("|")
    }
}

fn extent_flags_str(flags: u64) -> String {
    let mut s = String::new();
    if flags & EXTENT_FLAG_DATA != 0 {
        s.push_str("DATA");
    }
    if flags & EXTENT_FLAG_TREE_BLOCK != 0 {
        if !s.is_empty() {
            s.push('|');
        }
        s.push_str("TREE_BLOCK");
    }
    if flags & BLOCK_FLAG_FULL_BACKREF != 0 {
        s.push_str("|FULL_BACKREF");
    }
    s
}

fn dir_type_str(t: u8) -> String {
    match t {
        FT_REG_FILE => "FILE".into(),
        FT_DIR => "DIR".into(),
        FT_CHRDEV => "CHRDEV".into(),
        FT_BLKDEV => "BLKDEV".into(),
        FT_FIFO => "FIFO".into(),
        FT_SOCK => "SOCK".into(),
        FT_SYMLINK => "SYMLINK".into(),
        FT_XATTR => "XATTR".into(),
        _ => format!("DIR_ITEM.{t}"),
    }
}

/// A name as C's `%.*s` prints it: at most `max` bytes, stopping at a NUL.
fn c_str(b: &[u8], max: usize) -> &[u8] {
    let b = &b[..b.len().min(max)];
    match b.iter().position(|&c| c == 0) {
        Some(p) => &b[..p],
        None => b,
    }
}

/// `SECONDS.NANOS (YYYY-MM-DD HH:MM:SS)` in UTC.
fn time_str(t: &Timespec) -> String {
    let sec = t.sec.get();
    format!("{}.{} ({})", sec, t.nsec.get(), utc_datetime(sec as i64))
}

fn utc_datetime(t: i64) -> String {
    let days = t.div_euclid(86400);
    let rem = t.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

// ======================================================================
// Tree blocks and items
// ======================================================================

/// What printing a tree block needs to know about the filesystem.
#[derive(Clone, Copy, Debug)]
pub struct DumpCtx {
    pub nodesize: u32,
    pub sectorsize: u32,
    pub csum_size: usize,
}

impl DumpCtx {
    pub fn of(fs: &Filesystem) -> DumpCtx {
        DumpCtx { nodesize: fs.reader.nodesize, sectorsize: fs.sectorsize, csum_size: fs.csum.size() }
    }
}

fn header_flags_str(flags: u64) -> String {
    let mut v = Vec::new();
    if flags & HEADER_FLAG_WRITTEN != 0 {
        v.push("WRITTEN");
    }
    if flags & HEADER_FLAG_RELOC != 0 {
        v.push("RELOC");
    }
    v.join("|")
}

/// Free space of a leaf as btrfs-progs computes it (`btrfs_leaf_free_space`):
/// data area minus the span from the first item's end to the last item's
/// start, minus the item headers. Equals nodesize - 101 - sum(sizes) - 25*n
/// for a packed leaf.
fn leaf_free_space(block: &TreeBlock) -> i64 {
    let data_size = block.bytes().len() as i64 - HEADER_SIZE as i64;
    let n = block.nritems();
    if n == 0 {
        return data_size;
    }
    let (off0, size0) = block.item_location(0);
    let (off_last, _) = block.item_location(n - 1);
    let used = (off0 as i64 + size0 as i64) - off_last as i64 + (ITEM_SIZE * n) as i64;
    data_size - used
}

/// Print one tree block (node header and pointers, or leaf header and every
/// item) into `buf`, like btrfs-progs' `btrfs_print_tree` without following.
pub fn print_block(buf: &mut Vec<u8>, ctx: &DumpCtx, block: &TreeBlock) {
    let h = &block.header;
    let n = block.nritems();
    let raw_flags = h.flags.get();
    let flags = raw_flags & !(0xffu64 << BACKREF_REV_SHIFT);
    let rev = raw_flags >> BACKREF_REV_SHIFT;
    let owner = objectid_str(h.owner.get(), 0);
    if block.is_leaf() {
        w!(
            buf,
            "leaf {} items {n} free space {} generation {} owner {owner}\n",
            h.bytenr.get(),
            leaf_free_space(block),
            h.generation.get()
        );
    } else {
        let ptrs = ((block.bytes().len() - HEADER_SIZE) / KEY_PTR_SIZE) as u32;
        w!(
            buf,
            "node {} level {} items {n} free space {} generation {} owner {owner}\n",
            block.logical,
            h.level,
            ptrs.wrapping_sub(n as u32),
            h.generation.get()
        );
    }
    w!(
        buf,
        "{} {} flags {flags:#x}({}) backref revision {rev}\n",
        if block.is_leaf() { "leaf" } else { "node" },
        h.bytenr.get(),
        header_flags_str(flags)
    );
    w!(buf, "fs uuid {}\nchunk uuid {}\n", uuid_string(&h.fsid), uuid_string(&h.chunk_tree_uuid));
    if !block.is_leaf() {
        for i in 0..n {
            let (key, ptr, gen) = block.ptr(i);
            w!(buf, "\t{} block {ptr} gen {gen}\n", key_str(&key));
        }
        return;
    }
    for i in 0..n {
        let key = block.key(i);
        let (off, size) = block.item_location(i);
        w!(buf, "\titem {i} {} itemoff {off} itemsize {size}\n", key_str(&key));
        print_item(buf, ctx, key, block.item_data(i));
    }
}

/// Print the body of one leaf item. Never fails: undecodable bodies become
/// an `ERROR:` line and a hex dump.
pub fn print_item(buf: &mut Vec<u8>, ctx: &DumpCtx, key: Key, data: &[u8]) {
    match decode_item(buf, ctx, key, data) {
        Ok(Decoded::Done) => {}
        Ok(Decoded::Unknown) => {
            if !data.is_empty() {
                hex_dump(buf, data);
            }
        }
        Err(e) => {
            w!(buf, "\t\tERROR: cannot decode {} item: {e}\n", type_str(key.objectid, key.item_type));
            hex_dump(buf, data);
        }
    }
}

/// Hex dump of an item body: offset, 16 bytes in hex, the printable ones.
fn hex_dump(buf: &mut Vec<u8>, data: &[u8]) {
    w!(buf, "\t\titem data, {} bytes:\n", data.len());
    for (i, chunk) in data.chunks(16).enumerate() {
        let mut hexpart = String::with_capacity(50);
        for j in 0..16 {
            match chunk.get(j) {
                Some(b) => hexpart.push_str(&format!("{b:02x} ")),
                None => hexpart.push_str("   "),
            }
            if j == 7 {
                hexpart.push(' ');
            }
        }
        w!(buf, "\t\t{:08x}  {hexpart} |{}|\n", i * 16, printable(chunk));
    }
}

enum Decoded {
    Done,
    Unknown,
}

fn need<T: FromBytes>(data: &[u8], what: &str) -> Result<T> {
    Ok(items::read_prefix::<T>(data, what)?.0)
}

/// Read a struct that older kernels stored shorter: missing tail bytes read as zero.
fn padded<T: FromBytes>(data: &[u8], min: usize, what: &str) -> Result<T> {
    let size = std::mem::size_of::<T>();
    if data.len() < min {
        return Err(Error::corrupt(what, format!("item too short: {} bytes, need {min}", data.len())));
    }
    let mut v = vec![0u8; size];
    let n = data.len().min(size);
    v[..n].copy_from_slice(&data[..n]);
    need::<T>(&v, what)
}

fn u64_at(data: &[u8], pos: usize, what: &str) -> Result<u64> {
    data.get(pos..pos + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| Error::corrupt(what, format!("item too short: {} bytes, need {}", data.len(), pos + 8)))
}

fn decode_item(buf: &mut Vec<u8>, ctx: &DumpCtx, key: Key, data: &[u8]) -> Result<Decoded> {
    if key.item_type == 0 && key.objectid == FREE_SPACE_OBJECTID {
        // Free space cache (v1) header: location key, generation, entries, bitmaps.
        let loc: DiskKey = need(data, "free space header")?;
        let at = std::mem::size_of::<DiskKey>();
        let gen = u64_at(data, at, "free space header")?;
        let entries = u64_at(data, at + 8, "free space header")?;
        let bitmaps = u64_at(data, at + 16, "free space header")?;
        w!(buf, "\t\tlocation {}\n", key_str(&Key::from_disk(&loc)));
        w!(buf, "\t\tcache generation {gen} entries {entries} bitmaps {bitmaps}\n");
        return Ok(Decoded::Done);
    }
    match key.item_type {
        INODE_ITEM_KEY => {
            let ii: InodeItem = need(data, "inode item")?;
            print_inode_item(buf, &ii);
        }
        INODE_REF_KEY => {
            for r in items::parse_inode_refs(key, data)? {
                w!(buf, "\t\tindex {} namelen {} name: ", r.index, r.name.len());
                buf.extend_from_slice(c_str(&r.name, NAME_LEN));
                w!(buf, "\n");
            }
        }
        INODE_EXTREF_KEY => {
            for r in items::parse_inode_extrefs(data)? {
                w!(buf, "\t\tindex {} parent {} namelen {} name: ", r.index, r.parent, r.name.len());
                buf.extend_from_slice(c_str(&r.name, NAME_LEN));
                w!(buf, "\n");
            }
        }
        DIR_ITEM_KEY | DIR_INDEX_KEY | XATTR_ITEM_KEY => {
            for e in items::parse_dir_items(data)? {
                w!(buf, "\t\tlocation {} type {}\n", key_str(&e.location), dir_type_str(e.dir_type));
                w!(buf, "\t\ttransid {} data_len {} name_len {}\n", e.transid, e.data.len(), e.name.len());
                w!(buf, "\t\tname: ");
                buf.extend_from_slice(c_str(&e.name, NAME_LEN));
                w!(buf, "\n");
                if !e.data.is_empty() {
                    w!(buf, "\t\tdata ");
                    buf.extend_from_slice(c_str(&e.data, NAME_LEN));
                    w!(buf, "\n");
                }
            }
        }
        DIR_LOG_ITEM_KEY | DIR_LOG_INDEX_KEY => {
            w!(buf, "\t\tdir log end {}\n", u64_at(data, 0, "dir log item")?);
        }
        ORPHAN_ITEM_KEY => w!(buf, "\t\torphan item\n"),
        ROOT_ITEM_KEY => print_root_item(buf, data)?,
        ROOT_REF_KEY | ROOT_BACKREF_KEY => {
            let r = items::parse_root_ref(data)?;
            let tag = if key.item_type == ROOT_REF_KEY { "ref" } else { "backref" };
            w!(buf, "\t\troot {tag} key dirid {} sequence {} name ", r.dirid, r.sequence);
            buf.extend_from_slice(c_str(&r.name, NAME_LEN));
            w!(buf, "\n");
        }
        EXTENT_ITEM_KEY | METADATA_ITEM_KEY => print_extent_item(buf, key, data)?,
        TREE_BLOCK_REF_KEY => w!(buf, "\t\ttree block backref\n"),
        SHARED_BLOCK_REF_KEY => w!(buf, "\t\tshared block backref\n"),
        EXTENT_DATA_REF_KEY => {
            if let ExtentRef::Data { root, objectid, offset, count } = items::parse_keyed_ref(key, data)? {
                w!(
                    buf,
                    "\t\textent data backref root {} objectid {objectid} offset {offset} count {count}\n",
                    objectid_str(root, 0)
                );
            }
        }
        SHARED_DATA_REF_KEY => {
            if let ExtentRef::SharedData { count, .. } = items::parse_keyed_ref(key, data)? {
                w!(buf, "\t\tshared data backref count {count}\n");
            }
        }
        EXTENT_OWNER_REF_KEY => {
            if let ExtentRef::Owner { root } = items::parse_keyed_ref(key, data)? {
                w!(buf, "\t\textent owner root {root}\n");
            }
        }
        180 => w!(buf, "\t\textent ref v0 (deprecated)\n"),
        120 => w!(buf, "\t\tcsum item\n"),
        EXTENT_CSUM_KEY => {
            let cs = ctx.csum_size.max(1);
            if data.len() % cs != 0 {
                return Err(Error::corrupt(
                    "extent csum",
                    format!("item size {} is not a multiple of the checksum size {cs}", data.len()),
                ));
            }
            let len = (data.len() / cs) as u64 * ctx.sectorsize as u64;
            w!(buf, "\t\trange start {} end {} length {len}\n", key.offset, key.offset.wrapping_add(len));
        }
        EXTENT_DATA_KEY => print_file_extent(buf, data)?,
        BLOCK_GROUP_ITEM_KEY => {
            let bg: BlockGroupItem = need(data, "block group item")?;
            w!(
                buf,
                "\t\tblock group used {} chunk_objectid {} flags {}\n",
                bg.used.get(),
                bg.chunk_objectid.get(),
                bg_flags_str(bg.flags.get())
            );
        }
        FREE_SPACE_INFO_KEY => {
            let fi: FreeSpaceInfo = need(data, "free space info")?;
            w!(buf, "\t\tfree space info extent count {} flags {}\n", fi.extent_count.get(), fi.flags.get());
        }
        FREE_SPACE_EXTENT_KEY => w!(buf, "\t\tfree space extent\n"),
        FREE_SPACE_BITMAP_KEY => w!(buf, "\t\tfree space bitmap\n"),
        CHUNK_ITEM_KEY => {
            let (c, _) = items::parse_chunk(data)?;
            print_chunk(buf, &c);
        }
        DEV_ITEM_KEY => {
            let d: DevItem = need(data, "dev item")?;
            w!(buf, "\t\tdevid {} total_bytes {} bytes_used {}\n", d.devid.get(), d.total_bytes.get(), d.bytes_used.get());
            w!(
                buf,
                "\t\tio_align {} io_width {} sector_size {} type {}\n",
                d.io_align.get(),
                d.io_width.get(),
                d.sector_size.get(),
                d.dev_type.get()
            );
            w!(
                buf,
                "\t\tgeneration {} start_offset {} dev_group {}\n",
                d.generation.get(),
                d.start_offset.get(),
                d.dev_group.get()
            );
            w!(buf, "\t\tseek_speed {} bandwidth {}\n", d.seek_speed, d.bandwidth);
            w!(buf, "\t\tuuid {}\n\t\tfsid {}\n", uuid_string(&d.uuid), uuid_string(&d.fsid));
        }
        DEV_EXTENT_KEY => {
            let de: DevExtent = need(data, "dev extent")?;
            w!(buf, "\t\tdev extent chunk_tree {}\n", de.chunk_tree.get());
            w!(
                buf,
                "\t\tchunk_objectid {} chunk_offset {} length {}\n",
                de.chunk_objectid.get(),
                de.chunk_offset.get(),
                de.length.get()
            );
            w!(buf, "\t\tchunk_tree_uuid {}\n", uuid_string(&de.chunk_tree_uuid));
        }
        QGROUP_STATUS_KEY => {
            // Kernels before 6.7 wrote the item without enable_gen (32 bytes).
            let s: QgroupStatusItem = padded(data, 32, "qgroup status")?;
            let f = s.flags.get();
            let mut fs = String::from(if f & 1 != 0 { "ON" } else { "OFF" });
            if f & 2 != 0 {
                fs.push_str("|SCANNING");
            }
            if f & 4 != 0 {
                fs.push_str("|INCONSISTENT");
            }
            w!(
                buf,
                "\t\tversion {} generation {} flags {fs} scan {}\n",
                s.version.get(),
                s.generation.get(),
                s.rescan.get()
            );
        }
        QGROUP_INFO_KEY => {
            let q: QgroupInfoItem = need(data, "qgroup info")?;
            w!(buf, "\t\tgeneration {}\n", q.generation.get());
            w!(buf, "\t\treferenced {} referenced_compressed {}\n", q.rfer.get(), q.rfer_cmpr.get());
            w!(buf, "\t\texclusive {} exclusive_compressed {}\n", q.excl.get(), q.excl_cmpr.get());
        }
        QGROUP_LIMIT_KEY => {
            let q: QgroupLimitItem = need(data, "qgroup limit")?;
            w!(buf, "\t\tflags {:x}\n", q.flags.get());
            w!(buf, "\t\tmax_referenced {} max_exclusive {}\n", q.max_rfer.get() as i64, q.max_excl.get() as i64);
            w!(buf, "\t\trsv_referenced {} rsv_exclusive {}\n", q.rsv_rfer.get() as i64, q.rsv_excl.get() as i64);
        }
        QGROUP_RELATION_KEY => {
            if !data.is_empty() {
                return Ok(Decoded::Unknown);
            }
        }
        UUID_KEY_SUBVOL | UUID_KEY_RECEIVED_SUBVOL => {
            for id in items::parse_u64_array(data, "uuid item")? {
                w!(buf, "\t\tsubvol_id {id}\n");
            }
        }
        STRING_ITEM_KEY => {
            w!(buf, "\t\titem data ");
            buf.extend_from_slice(c_str(data, data.len()));
            w!(buf, "\n");
        }
        PERSISTENT_ITEM_KEY => {
            w!(
                buf,
                "\t\tpersistent item objectid {} offset {}\n",
                objectid_str(key.objectid, PERSISTENT_ITEM_KEY),
                key.offset
            );
            if key.objectid == DEV_STATS_OBJECTID {
                let v = items::parse_u64_array(data, "dev stats")?;
                if v.len() < DEV_STAT_VALUES_MAX {
                    return Err(Error::corrupt(
                        "dev stats",
                        format!("{} values, need {DEV_STAT_VALUES_MAX}", v.len()),
                    ));
                }
                w!(buf, "\t\tdevice stats\n");
                w!(
                    buf,
                    "\t\twrite_errs {} read_errs {} flush_errs {} corruption_errs {} generation {}\n",
                    v[0],
                    v[1],
                    v[2],
                    v[3],
                    v[4]
                );
                if v.len() > DEV_STAT_VALUES_MAX {
                    w!(buf, "\t\tunknown stats item bytes {}\n", data.len() - DEV_STAT_VALUES_MAX * 8);
                    for (i, val) in v.iter().enumerate().skip(DEV_STAT_VALUES_MAX) {
                        w!(buf, "\t\tunknown item {i} offset {} value {val}\n", i * 8);
                    }
                }
            } else {
                w!(buf, "\t\tunknown persistent item objectid {}\n", key.objectid);
                if !data.is_empty() {
                    hex_dump(buf, data);
                }
            }
        }
        TEMPORARY_ITEM_KEY => {
            w!(
                buf,
                "\t\ttemporary item objectid {} offset {}\n",
                objectid_str(key.objectid, TEMPORARY_ITEM_KEY),
                key.offset
            );
            if key.objectid == BALANCE_OBJECTID {
                let b: BalanceItem = need(data, "balance item")?;
                w!(buf, "\t\tbalance status flags {}\n", b.flags.get());
                for (name, args) in [("DATA", &b.data), ("METADATA", &b.meta), ("SYSTEM", &b.sys)] {
                    w!(buf, "\t\t{name}\n");
                    print_balance_args(buf, args);
                }
            } else {
                w!(buf, "\t\tunknown temporary item objectid {}\n", key.objectid);
                if !data.is_empty() {
                    hex_dump(buf, data);
                }
            }
        }
        DEV_REPLACE_KEY => {
            let r: DevReplaceItem = need(data, "dev replace item")?;
            w!(
                buf,
                "\t\tsrc devid {} cursor left {} cursor right {} cont reading from srcdev mode {}\n",
                r.src_devid.get(),
                r.cursor_left.get(),
                r.cursor_right.get(),
                r.cont_reading_from_srcdev_mode.get()
            );
            w!(
                buf,
                "\t\treplace state {} time started {} time stopped {}\n",
                r.replace_state.get(),
                r.time_started.get(),
                r.time_stopped.get()
            );
            w!(
                buf,
                "\t\tnum write errors {} num uncorrectable read errors {}\n",
                r.num_write_errors.get(),
                r.num_uncorrectable_read_errors.get()
            );
        }
        VERITY_DESC_ITEM_KEY => {
            if key.offset == 0 {
                let v: VerityDescriptorItem = need(data, "verity descriptor item")?;
                w!(buf, "\t\tverity descriptor size {} encryption {}\n", v.size.get(), v.encryption);
            } else {
                w!(buf, "\t\tverity descriptor data at offset {}, {} bytes\n", key.offset - 1, data.len());
                hex_dump(buf, data);
            }
        }
        VERITY_MERKLE_ITEM_KEY => {
            w!(buf, "\t\tverity merkle tree data at offset {}, {} bytes\n", key.offset, data.len());
        }
        _ => return Ok(Decoded::Unknown),
    }
    Ok(Decoded::Done)
}

fn print_inode_item(buf: &mut Vec<u8>, ii: &InodeItem) {
    w!(
        buf,
        "\t\tgeneration {} transid {} size {} nbytes {}\n",
        ii.generation.get(),
        ii.transid.get(),
        ii.size.get(),
        ii.nbytes.get()
    );
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

fn print_root_item(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    let ri = items::parse_root_item(data)?;
    let flags = ri.flags.get();
    w!(
        buf,
        "\t\tgeneration {} root_dirid {} bytenr {} byte_limit {} bytes_used {}\n",
        ri.generation.get(),
        ri.root_dirid.get(),
        ri.bytenr.get(),
        ri.byte_limit.get(),
        ri.bytes_used.get()
    );
    w!(
        buf,
        "\t\tlast_snapshot {} flags {flags:#x}({}) refs {}\n",
        ri.last_snapshot.get(),
        if flags & ROOT_SUBVOL_RDONLY != 0 { "RDONLY" } else { "none" },
        ri.refs.get()
    );
    w!(buf, "\t\tdrop_progress {} drop_level {}\n", key_str(&Key::from_disk(&ri.drop_progress)), ri.drop_level);
    w!(buf, "\t\tlevel {} generation_v2 {}\n", ri.level, ri.generation_v2.get());
    if ri.generation.get() == ri.generation_v2.get() {
        w!(buf, "\t\tuuid {}\n", uuid_string(&ri.uuid));
        w!(buf, "\t\tparent_uuid {}\n", uuid_string(&ri.parent_uuid));
        w!(buf, "\t\treceived_uuid {}\n", uuid_string(&ri.received_uuid));
        w!(
            buf,
            "\t\tctransid {} otransid {} stransid {} rtransid {}\n",
            ri.ctransid.get(),
            ri.otransid.get(),
            ri.stransid.get(),
            ri.rtransid.get()
        );
        w!(buf, "\t\tctime {}\n", time_str(&ri.ctime));
        w!(buf, "\t\totime {}\n", time_str(&ri.otime));
        w!(buf, "\t\tstime {}\n", time_str(&ri.stime));
        w!(buf, "\t\trtime {}\n", time_str(&ri.rtime));
    }
    Ok(())
}

fn print_extent_item(buf: &mut Vec<u8>, key: Key, data: &[u8]) -> Result<()> {
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
            ExtentRef::Data { root, objectid, offset, count } => w!(
                buf,
                "\t\textent data backref root {} objectid {objectid} offset {offset} count {count}\n",
                objectid_str(*root, 0)
            ),
            ExtentRef::SharedData { parent, count } => {
                w!(buf, "\t\tshared data backref parent {parent} count {count}\n")
            }
            ExtentRef::Owner { root } => w!(buf, "\t\textent owner root {root}\n"),
        }
    }
    Ok(())
}

fn print_file_extent(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
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
            w!(
                buf,
                "\t\tinline extent data size {} ram_bytes {} compression {} ({comp})\n",
                inline.len(),
                fe.ram_bytes,
                fe.compression
            );
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

fn print_chunk(buf: &mut Vec<u8>, c: &ChunkInfo) {
    w!(
        buf,
        "\t\tlength {} owner {} stripe_len {} type {}\n",
        c.length,
        c.owner,
        c.stripe_len,
        bg_flags_str(c.chunk_type)
    );
    w!(buf, "\t\tio_align {} io_width {} sector_size {}\n", c.io_align, c.io_width, c.sector_size);
    w!(buf, "\t\tnum_stripes {} sub_stripes {}\n", c.stripes.len(), c.sub_stripes);
    for (i, s) in c.stripes.iter().enumerate() {
        w!(buf, "\t\t\tstripe {i} devid {} offset {}\n", s.devid, s.offset);
        w!(buf, "\t\t\tdev_uuid {}\n", uuid_string(&s.dev_uuid));
    }
}

fn print_balance_args(buf: &mut Vec<u8>, a: &BalanceArgs) {
    let usage = a.usage.get();
    let limit = a.limit.get();
    w!(
        buf,
        "\t\tprofiles {} devid {} target {} flags {}\n",
        a.profiles.get(),
        a.devid.get(),
        a.target.get(),
        a.flags.get()
    );
    w!(
        buf,
        "\t\tusage_min {} usage_max {} pstart {} pend {}\n",
        usage as u32,
        (usage >> 32) as u32,
        a.pstart.get(),
        a.pend.get()
    );
    w!(
        buf,
        "\t\tvstart {} vend {} limit_min {} limit_max {}\n",
        a.vstart.get(),
        a.vend.get(),
        limit as u32,
        (limit >> 32) as u32
    );
    w!(buf, "\t\tstripes_min {} stripes_max {}\n", a.stripes_min.get(), a.stripes_max.get());
}

// ======================================================================
// dump-tree
// ======================================================================

/// How `dump_tree_with` walks a tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Traversal {
    /// Each node followed by its children, recursively (btrfs-progs `--dfs`).
    #[default]
    DepthFirst,
    /// Level by level from the root (btrfs-progs' default).
    BreadthFirst,
}

/// Print tree `tree` (or, with `None`, every tree) like `btrfs inspect-internal
/// dump-tree [-t ID] --dfs`.
///
/// `Some(1)` is the root tree, `Some(3)` the chunk tree, `Some(-6i64 as u64)`
/// the log root tree; any other id is looked up through its ROOT_ITEM(s) in
/// the root tree (subvolume ids too), printed under a `NAME tree key (...) `
/// line and followed by the `total bytes`/`bytes used`/`uuid` lines, as
/// btrfs-progs does; an id without a ROOT_ITEM is `Error::NotFound`. `None`
/// prints the root tree, the chunk tree, the log root tree if any, then every
/// tree that has a ROOT_ITEM in the root tree (and in the log root tree), then
/// the totals. Blocks that cannot be read print an `ERROR:`
/// line naming them and the dump goes on.
pub fn dump_tree(out: &mut dyn Write, fs: &Filesystem, tree: Option<u64>) -> Result<()> {
    dump_tree_with(out, fs, tree, Traversal::DepthFirst)
}

/// [`dump_tree`] with a choice of traversal order.
pub fn dump_tree_with(out: &mut dyn Write, fs: &Filesystem, tree: Option<u64>, order: Traversal) -> Result<()> {
    let d = Dumper { fs, ctx: DumpCtx::of(fs), order };
    let sb = &fs.sb;
    let root_start = TreeStart::from_ptr(fs.tree_root(ROOT_TREE_OBJECTID)?, false);
    let log_start = log_root_of(fs).map(|(bytenr, level)| TreeStart {
        bytenr,
        level: Some(level),
        owner: TREE_LOG_OBJECTID,
        allow_newer: true,
    });
    match tree {
        Some(ROOT_TREE_OBJECTID) => {
            out.write_all(b"root tree\n").map_err(out_err)?;
            d.print_tree(out, root_start, None)?;
        }
        Some(CHUNK_TREE_OBJECTID) => {
            out.write_all(b"chunk tree\n").map_err(out_err)?;
            d.print_tree(out, TreeStart::from_ptr(fs.tree_root(CHUNK_TREE_OBJECTID)?, false), None)?;
        }
        Some(TREE_LOG_OBJECTID) => {
            let Some(log) = log_start else {
                return Err(Error::NotFound("the filesystem has no log tree (log_root is 0)".into()));
            };
            out.write_all(b"log root tree\n").map_err(out_err)?;
            d.print_tree(out, log, None)?;
        }
        Some(id) => {
            let root = fs.tree_root(ROOT_TREE_OBJECTID)?;
            let items = fs.reader.range(&root, Key::new(id, ROOT_ITEM_KEY, 0), Key::new(id, ROOT_ITEM_KEY, u64::MAX))?;
            if items.is_empty() {
                return Err(Error::NotFound(format!("tree {id} has no ROOT_ITEM in the root tree")));
            }
            for (key, data) in items {
                d.print_rooted_tree(out, key, &data, false)?;
            }
            print_totals(out, sb)?;
        }
        None => {
            let mut roots = Vec::new();
            out.write_all(b"root tree\n").map_err(out_err)?;
            d.print_tree(out, root_start, Some(&mut roots))?;
            out.write_all(b"chunk tree\n").map_err(out_err)?;
            d.print_tree(out, TreeStart::from_ptr(fs.tree_root(CHUNK_TREE_OBJECTID)?, false), None)?;
            let mut log_roots = Vec::new();
            if let Some(log) = log_start {
                out.write_all(b"log root tree\n").map_err(out_err)?;
                d.print_tree(out, log, Some(&mut log_roots))?;
            }
            for (key, data) in roots {
                d.print_rooted_tree(out, key, &data, false)?;
            }
            for (key, data) in log_roots {
                d.print_rooted_tree(out, key, &data, true)?;
            }
            print_totals(out, sb)?;
        }
    }
    Ok(())
}

/// Where the log root tree starts, if there is one. A log sync (fsync) writes
/// only the primary superblock copy, so the mirrors carry the same generation
/// with `log_root` 0; when the chosen superblock has no log root, look at the
/// primary copies of the same generation.
fn log_root_of(fs: &Filesystem) -> Option<(u64, u8)> {
    let sb = &fs.sb;
    if sb.log_root.get() != 0 {
        return Some((sb.log_root.get(), sb.log_root_level));
    }
    for dev in fs.volume().devices.values() {
        let mut raw = vec![0u8; SUPER_INFO_SIZE];
        if dev.read_raw_at(SUPER_INFO_OFFSET, &mut raw).is_err() {
            continue;
        }
        if let Ok(p) = crate::format::superblock::parse_super(&raw) {
            if p.fsid == sb.fsid && p.generation.get() == sb.generation.get() && p.log_root.get() != 0 {
                return Some((p.log_root.get(), p.log_root_level));
            }
        }
    }
    None
}

/// The closing lines btrfs-progs prints after trees found through ROOT_ITEMs.
fn print_totals(out: &mut dyn Write, sb: &SuperBlock) -> Result<()> {
    let mut buf = Vec::new();
    w!(buf, "total bytes {}\n", sb.total_bytes.get());
    w!(buf, "bytes used {}\n", sb.bytes_used.get());
    w!(buf, "uuid {}\n", uuid_string(&sb.fsid));
    out.write_all(&buf).map_err(out_err)
}

/// Where a tree to print starts.
#[derive(Clone, Copy, Debug)]
struct TreeStart {
    bytenr: u64,
    /// Checked against the block when known.
    level: Option<u8>,
    owner: u64,
    /// Log trees are written after the superblock's generation.
    allow_newer: bool,
}

impl TreeStart {
    fn from_ptr(p: crate::tree::RootPtr, allow_newer: bool) -> Self {
        TreeStart { bytenr: p.bytenr, level: Some(p.level), owner: p.owner, allow_newer }
    }
}

struct Dumper<'a> {
    fs: &'a Filesystem,
    ctx: DumpCtx,
    order: Traversal,
}

/// A child still to print: where it is and what its parent says about it.
struct Pending {
    logical: u64,
    expect: Expect,
    parent: u64,
    slot: usize,
}

impl Dumper<'_> {
    fn read(&self, logical: u64, expect: Expect, owner: u64, allow_newer: bool) -> Result<Arc<TreeBlock>> {
        match self.fs.reader.read_block(logical, expect, Some(owner)) {
            Ok(b) => Ok(b),
            Err(e) if allow_newer => {
                let copies = self.fs.volume().num_copies(logical).unwrap_or(1);
                for mirror in 0..copies {
                    if let Ok(b) = self.fs.reader.read_copy(logical, mirror, expect) {
                        return Ok(Arc::new(b));
                    }
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// `NAME tree key (ID ROOT_ITEM OFFSET) ` and the tree a ROOT_ITEM points at.
    fn print_rooted_tree(&self, out: &mut dyn Write, key: Key, data: &[u8], allow_newer: bool) -> Result<()> {
        let mut buf = Vec::new();
        w!(buf, "{} tree {} \n", tree_label(key.objectid), key_str(&key));
        let ri = match items::parse_root_item(data) {
            Ok(ri) => ri,
            Err(e) => {
                w!(buf, "ERROR: cannot decode root item {}: {e}\n", key_str(&key));
                return out.write_all(&buf).map_err(out_err);
            }
        };
        out.write_all(&buf).map_err(out_err)?;
        let start = TreeStart { bytenr: ri.bytenr.get(), level: Some(ri.level), owner: key.objectid, allow_newer };
        self.print_tree(out, start, None)
    }

    /// Print every block of a tree. Leaves' ROOT_ITEMs go to `collect` when given.
    fn print_tree(
        &self,
        out: &mut dyn Write,
        start: TreeStart,
        mut collect: Option<&mut Vec<(Key, Vec<u8>)>>,
    ) -> Result<()> {
        let expect = Expect { level: start.level, generation: None, max_generation: None };
        let root = match self.read(start.bytenr, expect, start.owner, start.allow_newer) {
            Ok(b) => b,
            Err(e) => {
                let msg = format!(
                    "ERROR: failed to read root block {} of tree {}: {e}\n",
                    start.bytenr,
                    objectid_str(start.owner, 0)
                );
                return out.write_all(msg.as_bytes()).map_err(out_err);
            }
        };
        match self.order {
            Traversal::DepthFirst => self.dfs(out, &root, start, &mut collect),
            Traversal::BreadthFirst => self.bfs(out, root, start, &mut collect),
        }
    }

    fn emit(
        &self,
        out: &mut dyn Write,
        block: &TreeBlock,
        collect: &mut Option<&mut Vec<(Key, Vec<u8>)>>,
    ) -> Result<()> {
        let mut buf = Vec::with_capacity(self.ctx.nodesize as usize * 4);
        print_block(&mut buf, &self.ctx, block);
        out.write_all(&buf).map_err(out_err)?;
        if let Some(c) = collect.as_mut() {
            if block.is_leaf() {
                for i in 0..block.nritems() {
                    let k = block.key(i);
                    if k.item_type == ROOT_ITEM_KEY {
                        c.push((k, block.item_data(i).to_vec()));
                    }
                }
            }
        }
        Ok(())
    }

    fn children(&self, block: &TreeBlock) -> Vec<Pending> {
        if block.is_leaf() {
            return Vec::new();
        }
        (0..block.nritems())
            .map(|slot| {
                let (_, ptr, gen) = block.ptr(slot);
                Pending {
                    logical: ptr,
                    expect: Expect { level: Some(block.level() - 1), generation: Some(gen), max_generation: None },
                    parent: block.logical,
                    slot,
                }
            })
            .collect()
    }

    fn read_child(&self, out: &mut dyn Write, p: &Pending, start: TreeStart) -> Result<Option<Arc<TreeBlock>>> {
        match self.read(p.logical, p.expect, start.owner, start.allow_newer) {
            Ok(b) => Ok(Some(b)),
            Err(e) => {
                let msg = format!(
                    "ERROR: failed to read tree block {} (slot {} of node {}) in tree {}: {e}\n",
                    p.logical,
                    p.slot,
                    p.parent,
                    objectid_str(start.owner, 0)
                );
                out.write_all(msg.as_bytes()).map_err(out_err)?;
                Ok(None)
            }
        }
    }

    fn dfs(
        &self,
        out: &mut dyn Write,
        block: &TreeBlock,
        start: TreeStart,
        collect: &mut Option<&mut Vec<(Key, Vec<u8>)>>,
    ) -> Result<()> {
        self.emit(out, block, collect)?;
        for p in self.children(block) {
            if let Some(child) = self.read_child(out, &p, start)? {
                self.dfs(out, &child, start, collect)?;
            }
        }
        Ok(())
    }

    fn bfs(
        &self,
        out: &mut dyn Write,
        root: Arc<TreeBlock>,
        start: TreeStart,
        collect: &mut Option<&mut Vec<(Key, Vec<u8>)>>,
    ) -> Result<()> {
        self.emit(out, &root, collect)?;
        let mut queue: VecDeque<Pending> = self.children(&root).into();
        while let Some(p) = queue.pop_front() {
            if let Some(child) = self.read_child(out, &p, start)? {
                self.emit(out, &child, collect)?;
                queue.extend(self.children(&child));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use zerocopy::IntoBytes;

    const FSID: [u8; 16] = [7; 16];

    /// A leaf of `nodesize` bytes at logical 65536 with the given items,
    /// serialized by the tree layer's own leaf writer.
    fn leaf_with(items: &[(Key, Vec<u8>)], nodesize: usize) -> Vec<u8> {
        let fmt = crate::tree::leaf::BlockFormat::new(nodesize as u32, CsumType::Crc32c, FSID, [9; 16]).expect("format");
        let leaf = crate::tree::leaf::EditLeaf { items: items.to_vec() };
        leaf.to_bytes(&fmt, 65536, 3, 5).expect("leaf fits")
    }

    fn dump_leaf(items: &[(Key, Vec<u8>)]) -> String {
        let mut items = items.to_vec();
        items.sort_by_key(|(k, _)| *k);
        let raw = leaf_with(&items, 4096);
        let block = TreeBlock::parse(65536, raw, CsumType::Crc32c, &FSID, Expect::default()).expect("leaf parses");
        let ctx = DumpCtx { nodesize: 4096, sectorsize: 4096, csum_size: 4 };
        let mut buf = Vec::new();
        print_block(&mut buf, &ctx, &block);
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn inode_item(mode: u32, size: u64) -> Vec<u8> {
        let mut ii = <InodeItem as zerocopy::FromZeros>::new_zeroed();
        ii.generation = 3.into();
        ii.size = size.into();
        ii.nlink = 1.into();
        ii.mode = mode.into();
        ii.atime = Timespec::new(1_795_462_101, 5);
        ii.as_bytes().to_vec()
    }

    #[test]
    fn leaf_header_and_items() {
        let s = dump_leaf(&[
            (Key::new(256, INODE_ITEM_KEY, 0), inode_item(0o40755, 0)),
            (Key::new(256, INODE_REF_KEY, 256), {
                let mut v = InodeRef { index: 0.into(), name_len: 2.into() }.as_bytes().to_vec();
                v.extend_from_slice(b"..");
                v
            }),
        ]);
        let free = 4096 - 101 - 160 - 12 - 2 * 25;
        assert!(s.starts_with(&format!("leaf 65536 items 2 free space {free} generation 3 owner FS_TREE\n")), "{s}");
        assert!(s.contains("leaf 65536 flags 0x1(WRITTEN) backref revision 1\n"), "{s}");
        assert!(s.contains("fs uuid 07070707-0707-0707-0707-070707070707\n"), "{s}");
        assert!(s.contains("\titem 0 key (256 INODE_ITEM 0) itemoff 3835 itemsize 160\n"), "{s}");
        assert!(s.contains("\t\tblock group 0 mode 40755 links 1 uid 0 gid 0 rdev 0\n"), "{s}");
        assert!(s.contains("\t\tsequence 0 flags 0x0(none)\n"), "{s}");
        assert!(s.contains("\t\tatime 1795462101.5 (2026-11-23 19:28:21)\n"), "{s}");
        assert!(s.contains("\t\tctime 0.0 (1970-01-01 00:00:00)\n"), "{s}");
        assert!(s.contains("\titem 1 key (256 INODE_REF 256) itemoff 3823 itemsize 12\n\t\tindex 0 namelen 2 name: ..\n"), "{s}");
    }

    #[test]
    fn garbage_item_body_is_hex_dumped() {
        let s = dump_leaf(&[
            // Too short for an inode item.
            (Key::new(256, INODE_ITEM_KEY, 0), vec![0xde, 0xad, 0xbe, 0xef, b'A']),
            // A dir item whose name runs past the item.
            (Key::new(256, DIR_ITEM_KEY, 5), {
                let mut v = DirItem {
                    location: DiskKey::new(257, INODE_ITEM_KEY, 0),
                    transid: 7.into(),
                    data_len: 0.into(),
                    name_len: 200.into(),
                    dir_type: FT_REG_FILE,
                }
                .as_bytes()
                .to_vec();
                v.extend_from_slice(b"abc");
                v
            }),
            // An item type nobody knows.
            (Key::new(256, 90, 0), b"0123456789abcdefXYZ".to_vec()),
            // And a good item after them, still printed.
            (Key::new(257, ORPHAN_ITEM_KEY, 0), Vec::new()),
        ]);
        assert!(s.contains("\t\tERROR: cannot decode INODE_ITEM item: "), "{s}");
        assert!(s.contains("\t\t00000000  de ad be ef 41 "), "{s}");
        assert!(s.contains("|....A|"), "{s}");
        assert!(s.contains("\t\tERROR: cannot decode DIR_ITEM item: "), "{s}");
        assert!(s.contains("\titem 2 key (256 UNKNOWN.90 0) itemoff"), "{s}");
        assert!(s.contains("|0123456789abcdef|\n\t\t00000010  58 59 5a "), "{s}");
        assert!(!s.contains("ERROR: cannot decode UNKNOWN"), "unknown types are dumped, not errors: {s}");
        assert!(s.contains("\titem 3 key (257 ORPHAN_ITEM 0) itemoff"), "{s}");
        assert!(s.contains("\t\torphan item\n"), "{s}");
    }

    #[test]
    fn decodes_extent_file_and_root_items() {
        let mut ext = ExtentItem { refs: 1.into(), generation: 6.into(), flags: EXTENT_FLAG_DATA.into() }.as_bytes().to_vec();
        ext.push(EXTENT_DATA_REF_KEY);
        ext.extend_from_slice(
            ExtentDataRef { root: 5.into(), objectid: 257.into(), offset: 0.into(), count: 1.into() }.as_bytes(),
        );
        let mut meta = ExtentItem { refs: 1.into(), generation: 6.into(), flags: EXTENT_FLAG_TREE_BLOCK.into() }
            .as_bytes()
            .to_vec();
        meta.push(TREE_BLOCK_REF_KEY);
        meta.extend_from_slice(&2u64.to_le_bytes());
        let fe_reg = {
            let mut v = FileExtentHeader {
                generation: 8.into(),
                ram_bytes: 8192.into(),
                compression: COMPRESS_ZSTD,
                encryption: 0,
                other_encoding: 0.into(),
                extent_type: FILE_EXTENT_REG,
            }
            .as_bytes()
            .to_vec();
            v.extend_from_slice(
                FileExtentBody { disk_bytenr: 13631488.into(), disk_num_bytes: 4096.into(), offset: 0.into(), num_bytes: 8192.into() }
                    .as_bytes(),
            );
            v
        };
        let fe_inline = {
            let mut v = FileExtentHeader {
                generation: 8.into(),
                ram_bytes: 5.into(),
                compression: 0,
                encryption: 0,
                other_encoding: 0.into(),
                extent_type: FILE_EXTENT_INLINE,
            }
            .as_bytes()
            .to_vec();
            v.extend_from_slice(b"hello");
            v
        };
        let mut ri = <RootItem as zerocopy::FromZeros>::new_zeroed();
        ri.generation = 5.into();
        ri.generation_v2 = 5.into();
        ri.root_dirid = 256.into();
        ri.bytenr = 30425088.into();
        ri.refs = 1.into();
        ri.flags = ROOT_SUBVOL_RDONLY.into();
        let mut csum = vec![0u8; 4 * 3];
        csum[0] = 1;
        let s = dump_leaf(&[
            (Key::new(257, EXTENT_DATA_KEY, 0), fe_inline),
            (Key::new(257, EXTENT_DATA_KEY, 4096), fe_reg),
            (Key::new(258, ROOT_ITEM_KEY, 0), ri.as_bytes().to_vec()),
            (Key::new(13631488, EXTENT_ITEM_KEY, 4096), ext),
            (Key::new(30408704, METADATA_ITEM_KEY, 0), meta),
            (Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, 13631488), csum),
        ]);
        for want in [
            "\t\tgeneration 8 type 0 (inline)\n\t\tinline extent data size 5 ram_bytes 5 compression 0 (none)\n",
            "\t\tgeneration 8 type 1 (regular)\n\t\textent data disk byte 13631488 nr 4096\n\t\textent data offset 0 nr 8192 ram 8192\n\t\textent compression 3 (zstd)\n",
            "\t\tgeneration 5 root_dirid 256 bytenr 30425088 byte_limit 0 bytes_used 0\n\t\tlast_snapshot 0 flags 0x1(RDONLY) refs 1\n\t\tdrop_progress key (0 UNKNOWN.0 0) drop_level 0\n\t\tlevel 0 generation_v2 5\n\t\tuuid 00000000-0000-0000-0000-000000000000\n",
            "\t\trefs 1 gen 6 flags DATA\n\t\textent data backref root FS_TREE objectid 257 offset 0 count 1\n",
            "\t\trefs 1 gen 6 flags TREE_BLOCK\n\t\ttree block skinny level 0\n\t\ttree block backref root EXTENT_TREE\n",
            "\titem 5 key (EXTENT_CSUM EXTENT_CSUM 13631488) itemoff",
            "\t\trange start 13631488 end 13643776 length 12288\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(!s.contains("ERROR"), "{s}");
    }

    #[test]
    fn decodes_remaining_item_types() {
        let zeroed = |n: usize| vec![0u8; n];
        let mut balance = <BalanceItem as zerocopy::FromZeros>::new_zeroed();
        balance.flags = 3.into();
        balance.data.usage = ((90u64 << 32) | 10).into();
        let replace = DevReplaceItem {
            src_devid: 1.into(),
            cursor_left: 2.into(),
            cursor_right: 3.into(),
            cont_reading_from_srcdev_mode: 0.into(),
            replace_state: 2.into(),
            time_started: 4.into(),
            time_stopped: 5.into(),
            num_write_errors: 6.into(),
            num_uncorrectable_read_errors: 7.into(),
        };
        let verity = VerityDescriptorItem { size: 256.into(), reserved: [0.into(); 2], encryption: 0 };
        let mut xattr = DirItem {
            location: DiskKey::new(0, 0, 0),
            transid: 8.into(),
            data_len: 6.into(),
            name_len: 6.into(),
            dir_type: FT_XATTR,
        }
        .as_bytes()
        .to_vec();
        xattr.extend_from_slice(b"user.xab\0cde");
        let mut extref = InodeExtref { parent_objectid: 256.into(), index: 9.into(), name_len: 4.into() }.as_bytes().to_vec();
        extref.extend_from_slice(b"name");
        let mut rref = RootRef { dirid: 256.into(), sequence: 2.into(), name_len: 3.into() }.as_bytes().to_vec();
        rref.extend_from_slice(b"sub");
        let mut chunk = Chunk {
            length: (8u64 << 20).into(),
            owner: 2.into(),
            stripe_len: STRIPE_LEN.into(),
            chunk_type: (BLOCK_GROUP_SYSTEM | BLOCK_GROUP_DUP).into(),
            io_align: 65536.into(),
            io_width: 65536.into(),
            sector_size: 4096.into(),
            num_stripes: 1.into(),
            sub_stripes: 1.into(),
        }
        .as_bytes()
        .to_vec();
        chunk.extend_from_slice(Stripe { devid: 1.into(), offset: 22020096.into(), dev_uuid: [0x11; 16] }.as_bytes());
        let mut fsh = DiskKey::new(256, INODE_ITEM_KEY, 0).as_bytes().to_vec();
        for v in [7u64, 3, 1] {
            fsh.extend_from_slice(&v.to_le_bytes());
        }
        let s = dump_leaf(&[
            (Key::new(0, DEV_STATS_OBJECTID as u8, 0), Vec::new()),
            (Key::new(0, PERSISTENT_ITEM_KEY, 1), zeroed(40)),
            (Key::new(0, DEV_REPLACE_KEY, 0), replace.as_bytes().to_vec()),
            (Key::new(1, DEV_ITEM_KEY, 1), zeroed(98)),
            (Key::new(1, DEV_EXTENT_KEY, 1 << 20), zeroed(48)),
            // Qgroup status as kernels before 6.7 wrote it: 32 bytes.
            (Key::new(0, QGROUP_STATUS_KEY, 0), {
                let mut v = zeroed(32);
                v[0] = 1;
                v[16] = 1;
                v
            }),
            (Key::new(256, INODE_EXTREF_KEY, 77), extref),
            (Key::new(256, XATTR_ITEM_KEY, 5), xattr),
            (Key::new(256, VERITY_DESC_ITEM_KEY, 0), verity.as_bytes().to_vec()),
            (Key::new(256, ROOT_REF_KEY, 257), rref),
            (Key::new(256, CHUNK_ITEM_KEY, 22020096), chunk),
            (Key::new(1 << 20, BLOCK_GROUP_ITEM_KEY, 8 << 20), {
                BlockGroupItem { used: 4096.into(), chunk_objectid: 256.into(), flags: BLOCK_GROUP_DATA.into() }.as_bytes().to_vec()
            }),
            (Key::new(1 << 20, FREE_SPACE_INFO_KEY, 8 << 20), FreeSpaceInfo { extent_count: 1.into(), flags: 1.into() }.as_bytes().to_vec()),
            (Key::new(1 << 20, FREE_SPACE_BITMAP_KEY, 8 << 20), zeroed(64)),
            (Key::new(BALANCE_OBJECTID, TEMPORARY_ITEM_KEY, 0), balance.as_bytes().to_vec()),
            (Key::new(FREE_SPACE_OBJECTID, 0, 1 << 20), fsh),
            (Key::new(0x1234, UUID_KEY_SUBVOL, 0x5678), 257u64.to_le_bytes().to_vec()),
            (Key::new(u64::MAX - 100, STRING_ITEM_KEY, 0), b"a string".to_vec()),
        ]);
        for want in [
            "\titem 0 key (0 UNKNOWN.0 0) itemoff 3995 itemsize 0\n\titem 1",
            "\t\tpersistent item objectid DEV_STATS offset 1\n\t\tdevice stats\n\t\twrite_errs 0 read_errs 0 flush_errs 0 corruption_errs 0 generation 0\n",
            "\t\tsrc devid 1 cursor left 2 cursor right 3 cont reading from srcdev mode 0\n\t\treplace state 2 time started 4 time stopped 5\n",
            "\t\tdevid 0 total_bytes 0 bytes_used 0\n\t\tio_align 0 io_width 0 sector_size 0 type 0\n",
            "\t\tdev extent chunk_tree 0\n\t\tchunk_objectid 0 chunk_offset 0 length 0\n",
            "\t\tversion 1 generation 0 flags ON scan 0\n",
            "\t\tindex 9 parent 256 namelen 4 name: name\n",
            "\t\tlocation key (0 UNKNOWN.0 0) type XATTR\n\t\ttransid 8 data_len 6 name_len 6\n\t\tname: user.x\n\t\tdata ab\n",
            "\t\tverity descriptor size 256 encryption 0\n",
            "\t\troot ref key dirid 256 sequence 2 name sub\n",
            "\t\tlength 8388608 owner 2 stripe_len 65536 type SYSTEM|DUP\n\t\tio_align 65536 io_width 65536 sector_size 4096\n\t\tnum_stripes 1 sub_stripes 1\n\t\t\tstripe 0 devid 1 offset 22020096\n\t\t\tdev_uuid 11111111-1111-1111-1111-111111111111\n",
            "\t\tblock group used 4096 chunk_objectid 256 flags DATA|single\n",
            "\t\tfree space info extent count 1 flags 1\n",
            "\t\tfree space bitmap\n",
            "\t\ttemporary item objectid BALANCE offset 0\n\t\tbalance status flags 3\n\t\tDATA\n\t\tprofiles 0 devid 0 target 0 flags 0\n\t\tusage_min 10 usage_max 90 pstart 0 pend 0\n",
            " key (FREE_SPACE UNTYPED 1048576) itemoff",
            "\t\tlocation key (256 INODE_ITEM 0)\n\t\tcache generation 7 entries 3 bitmaps 1\n",
            "key (0x0000000000001234 UUID_KEY_SUBVOL 0x0000000000005678) itemoff",
            "\t\tsubvol_id 257\n",
            "\t\titem data a string\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(!s.contains("ERROR"), "{s}");
    }

    #[test]
    fn print_item_never_panics_on_random_bodies() {
        // xorshift: deterministic, no extra dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let ctx = DumpCtx { nodesize: 16384, sectorsize: 4096, csum_size: 4 };
        for t in 0..=255u8 {
            for round in 0..40 {
                let len = (next() % 600) as usize;
                let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if round % 4 == 0 && !body.is_empty() {
                    // Plausible small lengths in the usual places.
                    body[0] = 1;
                    for b in body.iter_mut().skip(8).take(12) {
                        *b = 0;
                    }
                }
                let objectid = [0, 1, 5, 256, FREE_SPACE_OBJECTID, BALANCE_OBJECTID, u64::MAX][round % 7];
                let key = Key::new(objectid, t, next() % 3);
                let mut buf = Vec::new();
                print_item(&mut buf, &ctx, key, &body);
            }
        }
        assert!(utc_datetime(i64::MIN).contains('-'));
        assert!(utc_datetime(i64::MAX).contains(':'));
    }

    #[test]
    fn key_strings_match_btrfs_progs() {
        assert_eq!(key_str(&Key::new(FS_TREE_OBJECTID, ROOT_ITEM_KEY, u64::MAX)), "key (FS_TREE ROOT_ITEM 18446744073709551615)");
        assert_eq!(key_str(&Key::new(256, INODE_ITEM_KEY, u64::MAX)), "key (256 INODE_ITEM -1)");
        assert_eq!(key_str(&Key::new(1, DEV_ITEM_KEY, 1)), "key (DEV_ITEMS DEV_ITEM 1)");
        assert_eq!(key_str(&Key::new(256, CHUNK_ITEM_KEY, 1)), "key (FIRST_CHUNK_TREE CHUNK_ITEM 1)");
        assert_eq!(key_str(&Key::new(1, DEV_EXTENT_KEY, 1)), "key (1 DEV_EXTENT 1)");
        assert_eq!(key_str(&Key::new(0, PERSISTENT_ITEM_KEY, 1)), "key (DEV_STATS PERSISTENT_ITEM 1)");
        assert_eq!(key_str(&Key::new(0, QGROUP_INFO_KEY, 5)), "key (0 QGROUP_INFO 0/5)");
        assert_eq!(key_str(&Key::new(1 << 48, QGROUP_RELATION_KEY, 5)), "key (1/0 QGROUP_RELATION 0/5)");
        assert_eq!(key_str(&Key::new(FREE_SPACE_OBJECTID, 0, 5)), "key (FREE_SPACE UNTYPED 5)");
        assert_eq!(key_str(&Key::new(TREE_RELOC_OBJECTID, ROOT_ITEM_KEY, 5)), "key (TREE_RELOC ROOT_ITEM FS_TREE)");
        assert_eq!(
            key_str(&Key::new(0x944b889f0e5b3e9a, UUID_KEY_SUBVOL, 0x6a9c26937c98a696)),
            "key (0x944b889f0e5b3e9a UUID_KEY_SUBVOL 0x6a9c26937c98a696)"
        );
        assert_eq!(key_str(&Key::new(u64::MAX, 0, 0)), "key (-1 UNKNOWN.0 0)");
        assert_eq!(bg_flags_str(BLOCK_GROUP_DATA | BLOCK_GROUP_METADATA), "DATA|METADATA|single");
        assert_eq!(bg_flags_str(BLOCK_GROUP_SYSTEM | BLOCK_GROUP_DUP), "SYSTEM|DUP");
        assert_eq!(utc_datetime(0), "1970-01-01 00:00:00");
        assert_eq!(utc_datetime(951_782_400), "2000-02-29 00:00:00");
    }

    // ---- tests on images made by mkfs.btrfs ----

    fn have_mkfs() -> bool {
        Command::new("mkfs.btrfs").arg("--version").output().is_ok_and(|o| o.status.success())
    }

    fn mkfs(dir: &Path, name: &str, extra: &[&str]) -> Option<PathBuf> {
        if !have_mkfs() {
            eprintln!("mkfs.btrfs not installed: skipping");
            return None;
        }
        let p = dir.join(name);
        crate::volumes::raw::set_len(&p, 300 << 20).unwrap();
        let st = Command::new("mkfs.btrfs").arg("-q").arg("-f").args(extra).arg(&p).output().unwrap();
        assert!(st.status.success(), "mkfs.btrfs failed: {}", String::from_utf8_lossy(&st.stderr));
        Some(p)
    }

    fn open_fs(p: &Path) -> Filesystem {
        let opts = crate::volumes::OpenOptions { image: p.to_path_buf(), ..Default::default() };
        Filesystem::open(&opts).unwrap()
    }

    /// Output of btrfs-progs, when the reference version (6.2) is installed:
    /// other versions word some lines differently.
    fn progs(args: &[&str]) -> Option<String> {
        let v = Command::new("btrfs").arg("--version").output().ok()?;
        if !String::from_utf8_lossy(&v.stdout).starts_with("btrfs-progs v6.2\n") {
            eprintln!("btrfs-progs 6.2 not installed: not comparing with it");
            return None;
        }
        let o = Command::new("btrfs").env("TZ", "UTC").args(args).output().ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    #[test]
    fn super_of_fresh_image() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = mkfs(dir.path(), "a.img", &["-L", "lbl"]) else { return };
        let dev = Device::open(&img, false).unwrap();
        let mut out = Vec::new();
        dump_super(&mut out, &dev, false, false).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains(&format!("fsid\t\t\t{}\n", uuid_string(&dev.sb.fsid))), "{s}");
        assert!(s.contains("csum_type\t\t0 (crc32c)\n"), "{s}");
        assert!(s.contains("csum_size\t\t4\n"), "{s}");
        assert!(s.contains(" [match]\n"), "{s}");
        assert!(s.contains("magic\t\t\t_BHRfS_M [match]\n"), "{s}");
        assert!(s.contains("label\t\t\tlbl\n"), "{s}");
        assert!(s.contains("\titem 0 key (FIRST_CHUNK_TREE CHUNK_ITEM "), "{s}");
        assert!(!s.contains("DON'T MATCH"), "{s}");
        // Same text as btrfs-progs' `dump-super -f`, when it is installed.
        if let Some(want) = progs(&["inspect-internal", "dump-super", "-f", img.to_str().unwrap()]) {
            assert_eq!(s, want);
        }
    }

    #[test]
    fn super_all_json_flags_corrupt_copy() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = mkfs(dir.path(), "a.img", &[]) else { return };
        // Damage the second copy (64 MiB) inside the checksummed area.
        crate::volumes::raw::patch(&img, (64 << 20) + 200, b"XXXX").unwrap();
        let dev = Device::open(&img, false).unwrap();
        let mut out = Vec::new();
        dump_super(&mut out, &dev, true, true).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let arr = v.as_array().expect("array for --all");
        assert_eq!(arr.len(), 2, "300 MiB image holds two copies");
        assert_eq!(arr[0]["offset"], 65536);
        assert_eq!(arr[0]["csum_ok"], true);
        assert_eq!(arr[0]["magic_ok"], true);
        assert_eq!(arr[0]["fsid"], uuid_string(&dev.sb.fsid));
        assert_eq!(arr[0]["csum_type_name"], "crc32c");
        assert!(arr[0]["incompat_flags"]["names"].as_array().unwrap().iter().any(|n| n == "NO_HOLES"));
        assert!(arr[0]["sys_chunk_array"][0]["stripes"].as_array().is_some());
        assert_eq!(arr[1]["offset"], 64u64 << 20);
        assert_eq!(arr[1]["csum_ok"], false);
        assert_eq!(arr[1]["magic_ok"], true);

        // Bad magic: still printed, with its verdict, in text and JSON.
        crate::volumes::raw::patch(&img, (64 << 20) + 64, b"NOTBTRFS").unwrap();
        let mut out = Vec::new();
        dump_super(&mut out, &dev, true, false).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("superblock: bytenr=67108864, device="), "{s}");
        assert!(s.contains("ERROR: bad magic on superblock on "), "{s}");
        assert!(s.contains("magic\t\t\tNOTBTRFS [DON'T MATCH]\n"), "{s}");
        let mut out = Vec::new();
        dump_super(&mut out, &dev, true, true).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[1]["magic_ok"], false);
        assert_eq!(v[0]["magic_ok"], true);
    }

    #[test]
    fn root_tree_lists_root_items() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = mkfs(dir.path(), "a.img", &[]) else { return };
        let fs = open_fs(&img);
        let mut out = Vec::new();
        dump_tree(&mut out, &fs, Some(ROOT_TREE_OBJECTID)).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("root tree\nleaf "), "{s}");
        for k in ["(EXTENT_TREE ROOT_ITEM 0)", "(DEV_TREE ROOT_ITEM 0)", "(FS_TREE ROOT_ITEM 0)", "(CSUM_TREE ROOT_ITEM 0)"] {
            assert!(s.contains(k), "missing {k} in\n{s}");
        }
        assert!(s.contains("location key (FS_TREE ROOT_ITEM 18446744073709551615) type DIR"), "{s}");
        assert!(!s.contains("ERROR"), "{s}");
    }

    #[test]
    fn whole_dump_matches_btrfs_progs() {
        let dir = tempfile::tempdir().unwrap();
        for (name, extra) in [("a.img", &[][..]), ("x.img", &["--csum", "xxhash", "-O", "^skinny-metadata"][..])] {
            let Some(img) = mkfs(dir.path(), name, extra) else { return };
            let fs = open_fs(&img);
            let mut out = Vec::new();
            dump_tree(&mut out, &fs, None).unwrap();
            let s = String::from_utf8(out).unwrap();
            for want in ["root tree\n", "chunk tree\n", "extent tree key (EXTENT_TREE ROOT_ITEM 0) \n", "total bytes 314572800\n"] {
                assert!(s.contains(want), "missing {want:?} in\n{s}");
            }
            assert!(!s.contains("ERROR"), "{s}");
            if let Some(want) = progs(&["inspect-internal", "dump-tree", "--dfs", img.to_str().unwrap()]) {
                let want = want.split_once('\n').map(|(_, rest)| rest).unwrap_or("");
                assert_eq!(s, want, "{name}");
            }
            let mut out = Vec::new();
            dump_tree_with(&mut out, &fs, Some(FS_TREE_OBJECTID), Traversal::BreadthFirst).unwrap();
            let s = String::from_utf8(out).unwrap();
            assert!(s.starts_with("fs tree key (FS_TREE ROOT_ITEM 0) \nleaf "), "{s}");
            assert!(matches!(dump_tree(&mut Vec::new(), &fs, Some(4242)), Err(Error::NotFound(_))));
        }
    }
}
