//! Every data sector that is read is verified against its checksum — for the caller
//! (`cat`, `extract`) and for a read-modify-write (`write --offset`, buffered or direct,
//! truncate): the whole sector, whatever part of it the file uses. A bad copy is skipped
//! for a good one with a warning naming path, offset and devid; with no good copy the
//! command fails and writes nothing. (On e7a4f9a the last, partial sector was never
//! checked, and an append sealed a flipped byte under a new valid checksum.)

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::util::*;

/// Logical address of the first data extent of `path` (its disk_bytenr + offset).
pub fn data_logical(imgs: &[PathBuf], path: &str) -> u64 {
    let opts = btrs::volumes::OpenOptions { image: imgs[0].clone(), devices: imgs.to_vec(), ..Default::default() };
    let fs = btrs::Filesystem::open(&opts).unwrap();
    let ent = fs.resolve(path).unwrap();
    let exts = fs.file_extents(ent.id).unwrap();
    match &exts[0].1.kind {
        btrs::format::items::FileExtentKind::Regular { disk_bytenr, offset, .. } => disk_bytenr + offset,
        k => panic!("{path}: first extent is not regular: {k:?}"),
    }
}

/// XOR one byte of copy `mirror` of `logical`, written straight into the image file.
pub fn flip(imgs: &[PathBuf], logical: u64, mirror: usize) {
    let (devid, physical) = locate(imgs, logical, mirror);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(image_of(imgs, devid)).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, physical).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, physical).unwrap();
    f.sync_all().unwrap();
}

/// A file of 5000 bytes (two sectors, the second partial) on a RAID1 pair, and one of
/// 3000 bytes written direct (under one sector, not inline).
fn pair_with_files(dir: &Path) -> (Vec<PathBuf>, Vec<u8>, Vec<u8>) {
    let imgs = mkfs(dir, 2, "128M", "raid1", &[]);
    let a = pseudo(5000, 1);
    let b = pseudo(3000, 2);
    write_file(dir, &imgs[0], "/a", &a, &[]);
    write_file(dir, &imgs[0], "/b", &b, &["--direct"]);
    (imgs, a, b)
}

#[test]
fn partial_last_sector_is_verified_and_served_from_the_good_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (imgs, a, b) = pair_with_files(tmp.path());
    let la = data_logical(&imgs, "/a");
    let lb = data_logical(&imgs, "/b");
    // A byte the file uses in its last sector, on copy 1 only.
    flip(&imgs, la + 4096 + 100, 0);
    // A byte the file does not use (past EOF, inside the sector): the sector's checksum
    // still fails, so the copy is bad.
    flip(&imgs, lb + 3500, 0);
    for (path, want) in [("/a", &a), ("/b", &b)] {
        let (code, out, err) = btrs(&["cat", s(&imgs[0]), path]);
        assert_eq!(code, 0, "cat {path}: {err}");
        assert!(out == *want, "cat {path} returned wrong bytes");
        assert!(
            err.contains(path) && err.contains("devid 1") && err.contains("file offset"),
            "warning for {path} must name path, offset and devid: {err}"
        );
    }
    let dest = tmp.path().join("out");
    let (code, _, err) = btrs(&["extract", s(&imgs[0]), "/", s(&dest)]);
    assert_eq!(code, 0, "extract: {err}");
    assert_eq!(std::fs::read(dest.join("a")).unwrap(), a);
    assert_eq!(std::fs::read(dest.join("b")).unwrap(), b);
}

#[test]
fn bad_last_sector_on_every_copy_fails_the_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (imgs, _, _) = pair_with_files(tmp.path());
    let la = data_logical(&imgs, "/a");
    flip(&imgs, la + 4096 + 7, 0);
    flip(&imgs, la + 4096 + 7, 1);
    let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/a"]);
    assert_eq!(code, 1, "cat of a file whose last sector is bad on both copies must fail: {err}");
    assert!(err.contains("csum mismatch") && err.contains("/a"), "{err}");
    // The first sector may have reached stdout, but never the bad one.
    assert!(out.len() <= 4096, "cat printed {} bytes", out.len());
}

