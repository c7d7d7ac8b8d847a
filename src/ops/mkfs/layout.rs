//! Where every chunk goes: a model of the devices, chunks per profile placed
//! clear of the superblock copies, and the sizes for `--shrink`, `-b` and
//! `--print-size`.

use super::options::{MkfsOptions, Slack, GIB, MIB};
use crate::error::{Error, Result};
use crate::format::ondisk::*;
use crate::format::Profile;
use crate::ops::rootdir::{self, Scan};
use crate::tree::builder::{count_blocks_of, BlockParams, CountBlocks};
use crate::volumes::alloc::{shape, ChunkPlan, Shape};

/// Where the first chunk starts in the logical address space.
const FIRST_LOGICAL: u64 = MIB;

#[derive(Clone, Debug)]
struct DevModel {
    pub(super) devid: u64,
    pub(super) size: u64,
    /// Next free physical byte; everything below is allocated or reserved.
    pub(super) cursor: u64,
}

/// Place `len` bytes at or after `cursor`, stepping over superblock copies
/// (the first one sits in the reserved first MiB).
fn place(cursor: u64, len: u64, size: u64) -> Option<u64> {
    let mut start = cursor.max(DEVICE_RESERVED);
    for &m in &SUPER_MIRROR_OFFSETS[1..] {
        let sb_end = m + STRIPE_LEN;
        if start < sb_end && m < start.checked_add(len)? {
            start = sb_end;
        }
    }
    (start.checked_add(len)? <= size).then_some(start)
}

/// mkfs's placer: the chunk packed at each chosen device's cursor, devices
/// with the most room first; `None` when they cannot hold it.
fn alloc_chunk(devs: &mut [DevModel], logical: u64, flags: u64, profile: Profile, target: u64) -> Option<ChunkPlan> {
    let Shape { devices: ndev, per_device: per_dev, data_stripes, sub_stripes } = shape(profile, devs.len()).ok()?;
    let stripe_size = target.div_ceil(data_stripes as u64).div_ceil(MIB) * MIB;
    // Like the kernel: devices with the most free space first (ties: lowest devid).
    let mut order: Vec<usize> = (0..devs.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(devs[i].size.saturating_sub(devs[i].cursor)), devs[i].devid));
    let mut stripes = Vec::new();
    let mut chosen = 0;
    for &i in &order {
        if chosen == ndev {
            break;
        }
        let (devid, size) = (devs[i].devid, devs[i].size);
        let mut cur = devs[i].cursor;
        let mut placed = Vec::new();
        for _ in 0..per_dev {
            match place(cur, stripe_size, size) {
                Some(s) => {
                    placed.push(s);
                    cur = s + stripe_size;
                }
                None => break,
            }
        }
        if placed.len() < per_dev {
            continue;
        }
        devs[i].cursor = cur;
        stripes.extend(placed.into_iter().map(|p| (devid, p)));
        chosen += 1;
    }
    if chosen < ndev {
        return None;
    }
    // RAID10 pairs mirror stripes next to each other; keep stripe order by devid for readability.
    Some(ChunkPlan {
        logical,
        length: stripe_size * data_stripes as u64,
        flags: flags | profile.flag(),
        profile,
        stripe_size,
        sub_stripes,
        stripes,
    })
}

struct LayoutRequest {
    pub(super) meta_profile: Profile,
    pub(super) data_profile: Profile,
    pub(super) sys_len: u64,
    pub(super) meta_lens: Vec<u64>,
    pub(super) data_lens: Vec<u64>,
}

fn plan_layout(sizes: &[u64], req: &LayoutRequest) -> Option<Vec<ChunkPlan>> {
    let mut devs: Vec<DevModel> =
        sizes.iter().enumerate().map(|(i, &s)| DevModel { devid: i as u64 + 1, size: s, cursor: DEVICE_RESERVED }).collect();
    let mut logical = FIRST_LOGICAL;
    let mut out = Vec::new();
    let mut wanted = vec![(BLOCK_GROUP_SYSTEM, req.meta_profile, req.sys_len)];
    wanted.extend(req.meta_lens.iter().map(|&l| (BLOCK_GROUP_METADATA, req.meta_profile, l)));
    wanted.extend(req.data_lens.iter().map(|&l| (BLOCK_GROUP_DATA, req.data_profile, l)));
    for (flags, profile, len) in wanted {
        let c = alloc_chunk(&mut devs, logical, flags, profile, len)?;
        // Keep logical addresses 1 MiB aligned, as the kernel's allocator does.
        logical = (c.logical + c.length).div_ceil(MIB) * MIB;
        out.push(c);
    }
    Some(out)
}

