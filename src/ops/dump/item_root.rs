//! Items of the root tree, the quota tree and the uuid tree: root items
//! and refs, qgroups, received/subvolume uuids, strings.

use std::io::Write;

use super::body::{need, padded};
use super::names::key_str;
use super::text::{c_str, time_str};
use crate::error::Result;
use crate::format::items;
use crate::format::ondisk::*;
use crate::format::types::uuid_string;
use crate::format::Key;

pub(super) fn print_root_item(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
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

/// ROOT_REF and ROOT_BACKREF.
/// Names print under --hide-names too, as btrfs-progs prints them.
pub(super) fn root_ref(buf: &mut Vec<u8>, key: Key, data: &[u8]) -> Result<()> {
    let r = items::parse_root_ref(data)?;
    let tag = if key.item_type == ROOT_REF_KEY { "ref" } else { "backref" };
    w!(buf, "\t\troot {tag} key dirid {} sequence {} name ", r.dirid, r.sequence);
    buf.extend_from_slice(c_str(&r.name, NAME_LEN));
    w!(buf, "\n");
    Ok(())
}

pub(super) fn qgroup_status(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
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
    w!(buf, "\t\tversion {} generation {} flags {fs} scan {}\n", s.version.get(), s.generation.get(), s.rescan.get());
    Ok(())
}

pub(super) fn qgroup_info(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    let q: QgroupInfoItem = need(data, "qgroup info")?;
    w!(buf, "\t\tgeneration {}\n", q.generation.get());
    w!(buf, "\t\treferenced {} referenced_compressed {}\n", q.rfer.get(), q.rfer_cmpr.get());
    w!(buf, "\t\texclusive {} exclusive_compressed {}\n", q.excl.get(), q.excl_cmpr.get());
    Ok(())
}

pub(super) fn qgroup_limit(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    let q: QgroupLimitItem = need(data, "qgroup limit")?;
    w!(buf, "\t\tflags {:x}\n", q.flags.get());
    w!(buf, "\t\tmax_referenced {} max_exclusive {}\n", q.max_rfer.get() as i64, q.max_excl.get() as i64);
    w!(buf, "\t\trsv_referenced {} rsv_exclusive {}\n", q.rsv_rfer.get() as i64, q.rsv_excl.get() as i64);
    Ok(())
}

/// UUID_KEY_SUBVOL and UUID_KEY_RECEIVED_SUBVOL: subvolume ids.
pub(super) fn uuid_item(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    for id in items::parse_u64_array(data, "uuid item")? {
        w!(buf, "\t\tsubvol_id {id}\n");
    }
    Ok(())
}

pub(super) fn string_item(buf: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    w!(buf, "\t\titem data ");
    buf.extend_from_slice(c_str(data, data.len()));
    w!(buf, "\n");
    Ok(())
}
