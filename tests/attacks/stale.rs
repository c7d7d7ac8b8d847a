//! Devices swapped for older copies of themselves. A device whose superblock generation
//! is older than the newest (and that does not hold the newest root tree block) is stale:
//! its copies are never served or counted in a majority, reads warn naming it, scrub
//! reports `stale_device`, `scrub --repair` rebuilds it from current copies, and writing
//! commands refuse the set. (On e7a4f9a `cat` returned the stale zeros of a nodatasum
//! file, `--repair` left the mismatch, and on RAID1C3 two stale copies outvoted and
//! destroyed the one current copy.)

use std::path::{Path, PathBuf};

use crate::util::*;

/// A copy of `img` kept aside (not beside it: two images claiming one devid is another error).
fn save(img: &Path) -> PathBuf {
    let saved = img.parent().unwrap().join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    let old = saved.join(img.file_name().unwrap());
    std::fs::copy(img, &old).unwrap();
    old
}

fn scrub_json(img: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec!["scrub", s(img), "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = btrs(&args);
    let v = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("scrub --json output: {e}; stderr {err}"));
    (code, v, err)
}

fn findings(rep: &serde_json::Value) -> &Vec<serde_json::Value> {
    rep["findings"].as_array().unwrap()
}

/// Read `path` from device `keep` alone (the other images moved aside), `--degraded`.
fn cat_alone(imgs: &[PathBuf], keep: usize, path: &str) -> Vec<u8> {
    let aside = imgs[0].parent().unwrap().join("aside");
    std::fs::create_dir_all(&aside).unwrap();
    for (i, p) in imgs.iter().enumerate() {
        if i != keep {
            std::fs::rename(p, aside.join(p.file_name().unwrap())).unwrap();
        }
    }
    let (code, out, err) = btrs(&["--degraded", "cat", s(&imgs[keep]), path]);
    for (i, p) in imgs.iter().enumerate() {
        if i != keep {
            std::fs::rename(aside.join(p.file_name().unwrap()), p).unwrap();
        }
    }
    assert_eq!(code, 0, "cat {path} from devid {} alone: {err}", keep + 1);
    out
}

#[test]
fn stale_mirror_is_never_served_and_is_rebuilt_by_repair() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 2, "128M", "raid1", &[]);
    let (a, b) = (pseudo(200_000, 1), pseudo(200_000, 2));
    let (a2, b2) = (pseudo(70_000, 3), pseudo(70_000, 4));
    write_file(dir, &imgs[0], "/n", &a, &["--nodatasum"]);
    write_file(dir, &imgs[0], "/c", &a2, &[]);
    let old = save(&imgs[1]);
    write_file(dir, &imgs[0], "/n", &b, &["--truncate"]);
    write_file(dir, &imgs[0], "/c", &b2, &["--truncate"]);
    write_file(dir, &imgs[0], "/new", &pseudo(50_000, 5), &[]);
    std::fs::rename(&old, &imgs[1]).unwrap();

    // Reads: the current bytes, with a warning naming the stale device.
    for (path, want) in [("/n", &b), ("/c", &b2)] {
        let (code, out, err) = btrs(&["cat", s(&imgs[0]), path]);
        assert_eq!(code, 0, "cat {path}: {err}");
        assert!(out == *want, "cat {path}: bytes of the stale device served");
        assert!(err.contains("devid 2") && err.contains("stale"), "no warning names the stale device: {err}");
    }
    // Naming the stale image itself changes nothing.
    assert!(ok(&["cat", s(&imgs[1]), "/n"]) == b);

    // Writing commands refuse, and change nothing.
    let before = fingerprints(&imgs);
    let src = dir.join("x.bin");
    std::fs::write(&src, b"x").unwrap();
    for args in [
        vec!["write", s(&imgs[0]), "/x", "--from", s(&src)],
        vec!["mkdir", s(&imgs[0]), "/d"],
        vec!["rm", s(&imgs[0]), "/new"],
        vec!["setfattr", s(&imgs[0]), "/c", "-n", "user.a", "-v", "1"],
    ] {
        let err = fails(&args, 1);
        assert!(err.contains("stale") && err.contains("scrub --repair"), "{args:?}: {err}");
        assert_eq!(fingerprints(&imgs), before, "{args:?} changed an image");
    }

    // Scrub names the stale device, and every finding is about its copies.
    let (code, rep, _) = scrub_json(&imgs[0], &[]);
    assert_eq!(code, 3, "{rep}");
    assert!(findings(&rep).iter().any(|f| f["kind"] == "stale_device" && f["devid"] == 2), "{rep}");
    assert!(findings(&rep).iter().all(|f| f["devid"] == 2), "a finding blames the current device: {rep}");
    assert_eq!(fingerprints(&imgs), before, "scrub without --repair changed an image");

    // Repair rebuilds it; then everything is clean and the device alone reads current bytes.
    let (code, rep, err) = scrub_json(&imgs[0], &["--repair"]);
    assert_eq!(code, 0, "scrub --repair: {err}\n{rep}");
    assert!(findings(&rep).iter().all(|f| f["repaired"] == true && f["devid"] == 2), "{rep}");
    let (code, rep, _) = scrub_json(&imgs[0], &[]);
    assert_eq!(code, 0, "{rep}");
    assert!(findings(&rep).is_empty(), "after repair: {rep}");
    assert!(cat_alone(&imgs, 1, "/n") == b);
    assert!(cat_alone(&imgs, 1, "/c") == b2);
    progs_check("stale_mirror_is_never_served_and_is_rebuilt_by_repair", &imgs, &["--check-data-csum"]);
    // And writing works again.
    write_file(dir, &imgs[0], "/after", b"after", &[]);
    assert_eq!(ok(&["cat", s(&imgs[0]), "/after"]), b"after");
}

