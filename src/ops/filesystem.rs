//! `btrs filesystem show` and `df`: what `btrfs filesystem show` prints for
//! an unmounted device and `btrfs filesystem df` for a mounted filesystem,
//! from the superblock, the dev items and the block group items.

use std::io::Write;

use serde::Serialize;

use crate::error::{CorruptKind, Error, Result};
use crate::format::items::read_prefix;
use crate::format::types::uuid_string;
use crate::format::*;
use crate::fs::Filesystem;

/// One device as `filesystem show` lists it.
#[derive(Serialize, Debug)]
pub struct ShowDevice {
    pub devid: u64,
    /// The device's size (its dev item's total_bytes).
    pub size: u64,
    /// Bytes allocated to chunk stripes on it (its dev item's bytes_used).
    pub used: u64,
    /// The image file; None when the device is missing.
    pub path: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct Show {
    pub label: Option<String>,
    pub uuid: String,
    pub total_devices: u64,
    /// The superblock's bytes_used: bytes in allocated extents.
    pub bytes_used: u64,
    pub devices: Vec<ShowDevice>,
    pub missing: bool,
}

pub fn show(fs: &Filesystem) -> Result<Show> {
    let sb = &fs.sb;
    let label = sb.label.iter().position(|&b| b == 0).map_or(&sb.label[..], |n| &sb.label[..n]);
    let vol = fs.volume();
    let devices = fs
        .dev_items()?
        .into_iter()
        .map(|(devid, d)| ShowDevice {
            devid,
            size: d.total_bytes.get(),
            used: d.bytes_used.get(),
            // The absolute path, as progs prints it.
            path: vol
                .devices
                .get(&devid)
                .map(|dev| std::fs::canonicalize(&dev.path).unwrap_or_else(|_| dev.path.clone()).display().to_string()),
        })
        .collect::<Vec<_>>();
    Ok(Show {
        label: (!label.is_empty()).then(|| String::from_utf8_lossy(label).into_owned()),
        uuid: uuid_string(&sb.fsid),
        total_devices: sb.num_devices.get(),
        bytes_used: sb.bytes_used.get(),
        missing: devices.iter().any(|d| d.path.is_none()),
        devices,
    })
}

/// `btrfs filesystem show`'s text (its default, binary units).
pub fn print_show(s: &Show, raw: bool, out: &mut dyn Write) -> Result<()> {
    let size = |b: u64| if raw { b.to_string() } else { pretty_size(b) };
    let mut t = match &s.label {
        Some(l) => format!("Label: '{l}'  uuid: {}\n", s.uuid),
        None => format!("Label: none  uuid: {}\n", s.uuid),
    };
    t.push_str(&format!("\tTotal devices {} FS bytes used {}\n", s.total_devices, size(s.bytes_used)));
    for d in s.devices.iter().filter(|d| d.path.is_some()) {
        let path = d.path.as_deref().unwrap_or_default();
        t.push_str(&format!("\tdevid {:>4} size {} used {} path {path}\n", d.devid, size(d.size), size(d.used)));
    }
    if s.missing {
        t.push_str("\t*** Some devices missing\n");
    }
    t.push('\n');
    out.write_all(t.as_bytes()).map_err(|e| Error::io("<stdout>", "write", e))
}

/// One `filesystem df` line: a block group type and profile.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct DfRow {
    /// Data, System, Metadata or Data+Metadata.
    pub kind: &'static str,
    /// progs' profile name: single, DUP, RAID0, RAID1, RAID10, RAID1C3, ...
    pub profile: &'static str,
    /// Logical bytes of the block groups.
    pub total: u64,
    /// Logical bytes used in them.
    pub used: u64,
}

/// The kernel's space info order: by type (data, system, metadata,
/// mixed), then by its RAID index (raid10, raid1, dup, raid0, single,
/// raid5, raid6, raid1c3, raid1c4), as the SPACE_INFO ioctl returns them.
pub fn df(fs: &Filesystem) -> Result<Vec<DfRow>> {
    df_rows(&classified(fs)?)
}

/// Block groups as (chunk start, (type index, RAID index), length, used);
/// type bits or profile bits no block group can have are errors.
type Classified = Vec<(u64, (u8, u8), u64, u64)>;