/// Chunk lengths that hold `need` bytes: each at least `default` (there is always one) and at most `max`.
fn chunk_lens(need: u64, default: u64, max: u64) -> Vec<u64> {
    let mut lens = Vec::new();
    let mut rem = need;
    loop {
        let len = default.max(rem.div_ceil(MIB) * MIB).min(max);
        lens.push(len);
        if len >= rem {
            break;
        }
        rem -= len;
    }
    lens
}

/// Chunks for images of the given sizes: the usual generous chunk sizes when
/// they fit, else smaller ones, else chunks sized exactly to the content; if
/// even that does not fit, an error naming the size each image needs.
pub(super) fn plan_for_sizes(
    opts: &MkfsOptions,
    scan: Option<&Scan>,
    sizes: &[u64],
    meta_profile: Profile,
    data_profile: Profile,
) -> Result<Vec<ChunkPlan>> {
    let ndevs = sizes.len();
    let total: u64 = sizes.iter().sum();
    let tenth = (total / 10) / MIB * MIB;
    let meta_default = if total >= 50 * GIB { GIB } else { tenth.clamp(32 * MIB, 256 * MIB) };
    let data_default = tenth.clamp(64 * MIB, GIB);
    let (data_need, meta_need) = match scan {
        Some(s) => (s.data_bytes + s.data_bytes / 64 + 4 * MIB, s.metadata_bytes * 3 + 4 * MIB),
        None => (0, 0),
    };
    let request = |scale: u64| {
        let shrink = |v: u64, min: u64| (v / scale / MIB * MIB).max(min);
        let meta_len = shrink(meta_default, 8 * MIB);
        let data_len = shrink(data_default, 8 * MIB);
        LayoutRequest {
            meta_profile,
            data_profile,
            sys_len: if scale > 1 { 4 * MIB } else { 8 * MIB },
            meta_lens: chunk_lens(meta_need, meta_len, if meta_len >= GIB { GIB } else { 256 * MIB }.max(meta_len)),
            data_lens: chunk_lens(data_need, data_len, GIB),
        }
    };
    let scales = [1u64, 2, 4, 8, 16, 32, 64, 128];
    if let Some(c) = scales.iter().find_map(|&s| plan_layout(sizes, &request(s))) {
        return Ok(c);
    }
    // With --rootdir, chunks sized to the content (what --shrink makes) before
    // giving up. An empty filesystem keeps the usual minimum chunk sizes: room
    // to grow is all it is for.
    let last = match scan {
        Some(_) => minimal_request(opts, scan, meta_profile, data_profile, 0)?,
        None => request(*scales.last().unwrap_or(&1)),
    };
    if let Some(c) = plan_layout(sizes, &last) {
        return Ok(c);
    }
    let need = needed_size(ndevs, &last);
    // The size asked for, when one was: the files' lengths say nothing then.
    let small = match opts.size {
        Some(s) => vec![format!("--size {s} bytes")],
        None => opts.images.iter().zip(sizes).map(|(p, s)| format!("{} ({s} bytes)", p.display())).collect::<Vec<_>>(),
    };
    Err(Error::Invalid(format!(
        "images too small for this filesystem: {}; each of the {ndevs} image(s) needs at least {need} bytes ({} MiB) with data {data_profile}, metadata {meta_profile}{}",
        small.join(", "),
        need.div_ceil(MIB),
        if scan.is_some() { " and the --rootdir content" } else { "" }
    )))
}