#[test]
fn two_stale_copies_never_outvote_the_current_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 3, "128M", "raid1c3", &[]);
    let (a, b) = (pseudo(300_000, 7), pseudo(300_000, 8));
    write_file(dir, &imgs[0], "/n", &a, &["--nodatasum"]);
    let old2 = save(&imgs[1]);
    let old3 = save(&imgs[2]);
    write_file(dir, &imgs[0], "/n", &b, &["--truncate"]);
    std::fs::rename(&old2, &imgs[1]).unwrap();
    std::fs::rename(&old3, &imgs[2]).unwrap();
    assert!(ok(&["cat", s(&imgs[0]), "/n"]) == b);
    let (code, rep, _) = scrub_json(&imgs[0], &[]);
    assert_eq!(code, 3);
    let stale: Vec<u64> = findings(&rep).iter().filter(|f| f["kind"] == "stale_device").map(|f| f["devid"].as_u64().unwrap()).collect();
    assert_eq!(stale, vec![2, 3], "{rep}");
    assert!(findings(&rep).iter().all(|f| f["devid"] != 1), "the current copy is blamed: {rep}");
    let (code, rep, err) = scrub_json(&imgs[0], &["--repair"]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert!(findings(&rep).iter().all(|f| f["devid"] != 1), "repair wrote over the current copy: {rep}");
    for keep in 0..3 {
        assert!(cat_alone(&imgs, keep, "/n") == b, "devid {} alone does not hold the current bytes", keep + 1);
    }
    let (code, rep, _) = scrub_json(&imgs[0], &[]);
    assert_eq!(code, 0, "{rep}");
    progs_check("two_stale_copies_never_outvote_the_current_one", &imgs, &[]);
}

/// Only the superblocks are behind (a crash between the superblock writes of a
/// commit): the device holds the newest tree blocks, so it is current, not stale.
#[test]
fn superblocks_behind_alone_are_not_a_stale_device() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 2, "128M", "raid1", &[]);
    write_file(dir, &imgs[0], "/n", &pseudo(100_000, 1), &["--nodatasum"]);
    let old = save(&imgs[1]);
    let b = pseudo(100_000, 2);
    write_file(dir, &imgs[0], "/n", &b, &["--truncate"]);
    // Put the old superblocks back on devid 2.
    let (o, n) = (std::fs::File::open(&old).unwrap(), std::fs::OpenOptions::new().write(true).open(&imgs[1]).unwrap());
    for at in [65536u64, 64 << 20] {
        let mut buf = vec![0u8; 4096];
        o.read_exact_at(&mut buf, at).unwrap();
        n.write_all_at(&buf, at).unwrap();
    }
    let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/n"]);
    assert_eq!(code, 0);
    assert!(out == b);
    assert!(!err.contains("stale"), "a device that missed only its superblock write is called stale: {err}");
    let (code, rep, _) = scrub_json(&imgs[0], &["--repair"]);
    assert_eq!(code, 0, "{rep}");
    assert!(findings(&rep).iter().all(|f| f["kind"] == "super" && f["repaired"] == true), "{rep}");
    write_file(dir, &imgs[0], "/after", b"after", &[]);
    let (code, rep, _) = scrub_json(&imgs[0], &[]);
    assert_eq!(code, 0, "{rep}");
    progs_check("superblocks_behind_alone_are_not_a_stale_device", &imgs, &[]);
}