#[test]
fn read_modify_write_never_launders_a_bad_sector() {
    for direct in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let (imgs, a, _) = pair_with_files(tmp.path());
        let la = data_logical(&imgs, "/a");
        // Copy 1 bad: the append must take the good bytes of copy 2.
        flip(&imgs, la + 4096 + 100, 0);
        let extra: &[&str] = if direct { &["--direct", "--offset", "5000"] } else { &["--offset", "5000"] };
        let tail = pseudo(1000, 3);
        let src = tmp.path().join("tail.bin");
        std::fs::write(&src, &tail).unwrap();
        let mut args = vec!["write", s(&imgs[0]), "/a", "--from", s(&src)];
        args.extend_from_slice(extra);
        let (code, _, err) = btrs(&args);
        assert_eq!(code, 0, "append (direct {direct}): {err}");
        assert!(err.contains("devid 1") && err.contains("/a"), "the append's read must warn about the bad copy: {err}");
        let mut want = a.clone();
        want.extend_from_slice(&tail);
        let got = ok(&["cat", s(&imgs[0]), "/a"]);
        assert!(got == want, "append (direct {direct}) stored wrong bytes");
        // The old extent still holds the bad copy (its first sector is still the file's):
        // scrub finds it and repairs it from copy 2; nothing else is wrong.
        let (code, rep, err) = btrs(&["scrub", s(&imgs[0]), "--repair", "--json"]);
        assert_eq!(code, 0, "scrub --repair: {err}");
        let rep: serde_json::Value = serde_json::from_slice(&rep).unwrap();
        let findings = rep["findings"].as_array().unwrap();
        assert!(findings.iter().all(|f| f["repaired"] == true && f["devid"] == 1), "{rep}");
        assert!(!findings.is_empty(), "the bad copy was not found");
        progs_check("read_modify_write_never_launders_a_bad_sector", &imgs, &["--check-data-csum"]);

        // Both copies bad: the append fails and nothing changes.
        let tmp = tempfile::tempdir().unwrap();
        let (imgs, _, _) = pair_with_files(tmp.path());
        let la = data_logical(&imgs, "/a");
        flip(&imgs, la + 4096 + 100, 0);
        flip(&imgs, la + 4096 + 100, 1);
        let before = fingerprints(&imgs);
        let src = tmp.path().join("tail.bin");
        std::fs::write(&src, &tail).unwrap();
        let mut args = vec!["write", s(&imgs[0]), "/a", "--from", s(&src)];
        args.extend_from_slice(extra);
        let (code, _, err) = btrs(&args);
        assert_eq!(code, 1, "append over a sector bad on every copy must fail (direct {direct}): {err}");
        assert!(err.contains("csum mismatch"), "{err}");
        assert_eq!(fingerprints(&imgs), before, "a failed append changed the images");
        // Truncating into the bad sector is a read-modify-write too.
        let (code, _, err) = btrs(&["write", s(&imgs[0]), "/a", "--from", "/dev/null", "--offset", "4500", "--truncate"]);
        assert_eq!(code, 1, "truncate into a bad sector must fail: {err}");
        assert_eq!(fingerprints(&imgs), before, "a failed truncate changed the images");
    }
}

#[test]
fn single_copy_bad_last_sector_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs(tmp.path(), 1, "128M", "single", &[]);
    let a = pseudo(5000, 1);
    write_file(tmp.path(), &imgs[0], "/a", &a, &[]);
    let la = data_logical(&imgs, "/a");
    flip(&imgs, la + 4999, 0);
    let (code, _, err) = btrs(&["cat", s(&imgs[0]), "/a"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("csum mismatch") && err.contains("/a"), "{err}");
}

/// Bytes stored past a file's end in its last sector (an mmap write leaves them;
/// btrfs check takes them) are not file content: growing the file, by truncate or
/// by a write further on, zeros them first, as the kernel's btrfs_truncate_block
/// does. (On fa2b09d both served them as file bytes: an attacker's pass.)
#[test]
fn growing_a_file_never_exposes_bytes_stored_past_its_end() {
    use btrs::format::{FS_TREE_OBJECTID, INODE_ITEM_KEY};
    for grow in ["truncate", "write"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let imgs = mkfs(dir, 1, "128M", "dup", &[]);
        let img = s(&imgs[0]);
        let x = vec![b'X'; 8192];
        write_file(dir, &imgs[0], "/f", &x, &[]);
        write_file(dir, &imgs[0], "/n", &x, &["--nodatacow"]);
        for ino in [257u64, 258] {
            // The inode's size (bytes 16..24 of the inode item): 5000.
            patch_item(
                &imgs,
                FS_TREE_OBJECTID,
                |k, _| k.objectid == ino && k.item_type == INODE_ITEM_KEY,
                |b, r| {
                    b[r.start + 16..r.start + 24].copy_from_slice(&5000u64.to_le_bytes());
                },
            );
        }
        progs_check("growing_a_file_never_exposes_bytes_stored_past_its_end", &imgs, &[]);
        for f in ["/f", "/n"] {
            let mut want = x[..5000].to_vec();
            if grow == "truncate" {
                ok(&["write", img, f, "--truncate", "--offset", "10000", "--from", "/dev/null", "--quiet"]);
                want.resize(10000, 0);
            } else {
                write_at(dir, &imgs[0], &mut Model::new(), f, 12000, b"Z", &[]);
                want.resize(12000, 0);
                want.push(b'Z');
            }
            let got = ok(&["cat", img, f]);
            assert!(got == want, "{grow} {f}: first difference at {:?}", first_diff(&got, &want));
        }
        progs_check("growing_a_file_never_exposes_bytes_stored_past_its_end", &imgs, &["--check-data-csum"]);
    }
}