/// The smallest equal image size that `req` fits on (MiB granularity).
fn needed_size(ndevs: usize, req: &LayoutRequest) -> u64 {
    let (mut lo, mut hi) = (MIB, 1u64 << 50);
    while lo + MIB < hi {
        let mid = (lo + hi) / 2 / MIB * MIB;
        if plan_layout(&vec![mid; ndevs], req).is_some() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// Chunk sizes that hold exactly the content, plus `slack` free data bytes.
///
/// The data pass runs dry (nothing written; only compressed files are read)
/// to learn the exact data extents, fs items and checksums: hard links count
/// once, holes not at all, compressed data as compressed.
fn minimal_request(
    opts: &MkfsOptions,
    scan: Option<&Scan>,
    meta_profile: Profile,
    data_profile: Profile,
    slack: u64,
) -> Result<LayoutRequest> {
    let nodesize = opts.nodesize;
    let (data_bytes, fs_blocks, csum_blocks, data_extents) = match scan {
        Some(s) => {
            // Shapes only: the trees are counted as they would be written.
            let format = crate::tree::encode::BlockFormat::new(nodesize, opts.csum, [0; 16], [0; 16])?;
            let mut sink = rootdir::CountingSink::default();
            let r = rootdir::write_data(s, &mut sink, &mut |_, _| {})?;
            let mut count = CountBlocks::default();
            let (_, csum) = super::build::stream_trees(s, &r, &|owner| BlockParams { format, generation: 0, owner }, &mut count)?;
            // Every subvolume is a tree of its own, each at least one leaf.
            let csum_blocks = csum.blocks.len();
            let fs_blocks = count.blocks - csum_blocks;
            (sink.next, fs_blocks, csum_blocks, r.extent_count as usize)
        }
        None => (0, 1, 1, 0),
    };
    // Compressed extents are never split, so each data chunk boundary may waste
    // up to one extent's worth.
    let data_chunks = data_bytes.div_ceil(GIB).max(1);
    let waste = if scan.is_some_and(Scan::any_compression) { data_chunks * rootdir::MAX_UNCOMPRESSED } else { 0 };
    let data_need = data_bytes + waste + slack;
    let data_lens = chunk_lens(data_need, MIB, GIB);
    // Root, dev, uuid, data reloc, free space and block group trees take one or
    // two blocks each at this size; count them generously. Each subvolume adds
    // a root item and two refs (under 700 bytes) to the root tree and an item
    // to the uuid tree.
    let subvols = scan.map_or(0, |s| s.subvolumes().len());
    let small_trees = 8usize + (subvols * 800).div_ceil(crate::tree::builder::leaf_data_size(nodesize));
    let chunk_count = 2 + data_lens.len();
    // The extent tree: an item per data extent, block group and tree block
    // (counted by size, not held).
    let data_item = rootdir::data_extent_item(1, 0, 0, 0)?.len();
    let mut ext_blocks = 1usize;
    for _ in 0..4 {
        let blocks = fs_blocks + csum_blocks + small_trees + ext_blocks;
        let sizes = std::iter::repeat_n(data_item, data_extents)
            .chain(std::iter::repeat_n(24usize, chunk_count))
            .chain(std::iter::repeat_n(33usize, blocks));
        ext_blocks = count_blocks_of(sizes, nodesize)?;
    }
    let meta_bytes = (fs_blocks + csum_blocks + small_trees + ext_blocks) as u64 * nodesize as u64;
    // Headroom for the kernel's first transactions after mount (its global
    // block reserve and copy-on-write of the roots): a quarter, at least 2 MiB.
    let mut meta_len = (meta_bytes + (meta_bytes / 4).max(2 * MIB)).div_ceil(MIB) * MIB;
    if slack > 0 {
        // Free data space is useless without metadata space to create files in:
        // the kernel holds back its global block reserve (several MiB) first.
        meta_len += (slack / 10).max(8 * MIB).div_ceil(MIB) * MIB;
    }
    Ok(LayoutRequest {
        meta_profile,
        data_profile,
        sys_len: MIB,
        meta_lens: chunk_lens(meta_len, meta_len.min(256 * MIB), 256 * MIB),
        data_lens,
    })
}

/// Devices large enough for any layout, for planning `--shrink` before the
/// image sizes are known.
const UNBOUNDED: u64 = 1 << 50;

/// Most `--slack`: its space is laid out in chunks of at most 1 GiB (and a
/// tenth of it in metadata chunks), so an unbounded slack meant billions of
/// chunks planned in memory; 16 TiB is ext4's largest file besides.
pub(super) const MAX_SLACK: u64 = 16 << 40;

/// `--shrink`: the minimal chunks and, per image, the end of its last dev extent.
pub(super) fn shrink_plan(
    opts: &MkfsOptions,
    scan: Option<&Scan>,
    meta_profile: Profile,
    data_profile: Profile,
) -> Result<(Vec<ChunkPlan>, Vec<u64>)> {
    let ndevs = opts.images.len();
    let plan = |slack: u64| -> Result<(Vec<ChunkPlan>, Vec<u64>)> {
        let req = minimal_request(opts, scan, meta_profile, data_profile, slack)?;
        let chunks = plan_layout(&vec![UNBOUNDED; ndevs], &req)
            .ok_or_else(|| Error::Invalid("content too large to lay out (internal error)".into()))?;
        let mut ends = vec![DEVICE_RESERVED; ndevs];
        for c in &chunks {
            for &(devid, phys) in &c.stripes {
                let e = &mut ends[(devid - 1) as usize];
                *e = (*e).max(phys + c.stripe_size);
            }
        }
        Ok((chunks, ends))
    };
    let bounded = |b: u64| {
        if b > MAX_SLACK {
            return Err(Error::Invalid(format!("--slack of {b} bytes: at most {MAX_SLACK} (16 TiB); for a larger image give --size")));
        }
        plan(b)
    };
    match opts.slack {
        None => plan(0),
        Some(Slack::Bytes(b)) => bounded(b),
        Some(Slack::Percent(p)) => {
            let (_, ends) = plan(0)?;
            let base = ends.iter().copied().max().unwrap_or(0);
            bounded(base.saturating_mul(p as u64) / 100)
        }
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn placement_skips_superblock_mirrors() {
        let s = place(60 * MIB, 8 * MIB, GIB).unwrap();
        assert_eq!(s, 64 * MIB + STRIPE_LEN);
        assert_eq!(place(MIB, 8 * MIB, GIB), Some(MIB));
        assert_eq!(place(MIB, GIB, GIB), None);
    }

    fn devs(n: usize, size: u64) -> Vec<DevModel> {
        (0..n).map(|i| DevModel { devid: i as u64 + 1, size, cursor: DEVICE_RESERVED }).collect()
    }

    #[test]
    fn profile_shapes() {
        let c = alloc_chunk(&mut devs(5, GIB), MIB, BLOCK_GROUP_DATA, Profile::Raid10, 256 * MIB).unwrap();
        assert_eq!((c.stripes.len(), c.sub_stripes, c.length), (4, 2, 256 * MIB));
        let c = alloc_chunk(&mut devs(3, GIB), MIB, BLOCK_GROUP_DATA, Profile::Raid0, 96 * MIB).unwrap();
        assert_eq!((c.stripes.len(), c.stripe_size, c.length), (3, 32 * MIB, 96 * MIB));
        let c = alloc_chunk(&mut devs(1, GIB), MIB, BLOCK_GROUP_METADATA, Profile::Dup, 16 * MIB).unwrap();
        assert_eq!(c.stripes, vec![(1, MIB), (1, 17 * MIB)]);
        // The second copy would cover the superblock copy at 64 MiB: it moves past it.
        let c = alloc_chunk(&mut devs(1, GIB), MIB, BLOCK_GROUP_METADATA, Profile::Dup, 40 * MIB).unwrap();
        assert_eq!(c.stripes, vec![(1, MIB), (1, 64 * MIB + STRIPE_LEN)]);
        let c = alloc_chunk(&mut devs(2, GIB), MIB, BLOCK_GROUP_SYSTEM, Profile::Raid1, 8 * MIB).unwrap();
        let on: Vec<u64> = c.stripes.iter().map(|s| s.0).collect();
        assert_eq!(on, vec![1, 2], "system raid1 must be on both devices");
        assert!(alloc_chunk(&mut devs(2, GIB), MIB, BLOCK_GROUP_DATA, Profile::Raid1C3, MIB).is_none());
    }

    #[test]
    fn big_content_gets_several_data_chunks() {
        assert_eq!(chunk_lens(0, 64 * MIB, GIB), vec![64 * MIB]);
        assert_eq!(chunk_lens(2500 * MIB, 64 * MIB, GIB), vec![GIB, GIB, 452 * MIB]);
    }
}