fn classified(fs: &Filesystem) -> Result<Classified> {
    fs.block_groups()?
        .into_iter()
        .map(|(start, len, bg)| {
            let at = || format!("block group {start} +{len}");
            let flags = bg.flags.get();
            let kind = match flags & BLOCK_GROUP_TYPE_MASK {
                BLOCK_GROUP_DATA => 0,
                BLOCK_GROUP_SYSTEM => 1,
                BLOCK_GROUP_METADATA => 2,
                x if x == BLOCK_GROUP_DATA | BLOCK_GROUP_METADATA => 3,
                x => return Err(Error::corrupt(CorruptKind::ItemValue, at(), format!("type bits {x:#x}"))),
            };
            let profile = Profile::from_flags(flags)
                .ok_or_else(|| Error::corrupt(CorruptKind::ItemValue, at(), format!("profile bits {flags:#x}")))?;
            Ok((start, (kind, raid_index(profile)), len, bg.used.get()))
        })
        .collect()
}

/// Sums that numbers from an image can make overflow: an error naming what.
fn add(a: u64, b: u64, what: &str) -> Result<u64> {
    a.checked_add(b).ok_or_else(|| Error::corrupt(CorruptKind::ItemValue, what, "sizes overflow 64 bits"))
}

/// The sum of numbers from an image, an error when it overflows.
fn sum(v: impl Iterator<Item = u64>, what: &str) -> Result<u64> {
    let mut v = v;
    v.try_fold(0u64, |a, b| add(a, b, what))
}

/// Type names by type index.
const KINDS: [&str; 4] = ["Data", "System", "Metadata", "Data+Metadata"];

fn df_rows(groups: &Classified) -> Result<Vec<DfRow>> {
    let mut sums: std::collections::BTreeMap<(u8, u8), (u64, u64)> = std::collections::BTreeMap::new();
    for &(_, class, len, used) in groups {
        let e = sums.entry(class).or_default();
        *e = (add(e.0, len, "block groups")?, add(e.1, used, "block groups")?);
    }
    Ok(sums
        .into_iter()
        .map(|((k, r), (total, used))| DfRow { kind: KINDS[usize::from(k)], profile: RAID_NAMES[usize::from(r)], total, used })
        .collect())
}

/// progs' profile names in the kernel's RAID index order.
const RAID_NAMES: [&str; 9] = ["RAID10", "RAID1", "DUP", "RAID0", "single", "RAID5", "RAID6", "RAID1C3", "RAID1C4"];

fn raid_index(p: Profile) -> u8 {
    match p {
        Profile::Raid10 => 0,
        Profile::Raid1 => 1,
        Profile::Dup => 2,
        Profile::Raid0 => 3,
        Profile::Single => 4,
        Profile::Raid5 => 5,
        Profile::Raid6 => 6,
        Profile::Raid1C3 => 7,
        Profile::Raid1C4 => 8,
    }
}

/// `btrfs filesystem df`'s text, without its GlobalReserve line: the
/// global reserve is the running kernel's reservation, nothing on disk.
pub fn print_df(rows: &[DfRow], raw: bool, out: &mut dyn Write) -> Result<()> {
    let size = |b: u64| if raw { b.to_string() } else { pretty_size(b) };
    let mut t = String::new();
    for r in rows {
        t.push_str(&format!("{}, {}: total={}, used={}\n", r.kind, r.profile, size(r.total), size(r.used)));
    }
    out.write_all(t.as_bytes()).map_err(|e| Error::io("<stdout>", "write", e))
}

/// One block group type and profile of `filesystem usage`, with the bytes
/// its chunks' stripes take on each device.
#[derive(Serialize, Debug)]
pub struct UsageGroup {
    pub kind: &'static str,
    pub profile: &'static str,
    pub size: u64,
    pub used: u64,
    /// (device path or `devid N` when missing, bytes).
    pub devices: Vec<(String, u64)>,
}

#[derive(Serialize, Debug)]
pub struct Usage {
    pub device_size: u64,
    pub device_allocated: u64,
    pub device_unallocated: u64,
    pub device_missing: u64,
    /// Used bytes on the devices (each profile's used times its copies).
    pub used: u64,
    /// Free space for data: what data block groups have left, and the
    /// unallocated space at the data ratio (min: at the larger ratio).
    pub free_estimated: u64,
    pub free_estimated_min: u64,
    pub data_ratio: f64,
    pub metadata_ratio: f64,
    pub multiple_profiles: bool,
    pub groups: Vec<UsageGroup>,
    /// (device, unallocated bytes).
    pub unallocated: Vec<(String, u64)>,
}

