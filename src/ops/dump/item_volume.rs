//! Items about devices and chunks: chunks, device items and extents,
//! device replace, device stats (persistent items), balance (temporary items).

use std::io::Write;

use super::body::need;
use super::names::{bg_flags_str, objectid_str};
use super::text::hex_dump;
use crate::error::{CorruptKind, Error, Result};
use crate::format::items::{self, ChunkInfo};
use crate::format::ondisk::*;
use crate::format::types::uuid_string;
use crate::format::Key;

pub(super) fn print_chunk(buf: &mut Vec<u8>, c: &ChunkInfo) {
    w!(buf, "\t\tlength {} owner {} stripe_len {} type {}\n", c.length, c.owner, c.stripe_len, bg_flags_str(c.chunk_type));
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
    w!(buf, "\t\tprofiles {} devid {} target {} flags {}\n", a.profiles.get(), a.devid.get(), a.target.get(), a.flags.get());
    w!(buf, "\t\tusage_min {} usage_max {} pstart {} pend {}\n", usage as u32, (usage >> 32) as u32, a.pstart.get(), a.pend.get());
    w!(buf, "\t\tvstart {} vend {} limit_min {} limit_max {}\n", a.vstart.get(), a.vend.get(), limit as u32, (limit >> 32) as u32);
    w!(buf, "\t\tstripes_min {} stripes_max {}\n", a.stripes_min.get(), a.stripes_max.get());
}

pub(super) fn dev_item(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
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
    w!(buf, "\t\tgeneration {} start_offset {} dev_group {}\n", d.generation.get(), d.start_offset.get(), d.dev_group.get());
    w!(buf, "\t\tseek_speed {} bandwidth {}\n", d.seek_speed, d.bandwidth);
    w!(buf, "\t\tuuid {}\n\t\tfsid {}\n", uuid_string(&d.uuid), uuid_string(&d.fsid));
    Ok(())
}

pub(super) fn dev_extent(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    let de: DevExtent = need(data, "dev extent")?;
    w!(buf, "\t\tdev extent chunk_tree {}\n", de.chunk_tree.get());
    w!(buf, "\t\tchunk_objectid {} chunk_offset {} length {}\n", de.chunk_objectid.get(), de.chunk_offset.get(), de.length.get());
    w!(buf, "\t\tchunk_tree_uuid {}\n", uuid_string(&de.chunk_tree_uuid));
    Ok(())
}

pub(super) fn dev_replace(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    let r: DevReplaceItem = need(data, "dev replace item")?;
    w!(
        buf,
        "\t\tsrc devid {} cursor left {} cursor right {} cont reading from srcdev mode {}\n",
        r.src_devid.get(),
        r.cursor_left.get(),
        r.cursor_right.get(),
        r.cont_reading_from_srcdev_mode.get()
    );
    w!(buf, "\t\treplace state {} time started {} time stopped {}\n", r.replace_state.get(), r.time_started.get(), r.time_stopped.get());
    w!(buf, "\t\tnum write errors {} num uncorrectable read errors {}\n", r.num_write_errors.get(), r.num_uncorrectable_read_errors.get());
    Ok(())
}

/// PERSISTENT_ITEM: device stats, or an unknown persistent item.
pub(super) fn persistent_item(buf: &mut Vec<u8>, key: Key, data: &[u8]) -> Result<()> {
    w!(buf, "\t\tpersistent item objectid {} offset {}\n", objectid_str(key.objectid, PERSISTENT_ITEM_KEY), key.offset);
    if key.objectid == DEV_STATS_OBJECTID {
        let v = items::parse_u64_array(data, "dev stats")?;
        if v.len() < DEV_STAT_VALUES_MAX {
            return Err(Error::corrupt(CorruptKind::ItemSize, "dev stats", format!("{} values, need {DEV_STAT_VALUES_MAX}", v.len())));
        }
        w!(buf, "\t\tdevice stats\n");
        w!(buf, "\t\twrite_errs {} read_errs {} flush_errs {} corruption_errs {} generation {}\n", v[0], v[1], v[2], v[3], v[4]);
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
    Ok(())
}

/// TEMPORARY_ITEM: the balance item, or an unknown temporary item.
pub(super) fn temporary_item(buf: &mut Vec<u8>, key: Key, data: &[u8]) -> Result<()> {
    w!(buf, "\t\ttemporary item objectid {} offset {}\n", objectid_str(key.objectid, TEMPORARY_ITEM_KEY), key.offset);
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
    Ok(())
}
