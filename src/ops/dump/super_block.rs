//! `dump-super`: every field of a superblock copy as btrfs-progs'
//! `dump-super -f` prints it, or the same fields as JSON, with the verdicts
//! on its checksum, magic and location.

use std::io::Write;

use serde_json::{json, Map, Value};
use zerocopy::FromBytes;

use super::item_volume::print_chunk;
use super::names::{bg_flags_str, key_str};
use super::out_err;
use super::text::{hex, printable};
use crate::error::Result;
use crate::format::items::{self, ChunkInfo};
use crate::format::ondisk::*;
use crate::format::superblock::{compat_ro_names, incompat_names, super_flag_names};
use crate::format::types::uuid_string;
use crate::format::{CsumType, Key};
use crate::volumes::Device;

/// Which superblock copies `dump-super` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copies {
    /// The primary (64 KiB).
    Primary,
    /// Copy N: 0 at 64 KiB, 1 at 64 MiB, 2 at 256 GiB (progs' `-s N`).
    Mirror(usize),
    /// Every copy location that fits on the device (progs' `-a`).
    All,
}

/// Print the superblock of `dev` like `btrfs inspect-internal dump-super -f`.
///
/// `Copies::All`: every copy location (64 KiB, 64 MiB, 256 GiB) that fits
/// on the device, each with its own checksum and magic verdict; a damaged
/// copy is still printed as far as it goes. A copy without the btrfs magic
/// stops the text dump after its header with an error, as progs does,
/// unless `force`. `json`: an array with one JSON object per copy printed
/// (one shape whichever copies: `[0]` is the only one without `All`), with
/// the same fields, plus `offset`, `csum_ok`, `magic_ok` and `bytenr_ok`,
/// every copy's verdict; refused without `force` only when no copy read has
/// the magic (not a btrfs image).
pub fn dump_super(out: &mut dyn Write, dev: &Device, copies: Copies, json: bool, force: bool) -> Result<()> {
    let all = copies == Copies::All;
    let offsets: Vec<u64> = match copies {
        Copies::All => SUPER_MIRROR_OFFSETS.iter().copied().filter(|&o| o + SUPER_INFO_SIZE as u64 <= dev.size).collect(),
        Copies::Primary => vec![SUPER_INFO_OFFSET],
        Copies::Mirror(n) => {
            let o = *SUPER_MIRROR_OFFSETS
                .get(n)
                .ok_or_else(|| crate::error::Error::Invalid(format!("superblock copy {n}: there are copies 0, 1 and 2")))?;
            // Past the end of the device: nothing to print, as progs (JSON: no copy).
            if o + SUPER_INFO_SIZE as u64 > dev.size {
                if json {
                    out.write_all(b"[]\n").map_err(out_err)?;
                }
                return Ok(());
            }
            vec![o]
        }
    };
    let bad_magic = |path: &str, offset: u64| {
        crate::error::Error::Invalid(format!("bad magic on superblock on {path} at {offset} (use --force to dump it anyway)"))
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
                if read_super_struct(&raw).magic != BTRFS_MAGIC && !force {
                    out.write_all(&buf).map_err(out_err)?;
                    return Err(bad_magic(&path, offset));
                }
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
        if !force && !values.iter().any(|v| v["magic_ok"] == true) {
            return Err(bad_magic(&path, offsets.first().copied().unwrap_or(SUPER_INFO_OFFSET)));
        }
        serde_json::to_writer_pretty(&mut *out, &Value::Array(values)).map_err(|e| out_err(e.into()))?;
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

/// Checksum names as dump-super prints them, `INVALID` for an unknown type.
fn csum_name(t: Option<CsumType>) -> &'static str {
    t.map_or("INVALID", CsumType::name)
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
    print_readable_flags(buf, flags, &super_flag_names(flags));
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
    w!(buf, "dev_item.fsid\t\t{} {}\n", uuid_string(&d.fsid), if d.fsid == meta_uuid { "[match]" } else { "[DON'T MATCH]" });
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
    print_backup_roots(buf, &sb, inc & INCOMPAT_EXTENT_TREE_V2 != 0);
}

/// The backup root slots in use; `v2`: extent tree v2, whose slot holds the
/// block group root where the extent root was.
fn print_backup_roots(buf: &mut Vec<u8>, sb: &SuperBlock, v2: bool) {
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
    let sys = sys_array_json(&chunks);
    let backups = backup_roots_json(&sb);
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
    put("flags", flags_json(flags, super_flag_names(flags)));
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
    put(
        "compat_flags",
        flags_json(
            sb.compat_flags.get(),
            if sb.compat_flags.get() != 0 { vec![format!("unknown flag: {:#x}", sb.compat_flags.get())] } else { Vec::new() },
        ),
    );
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

fn sys_array_json(chunks: &[(Key, ChunkInfo)]) -> Vec<Value> {
    chunks
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
        .collect()
}

/// The backup root slots in use.
fn backup_roots_json(sb: &SuperBlock) -> Vec<Value> {
    sb.super_roots
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{mkfs, progs};
    use super::*;

    #[test]
    fn super_of_fresh_image() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = mkfs(dir.path(), "a.img", &["-L", "lbl"]) else { return };
        let dev = Device::open(&img, false).unwrap();
        let mut out = Vec::new();
        dump_super(&mut out, &dev, Copies::Primary, false, false).unwrap();
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
        dump_super(&mut out, &dev, Copies::All, true, false).unwrap();
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

        // Bad magic: the text dump stops there with progs' error, unless
        // forced; then it is printed with its verdict, in text and JSON.
        crate::volumes::raw::patch(&img, (64 << 20) + 64, b"NOTBTRFS").unwrap();
        let mut out = Vec::new();
        let e = dump_super(&mut out, &dev, Copies::All, false, false).unwrap_err();
        assert!(e.to_string().contains("bad magic on superblock on ") && e.to_string().contains("--force"), "{e}");
        let s = String::from_utf8(out).unwrap();
        let tail = format!(
            "superblock: bytenr=67108864, device={}\n---------------------------------------------------------\n",
            dev.path.display()
        );
        assert!(s.ends_with(&tail), "{s}");
        let mut out = Vec::new();
        dump_super(&mut out, &dev, Copies::Mirror(1), false, true).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("superblock: bytenr=67108864, device="), "{s}");
        assert!(s.contains("ERROR: bad magic on superblock on "), "{s}");
        assert!(s.contains("magic\t\t\tNOTBTRFS [DON'T MATCH]\n"), "{s}");
        let mut out = Vec::new();
        dump_super(&mut out, &dev, Copies::All, true, false).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[1]["magic_ok"], false);
        assert_eq!(v[0]["magic_ok"], true);
        // One shape: an array of the copies printed, one of them or none.
        for (copies, n) in [(Copies::Primary, 1), (Copies::Mirror(0), 1), (Copies::Mirror(2), 0)] {
            let mut out = Vec::new();
            dump_super(&mut out, &dev, copies, true, false).unwrap();
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v.as_array().map(Vec::len), Some(n), "{copies:?}");
        }
    }
}