/// `btrfs filesystem usage`: block group totals from the block group
/// items, each device's share from its dev extents.
pub fn usage(fs: &Filesystem) -> Result<Usage> {
    let shown = show(fs)?;
    let name = |devid: u64| {
        shown.devices.iter().find(|d| d.devid == devid).and_then(|d| d.path.clone()).unwrap_or_else(|| format!("devid {devid}"))
    };
    let groups = classified(fs)?;
    let rows = df_rows(&groups)?;
    let of_chunk: std::collections::BTreeMap<u64, (u8, u8)> = groups.iter().map(|&(start, class, _, _)| (start, class)).collect();
    // Per (kind, profile): device -> bytes.
    let mut per_dev: std::collections::BTreeMap<(&'static str, &'static str), std::collections::BTreeMap<u64, u64>> = Default::default();
    let mut allocated: std::collections::BTreeMap<u64, u64> = Default::default();
    let dev_root = fs.tree_root(DEV_TREE_OBJECTID)?;
    let mut c = fs.reader.seek(&dev_root, Key::MIN)?;
    while let Some(item) = c.next_item()? {
        if item.key.item_type != DEV_EXTENT_KEY {
            continue;
        }
        let at = || format!("dev extent {}", item.key);
        let (de, _) = read_prefix::<DevExtent>(item.data(), "dev extent").map_err(|e| e.within(at()))?;
        let (k, r) = *of_chunk
            .get(&de.chunk_offset.get())
            .ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, at(), "no block group for its chunk"))?;
        let len = de.length.get();
        let on_dev = per_dev.entry((KINDS[usize::from(k)], RAID_NAMES[usize::from(r)])).or_default().entry(item.key.objectid).or_default();
        *on_dev = add(*on_dev, len, "dev extents")?;
        let all = allocated.entry(item.key.objectid).or_default();
        *all = add(*all, len, "dev extents")?;
    }
    let device_size = sum(shown.devices.iter().map(|d| d.size), "device sizes")?;
    let device_missing = sum(shown.devices.iter().filter(|d| d.path.is_none()).map(|d| d.size), "device sizes")?;
    let device_allocated = sum(allocated.values().copied(), "dev extents")?;
    // Bytes on the devices of each type and profile (all stripes).
    let mut raw_of = std::collections::BTreeMap::new();
    for (class, devs) in &per_dev {
        raw_of.insert(*class, sum(devs.values().copied(), "dev extents")?);
    }
    let raw = |r: &DfRow| raw_of.get(&(r.kind, r.profile)).copied().unwrap_or(0);
    // Bytes on the devices over logical bytes, mixed groups counting for both.
    let ratio = |kind: &str| -> Result<f64> {
        let mixed = |r: &&DfRow| r.kind == kind || r.kind == "Data+Metadata";
        let on_disk = sum(rows.iter().filter(mixed).map(raw), "dev extents")?;
        let logical = sum(rows.iter().filter(mixed).map(|r| r.total), "block groups")?;
        #[allow(clippy::cast_precision_loss, clippy::as_conversions)]
        Ok(if logical == 0 { 0.0 } else { on_disk as f64 / logical as f64 })
    };
    let (data_ratio, metadata_ratio) = (ratio("Data")?, ratio("Metadata")?);
    let mut used = 0u64;
    let mut usage_groups = Vec::new();
    // progs' order: data, metadata, system.
    for kind in ["Data", "Data+Metadata", "Metadata", "System"] {
        for r in rows.iter().filter(|r| r.kind == kind) {
            // Used bytes times the copies the profile keeps (on-disk over logical).
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::as_conversions)]
            let on_disk = if r.total == 0 { r.used } else { (r.used as f64 * (raw(r) as f64 / r.total as f64)) as u64 };
            used = add(used, on_disk, "used bytes")?;
            let devs = per_dev.get(&(r.kind, r.profile)).cloned().unwrap_or_default();
            usage_groups.push(UsageGroup {
                kind: r.kind,
                profile: r.profile,
                size: r.total,
                used: r.used,
                devices: devs.into_iter().map(|(d, b)| (name(d), b)).collect(),
            });
        }
    }
    let device_unallocated = device_size.saturating_sub(device_allocated);
    let data_free = sum(rows.iter().filter(|r| r.kind == "Data").map(|r| r.total.saturating_sub(r.used)), "block groups")?;
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::as_conversions)]
    let at_ratio = |r: f64| if r > 0.0 { (device_unallocated as f64 / r) as u64 } else { device_unallocated };
    let max_ratio = data_ratio.max(metadata_ratio);
    let kinds_profiles = |k: &str| rows.iter().filter(|r| r.kind == k).count();
    Ok(Usage {
        device_size,
        device_allocated,
        device_unallocated,
        device_missing,
        used,
        free_estimated: add(data_free, at_ratio(data_ratio), "free space")?,
        free_estimated_min: add(data_free, at_ratio(max_ratio), "free space")?,
        data_ratio,
        metadata_ratio,
        multiple_profiles: KINDS.iter().any(|k| kinds_profiles(k) > 1),
        groups: usage_groups,
        unallocated: shown
            .devices
            .iter()
            .map(|d| (name(d.devid), d.size.saturating_sub(allocated.get(&d.devid).copied().unwrap_or(0))))
            .collect(),
    })
}