/// The device of a RAID1-metadata, RAID1C3-data set of three that holds no
/// metadata stripe (a commit writes no tree block to it unless chunks change).
fn device_without_metadata(imgs: &[PathBuf]) -> usize {
    let opts = btrs::volumes::OpenOptions { image: imgs[0].clone(), devices: imgs.to_vec(), ..Default::default() };
    let fs = btrs::Filesystem::open(&opts).unwrap();
    let meta: Vec<u64> = fs
        .volume()
        .chunks
        .entries()
        .iter()
        .filter(|e| e.chunk.chunk_type & btrs::format::BLOCK_GROUP_METADATA != 0)
        .flat_map(|e| e.chunk.stripes.iter().map(|s| s.devid))
        .collect();
    let devid = (1..=imgs.len() as u64).find(|d| !meta.contains(d)).expect("a device without metadata");
    (devid - 1) as usize
}

/// The bytes of `path`'s first extent (`len` long) as device `k` holds them.
fn copy_on(imgs: &[PathBuf], k: usize, path: &str, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let logical = crate::verified::data_logical(imgs, path);
    let devid = (k + 1) as u64;
    let physical = (0..imgs.len())
        .map(|m| locate(imgs, logical, m))
        .find(|&(d, _)| d == devid)
        .map(|(_, p)| p)
        .expect("a copy on the device");
    let mut buf = vec![0u8; len];
    std::fs::File::open(&imgs[k]).unwrap().read_exact_at(&mut buf, physical).unwrap();
    buf
}

/// One commit behind, and the commit wrote no tree block to it: nothing tells a crash
/// between the superblock writes from an older copy of the image. Its copies come after
/// the current ones (never served where a current copy is there), writing is refused
/// until `scrub --repair` has compared it with the current copies and rebuilt it; after
/// a crash (its data current) the repair only rewrites its superblocks.
#[test]
fn one_commit_behind_without_evidence_is_stale_but_readable() {
    for swapped in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let imgs: Vec<PathBuf> = (1..=3).map(|i| dir.join(format!("dev{i}.img"))).collect();
        let mut args = vec!["mkfs", "-f", "-b", "128M", "-d", "raid1c3", "-m", "raid1"];
        args.extend(imgs.iter().map(|p| s(p)));
        ok(&args);
        let k = device_without_metadata(&imgs);
        let (a, b) = (pseudo(300_000, 1), pseudo(300_000, 2));
        write_file(dir, &imgs[0], "/n", &a, &["--nodatasum"]);
        let old = save(&imgs[k]);
        write_file(dir, &imgs[0], "/n", &b, &["--truncate"]);
        if swapped {
            // The whole image as it was one commit ago.
            std::fs::copy(&old, &imgs[k]).unwrap();
        } else {
            // Only its superblocks, as a crash between the superblock writes leaves them.
            use std::os::unix::fs::FileExt;
            let (o, n) = (std::fs::File::open(&old).unwrap(), std::fs::OpenOptions::new().write(true).open(&imgs[k]).unwrap());
            for at in [65536u64, 64 << 20] {
                let mut buf = vec![0u8; 4096];
                o.read_exact_at(&mut buf, at).unwrap();
                n.write_all_at(&buf, at).unwrap();
            }
        }
        let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/n"]);
        assert_eq!(code, 0, "swapped {swapped}: {err}");
        assert!(out == b, "swapped {swapped}: cat served the older copy's bytes");
        assert!(err.contains("one behind"), "swapped {swapped}: no warning names the lagging device: {err}");
        let before = fingerprints(&imgs);
        let err = fails(&["mkdir", s(&imgs[0]), "/d"], 1);
        assert!(err.contains("scrub --repair"), "{err}");
        assert_eq!(fingerprints(&imgs), before);
        let (code, rep, _) = scrub_json(&imgs[0], &[]);
        assert_eq!(code, 3, "{rep}");
        assert!(findings(&rep).iter().any(|f| f["kind"] == "stale_device" && f["devid"] == (k + 1) as u64), "{rep}");
        assert!(findings(&rep).iter().all(|f| f["devid"] == (k + 1) as u64), "a finding blames a current device: {rep}");
        // An older copy differs from the current ones where the last commit wrote; a crash's does not.
        let differs = findings(&rep).iter().any(|f| f["kind"] == "mirror_mismatch");
        assert_eq!(differs, swapped, "{rep}");
        let (code, rep, err) = scrub_json(&imgs[0], &["--repair"]);
        assert_eq!(code, 0, "swapped {swapped}: {err}\n{rep}");
        let (code, rep, _) = scrub_json(&imgs[0], &[]);
        assert_eq!(code, 0, "{rep}");
        assert!(copy_on(&imgs, k, "/n", b.len()) == b, "swapped {swapped}: the rebuilt device does not hold the current bytes");
        ok(&["mkdir", s(&imgs[0]), "/d"]);
        progs_check("one_commit_behind_without_evidence_is_stale_but_readable", &imgs, &[]);
    }
}
