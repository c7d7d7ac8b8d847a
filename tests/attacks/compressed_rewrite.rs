//! Compressed extents rewritten in part: an unaligned write inside one, a
//! write across two, one overwritten whole, a truncate to a size inside
//! one, writes past the end after it, and compressed inline extents edited.
//! The kernel does each of these every day; the part of a compressed extent
//! that is not rewritten stays referenced (same disk_bytenr, disk_num_bytes,
//! ram_bytes and compression, offset/num_bytes covering what is left) and the
//! edge sectors are read back by decompressing it. Judged by `btrfs check
//! --check-data-csum`, btrs reading the same bytes, and the kernel (mount,
//! read, write more, scrub, check again).

use std::path::{Path, PathBuf};

use crate::util::*;

/// Count of file extent items of each compression (none, zlib, lzo, zstd) in the FS tree.
fn compressions(img: &Path) -> [usize; 4] {
    let dump = progs_dump(img, "5");
    let mut n = [0; 4];
    for l in dump.lines() {
        if let Some(r) = l
            .trim()
            .strip_prefix("extent compression ")
            .or_else(|| l.split_once("compression ").filter(|_| l.contains("inline extent")).map(|(_, r)| r))
        {
            if let Some(c) = r.split_whitespace().next().and_then(|c| c.parse::<usize>().ok()) {
                n[c.min(3)] += 1;
            }
        }
    }
    n
}

/// File extent items that name part of a compressed extent (offset > 0 or
/// num_bytes < ram_bytes).
fn trimmed_compressed(img: &Path) -> usize {
    let dump = progs_dump(img, "5");
    let mut last: Option<(u64, u64, u64)> = None;
    let mut n = 0;
    for l in dump.lines().map(str::trim) {
        if let Some(r) = l.strip_prefix("extent data offset ") {
            let v: Vec<u64> = r.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            last = (v.len() == 3).then(|| (v[0], v[1], v[2]));
        } else if let Some(r) = l.strip_prefix("extent compression ") {
            if let (Some((offset, nr, ram)), false) = (last.take(), r.starts_with('0')) {
                n += usize::from(offset > 0 || nr < ram);
            }
        }
    }
    n
}

/// A host tree whose files mkfs --compress stores compressed: /big (nine
/// extents of 128 KiB and a short tenth), /mid, /small (inline, compressed).
fn source(dir: &Path) -> (PathBuf, Model) {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut m = Model::new();
    for (name, len, seed) in [("big", (1 << 20) + 777, 1), ("mid", 300_000, 2), ("small", 3000, 3)] {
        let data = text(len, seed);
        std::fs::write(src.join(name), &data).unwrap();
        m.insert(format!("/{name}"), data);
    }
    (src, m)
}

/// The rewrites, each judged by btrfs check and btrs.
fn rewrites(test: &str, dir: &Path, imgs: &[PathBuf], m: &mut Model) {
    let img = &imgs[0];
    // Inside the first extent, neither end on a sector.
    write_at(dir, img, m, "/big", 70_000, &pseudo(5000, 11), &[]);
    judged(test, imgs, m, "unaligned write inside a compressed extent");
    // Across the boundary of the first two extents.
    write_at(dir, img, m, "/big", 131_000, &pseudo(10_000, 12), &[]);
    // Exactly over the fourth extent: its last reference goes.
    write_at(dir, img, m, "/big", 3 * 131_072, &pseudo(131_072, 13), &[]);
    // One byte at the head of the trimmed first extent.
    write_at(dir, img, m, "/big", 0, b"#", &[]);
    judged(test, imgs, m, "writes across and over compressed extents");
    // Truncate inside the fifth extent, then write past the new end.
    truncate_to(img, m, "/big", 600_001);
    judged(test, imgs, m, "truncate inside a compressed extent");
    write_at(dir, img, m, "/big", 700_000, b"after the gap", &[]);
    truncate_to(img, m, "/mid", 150_000);
    truncate_to(img, m, "/mid", 250_000);
    write_at(dir, img, m, "/mid", 149_990, b"0123456789abcdef", &[]);
    // A compressed inline extent edited in place, then cut.
    write_at(dir, img, m, "/small", 100, b"0123456789", &[]);
    truncate_to(img, m, "/small", 2000);
    judged(test, imgs, m, "writes past a truncated compressed extent, inline edits");
    ok(&["scrub", "--no-progress", s(img)]);
}

fn kernel_writes_more(mnt: &Path, m: &mut Model) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(mnt.join("big")).unwrap();
    let data = pseudo(4096, 21);
    f.write_all_at(&data, 65_536).unwrap();
    model_write(m, "/big", 65_536, &data, false);
    let f = std::fs::OpenOptions::new().write(true).open(mnt.join("mid")).unwrap();
    let more = text(50_000, 22);
    f.write_all_at(&more, 250_000).unwrap();
    model_write(m, "/mid", 250_000, &more, false);
}