/// `btrfs filesystem usage`'s text, but for two lines only a running
/// kernel knows, printed as `-`: the free space statfs reports, and the
/// global reserve.
pub fn print_usage(u: &Usage, raw: bool, out: &mut dyn Write) -> Result<()> {
    let w = if raw { 18 } else { 10 };
    let size = |b: u64| format!("{:>w$}", if raw { b.to_string() } else { pretty_size(b) });
    let mut t = String::from("Overall:\n");
    t.push_str(&format!("    Device size:\t\t{}\n", size(u.device_size)));
    t.push_str(&format!("    Device allocated:\t\t{}\n", size(u.device_allocated)));
    t.push_str(&format!("    Device unallocated:\t\t{}\n", size(u.device_unallocated)));
    t.push_str(&format!("    Device missing:\t\t{}\n", size(u.device_missing)));
    t.push_str(&format!("    Device slack:\t\t{}\n", size(0)));
    t.push_str(&format!("    Used:\t\t\t{}\n", size(u.used)));
    t.push_str(&format!(
        "    Free (estimated):\t\t{}\t(min: {})\n",
        size(u.free_estimated),
        if raw { u.free_estimated_min.to_string() } else { pretty_size(u.free_estimated_min) }
    ));
    t.push_str(&format!("    Free (statfs, df):\t\t{:>w$}\n", "-"));
    t.push_str(&format!("    Data ratio:\t\t\t{:>w$.2}\n", u.data_ratio));
    t.push_str(&format!("    Metadata ratio:\t\t{:>w$.2}\n", u.metadata_ratio));
    t.push_str(&format!("    Global reserve:\t\t{:>w$}\t(used: -)\n", "-"));
    t.push_str(&format!("    Multiple profiles:\t\t{:>w$}\n", if u.multiple_profiles { "yes" } else { "no" }));
    for g in &u.groups {
        #[allow(clippy::cast_precision_loss, clippy::as_conversions)]
        let pct = if g.size == 0 { 0.0 } else { g.used as f64 * 100.0 / g.size as f64 };
        let sz = |b: u64| if raw { b.to_string() } else { pretty_size(b) };
        t.push_str(&format!("\n{},{}: Size:{}, Used:{} ({pct:.2}%)\n", g.kind, g.profile, sz(g.size), sz(g.used)));
        // Device lines are 10 wide even with --raw, as progs prints them.
        for (d, b) in &g.devices {
            t.push_str(&format!("   {d}\t{:>10}\n", sz(*b)));
        }
    }
    t.push_str("\nUnallocated:\n");
    for (d, b) in &u.unallocated {
        t.push_str(&format!("   {d}\t{:>10}\n", if raw { b.to_string() } else { pretty_size(*b) }));
    }
    out.write_all(t.as_bytes()).map_err(|e| Error::io("<stdout>", "write", e))
}

/// A size as btrfs-progs prints it by default (its pretty_size_snprintf,
/// binary units): the integer part divided down to the unit below, then
/// one float division, two decimals.
pub fn pretty_size(size: u64) -> String {
    const SUFFIX: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let (mut s, mut last, mut divs) = (size, size, 0usize);
    while s >= 1024 {
        last = s;
        s /= 1024;
        divs += 1;
    }
    // As progs: a float of the last quotient but one, over 1024.
    #[allow(clippy::cast_precision_loss, clippy::as_conversions)]
    let fraction = if divs == 0 { size as f32 } else { last as f32 / 1024.0 };
    format!("{fraction:.2}{}", SUFFIX[divs])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_progs_prints_them() {
        // From btrfs filesystem show / df of progs 6.2 on this machine.
        assert_eq!(pretty_size(0), "0.00B");
        assert_eq!(pretty_size(1023), "1023.00B");
        assert_eq!(pretty_size(196_608), "192.00KiB");
        assert_eq!(pretty_size(268_435_456), "256.00MiB");
        assert_eq!(pretty_size(150_994_944), "144.00MiB");
        assert_eq!(pretty_size(121_238_528), "115.62MiB");
        assert_eq!(pretty_size(u64::MAX), "16.00EiB");
    }
}