#[test]
fn partial_rewrites_of_compressed_extents_made_by_mkfs() {
    let test = "partial_rewrites_of_compressed_extents_made_by_mkfs";
    for algo in ["zlib", "lzo", "zstd"] {
        let tmp = tempfile::tempdir().unwrap();
        let (src, mut m) = source(tmp.path());
        let imgs = mkfs(tmp.path(), 1, "256M", "single", &["-r", s(&src), "--compress", algo]);
        let before = compressions(&imgs[0]);
        assert!(before[1] + before[2] + before[3] >= 10, "{algo}: mkfs made too few compressed extents: {before:?}");
        rewrites(&format!("{test} ({algo})"), tmp.path(), &imgs, &mut m);
        let trimmed = trimmed_compressed(&imgs[0]);
        assert!(trimmed >= 4, "{algo}: only {trimmed} items name part of a compressed extent");
        if kernel_judge(test, tmp.path(), &imgs, &mut m, kernel_writes_more) {
            // And btrs goes on from what the kernel left.
            write_at(tmp.path(), &imgs[0], &mut m, "/big", 66_000, &pseudo(3000, 31), &[]);
            judged(test, &imgs, &m, "btrs after the kernel");
        }
    }
}

#[test]
fn partial_rewrites_of_compressed_extents_made_by_the_kernel() {
    let test = "partial_rewrites_of_compressed_extents_made_by_the_kernel";
    if !crate::common::interop::interop_enabled(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 256 << 20, &[]);
    let mnt = tmp.path().join("mnt");
    let mut m = {
        let mounted = crate::common::interop::Mounted::mount(&mnt, &imgs, "compress-force=zstd:3").unwrap();
        let (_, files) = source(tmp.path());
        for (p, data) in &files {
            std::fs::write(mnt.join(p.trim_start_matches('/')), data).unwrap();
        }
        mounted.unmount().unwrap();
        files
    };
    let before = compressions(&imgs[0]);
    assert!(before[3] >= 10, "the kernel made too few compressed extents: {before:?}");
    rewrites(test, tmp.path(), &imgs, &mut m);
    let trimmed = trimmed_compressed(&imgs[0]);
    assert!(trimmed >= 4, "only {trimmed} items name part of a compressed extent");
    kernel_judge(test, tmp.path(), &imgs, &mut m, kernel_writes_more);
}

/// The edge sectors of a rewrite inside a compressed extent come from
/// decompressing it, and its compressed bytes are verified first: a bad
/// copy is passed over for the good one (with a warning), and with no good
/// copy the write, or a truncate into the extent, fails and changes nothing.
#[test]
fn rewrites_never_launder_a_damaged_compressed_extent() {
    use crate::verified::{data_logical, flip};
    let test = "rewrites_never_launder_a_damaged_compressed_extent";
    for bad_copies in [1, 2] {
        let tmp = tempfile::tempdir().unwrap();
        let (src, mut m) = source(tmp.path());
        let imgs = mkfs(tmp.path(), 2, "256M", "raid1", &["-r", s(&src), "--compress", "zstd"]);
        // A byte inside the first compressed extent of /big (its stream
        // starts at disk byte 0), on copy 1, or on both.
        let at = data_logical(&imgs, "/big") + 100;
        for copy in 0..bad_copies {
            flip(&imgs, at, copy);
        }
        let before = fingerprints(&imgs);
        let patch = tmp.path().join("patch");
        std::fs::write(&patch, pseudo(5000, 41)).unwrap();
        let (code, _, err) = btrs(&["write", s(&imgs[0]), "/big", "--from", s(&patch), "--offset", "70000"]);
        if bad_copies == 1 {
            assert_eq!(code, 0, "{err}");
            assert!(
                err.contains("devid 1") && err.contains("/big") && err.contains("compressed extent"),
                "the bad copy must be named: {err}"
            );
            model_write(&mut m, "/big", 70_000, &pseudo(5000, 41), false);
            // The old extent still holds the bad copy (its other pieces are
            // the file's): scrub repairs it from copy 2.
            let (code, _, err) = btrs(&["scrub", s(&imgs[0]), "--repair"]);
            assert_eq!(code, 0, "scrub --repair: {err}");
            judged(test, &imgs, &m, "rewrite past a bad copy");
        } else {
            assert_eq!(code, 1, "a rewrite over a compressed extent bad on every copy must fail: {err}");
            assert!(err.contains("csum mismatch"), "{err}");
            assert_eq!(fingerprints(&imgs), before, "a failed rewrite changed the images");
            let (code, _, err) = btrs(&["write", s(&imgs[0]), "/big", "--from", "/dev/null", "--offset", "100001", "--truncate"]);
            assert_eq!(code, 1, "a truncate into a compressed extent bad on every copy must fail: {err}");
            assert_eq!(fingerprints(&imgs), before, "a failed truncate changed the images");
        }
    }
}
