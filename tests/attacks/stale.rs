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
/// commit): the device holds every block of the newest commit, but nothing in
/// it can prove that (an older image put back after a repair that rebuilt its
/// tree blocks but not its data looks the same), so it is stale until `scrub
/// --repair` has compared every copy: reads are served from current copies,
/// writes wait, and the repair then only rewrites its superblocks.
#[test]
fn superblocks_behind_alone_wait_for_a_repair_that_only_rewrites_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 2, "128M", "raid1", &[]);
    write_file(dir, &imgs[0], "/n", &pseudo(100_000, 1), &["--nodatasum"]);
    let old = save(&imgs[1]);
    let b = pseudo(100_000, 2);
    write_file(dir, &imgs[0], "/n", &b, &["--truncate"]);
    put_supers(&old, &imgs[1]);
    let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/n"]);
    assert_eq!(code, 0, "{err}");
    assert!(out == b);
    assert!(err.contains("one behind") && err.contains("--accept-lagging"), "{err}");
    let before = fingerprints(&imgs);
    let err = fails(&["mkdir", s(&imgs[0]), "/d"], 1);
    assert!(err.contains("scrub --repair"), "{err}");
    assert_eq!(fingerprints(&imgs), before);
    // With the caller's word that it was a crash, reading and writing go on at once.
    let (code, _, err) = btrs(&["--accept-lagging", "cat", s(&imgs[0]), "/n"]);
    assert!(code == 0 && err.contains("taken as current"), "{err}");
    let (code, rep, _) = scrub_json(&imgs[0], &["--repair"]);
    assert_eq!(code, 0, "{rep}");
    assert!(
        findings(&rep).iter().all(|f| (f["kind"] == "super" || f["kind"] == "stale_device") && f["repaired"] == true),
        "the repair found more than superblocks to rewrite: {rep}"
    );
    write_file(dir, &imgs[0], "/after", b"after", &[]);
    let (code, rep, _) = scrub_json(&imgs[0], &[]);
    assert_eq!(code, 0, "{rep}");
    progs_check("superblocks_behind_alone_wait_for_a_repair_that_only_rewrites_them", &imgs, &[]);
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
    let physical =
        (0..imgs.len()).map(|m| locate(imgs, logical, m)).find(|&(d, _)| d == devid).map(|(_, p)| p).expect("a copy on the device");
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
        let imgs = mkfs3(dir, "raid1c3", "raid1");
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

/// Put the two superblock copies of `from` into `to` (what a crash between the
/// superblock writes of a commit leaves, or the other way round).
fn put_supers(from: &Path, to: &Path) {
    use std::os::unix::fs::FileExt;
    let (o, n) = (std::fs::File::open(from).unwrap(), std::fs::OpenOptions::new().write(true).open(to).unwrap());
    for at in [65536u64, 64 << 20] {
        let mut buf = vec![0u8; 4096];
        o.read_exact_at(&mut buf, at).unwrap();
        n.write_all_at(&buf, at).unwrap();
    }
}

/// The (logical start, length) of every chunk that holds tree blocks.
fn tree_chunks(imgs: &[PathBuf]) -> Vec<(u64, u64)> {
    let opts = btrs::volumes::OpenOptions { image: imgs[0].clone(), devices: imgs.to_vec(), ..Default::default() };
    let fs = btrs::Filesystem::open(&opts).unwrap();
    fs.volume()
        .chunks
        .entries()
        .iter()
        .filter(|e| e.chunk.chunk_type & btrs::format::BLOCK_GROUP_DATA == 0)
        .map(|e| (e.logical, e.chunk.length))
        .collect()
}

/// The tree blocks where the copy on devid `foreign` and the one on devid `victim`
/// carry the same address and generation but other bytes (two histories); with
/// `damage`, a byte of each victim copy is flipped. Returns how many.
fn where_histories_differ(imgs: &[PathBuf], victim: u64, foreign: u64, damage: bool) -> usize {
    use std::os::unix::fs::FileExt;
    let file = |devid: u64| std::fs::OpenOptions::new().read(true).write(true).open(image_of(imgs, devid)).unwrap();
    let (v, f) = (file(victim), file(foreign));
    let mut n = 0;
    for (start, len) in tree_chunks(imgs) {
        for logical in (start..start + len).step_by(16384) {
            let locs: Vec<(u64, u64)> = (0..2).map(|m| locate(imgs, logical, m)).collect();
            let (Some(pv), Some(pf)) = (locs.iter().find(|l| l.0 == victim), locs.iter().find(|l| l.0 == foreign)) else { continue };
            let (mut x, mut y) = (vec![0u8; 16384], vec![0u8; 16384]);
            v.read_exact_at(&mut x, pv.1).unwrap();
            f.read_exact_at(&mut y, pf.1).unwrap();
            // Same address (bytes 48..56) and generation (80..88), other bytes.
            if x != y && y.iter().any(|&b| b != 0) && x[48..56] == y[48..56] && x[80..88] == y[80..88] {
                n += 1;
                if damage {
                    x[3000] ^= 0x55;
                    v.write_all_at(&x, pv.1).unwrap();
                }
            }
        }
    }
    n
}

/// Three images, data in `data` and metadata in `meta`.
fn mkfs3(dir: &Path, data: &str, meta: &str) -> Vec<PathBuf> {
    let imgs: Vec<PathBuf> = (1..=3).map(|i| dir.join(format!("dev{i}.img"))).collect();
    let mut args = vec!["mkfs", "-f", "-b", "128M", "-d", data, "-m", meta];
    args.extend(imgs.iter().map(|p| s(p)));
    ok(&args);
    imgs
}

/// An image saved after a commit whose superblocks were never written holds
/// tree blocks of the next generation at the addresses the real next commit
/// then used, with other bytes. Put back, it is one commit behind and "holds
/// blocks of the newest generation": it must still be stale (its blocks differ
/// from the current device's), never current. (Found by an attacker's pass on
/// 3bd3b2b: `ls` showed the commit that never happened, `mkdir` was accepted
/// and the real commit was lost.)
#[test]
fn an_image_saved_after_a_commit_that_never_completed_is_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 2, "128M", "raid1", &[]);
    let (g1a, g1b) = (save(&imgs[0]), save(&imgs[1]));
    std::fs::create_dir_all(dir.join("aside")).unwrap();
    let ghost = dir.join("aside").join("ghost.img");
    // One commit whose superblocks never reach the images ...
    write_file(dir, &imgs[0], "/ghost", &pseudo(50_000, 1), &["--nodatasum"]);
    std::fs::copy(&imgs[0], &ghost).unwrap();
    put_supers(&g1a, &ghost);
    // ... the set as that crash left it, then the real commit.
    std::fs::copy(&g1a, &imgs[0]).unwrap();
    std::fs::copy(&g1b, &imgs[1]).unwrap();
    let b = pseudo(50_000, 2);
    write_file(dir, &imgs[0], "/real", &b, &["--nodatasum"]);
    std::fs::copy(&ghost, &imgs[0]).unwrap();

    let (code, out, err) = btrs(&["ls", s(&imgs[1]), "/"]);
    let names = String::from_utf8_lossy(&out).to_string();
    assert_eq!(code, 0, "{err}");
    assert!(names.contains("real") && !names.contains("ghost"), "ls shows a commit that never completed: {names}");
    assert!(err.contains("devid 1") && err.contains("stale"), "no warning names the stale device: {err}");
    let (code, out, err) = btrs(&["cat", s(&imgs[1]), "/real"]);
    assert_eq!(code, 0, "{err}");
    assert!(out == b, "cat served the bytes of a commit that never completed");
    let before = fingerprints(&imgs);
    let err = fails(&["mkdir", s(&imgs[1]), "/x"], 1);
    assert!(err.contains("scrub --repair"), "{err}");
    assert_eq!(fingerprints(&imgs), before, "a refused write changed an image");
    let (code, rep, err) = scrub_json(&imgs[1], &["--repair"]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let (code, rep, _) = scrub_json(&imgs[1], &[]);
    assert_eq!(code, 0, "{rep}");
    assert!(copy_on(&imgs, 0, "/real", b.len()) == b, "the rebuilt device does not hold the current bytes");
    ok(&["mkdir", s(&imgs[1]), "/x"]);
    progs_check("an_image_saved_after_a_commit_that_never_completed_is_stale", &imgs, &[]);
}

/// `scrub --repair` of a stale device killed at its k-th write, for every k
/// until it completes: the device stays stale (current bytes served, writes
/// refused) or is rebuilt whole, never current with old data. (On 3bd3b2b a
/// kill after the tree blocks were rebuilt and before the data made the
/// device look current: `cat` returned the old zeros with exit 0, for good.)
#[test]
fn a_repair_killed_at_any_write_never_makes_a_stale_device_current() {
    if std::process::Command::new("strace").arg("-V").output().is_err() {
        assert!(std::env::var("BTRS_INTEROP").as_deref() != Ok("require"), "strace is needed (apt-get install strace)");
        eprintln!("a_repair_killed_at_any_write_never_makes_a_stale_device_current: skipped, no strace");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 2, "128M", "raid1", &[]);
    write_file(dir, &imgs[1], "/n", &pseudo(300_000, 1), &["--nodatasum"]);
    let old = save(&imgs[0]);
    let b = pseudo(300_000, 2);
    write_file(dir, &imgs[1], "/n", &b, &["--nodatasum", "--truncate"]);
    std::fs::copy(&old, &imgs[0]).unwrap();
    let start: Vec<PathBuf> = imgs
        .iter()
        .map(|p| {
            let kept = dir.join("start").join(p.file_name().unwrap());
            std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
            std::fs::copy(p, &kept).unwrap();
            kept
        })
        .collect();
    let bin = env!("CARGO_BIN_EXE_btrs");
    let mut completed = false;
    for k in 1..=200 {
        for (kept, p) in start.iter().zip(&imgs) {
            std::fs::copy(kept, p).unwrap();
        }
        let inject = format!("inject=pwrite64:signal=SIGKILL:when={k}");
        let st = std::process::Command::new("strace")
            .args(["-f", "-o", "/dev/null", "-e", "trace=pwrite64", "-e", &inject, bin, "scrub", s(&imgs[1]), "--repair", "--threads", "1"])
            .output()
            .unwrap();
        let (code, out, err) = btrs(&["cat", s(&imgs[1]), "/n"]);
        assert_eq!(code, 0, "killed at write {k}: {err}");
        assert!(out == b, "killed at write {k}: cat served bytes /n does not hold");
        let (code, _, err) = btrs(&["mkdir", s(&imgs[1]), "/d"]);
        if code == 0 {
            assert!(copy_on(&imgs, 0, "/n", b.len()) == b, "killed at write {k}: writes accepted with the old bytes on devid 1");
        } else {
            assert!(err.contains("stale"), "killed at write {k}: {err}");
        }
        if st.status.success() {
            completed = true;
            assert_eq!(code, 0, "the repair completed and writes are still refused: {err}");
            break;
        }
    }
    assert!(completed, "the repair never completed within 200 writes");
}

/// A device one commit behind that holds no tree block of the newest commit,
/// and holds the only copy of a nodatasum file: nothing can say whether its
/// bytes are current. They are not served (an error names the device and
/// --accept-lagging), and `scrub --repair` does not call the device rebuilt.
/// (On 3bd3b2b `cat` returned an older copy's bytes with exit 0, and the
/// repair rewrote its superblocks, after which nothing warned at all.)
#[test]
fn a_lagging_device_with_the_only_copy_is_neither_served_nor_laundered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs3(dir, "single", "raid1");
    let a = pseudo(100_000, 1);
    write_file(dir, &imgs[0], "/n", &a, &["--nodatasum"]);
    let k = device_without_metadata(&imgs);
    let (devid, _) = locate(&imgs, crate::verified::data_logical(&imgs, "/n"), 0);
    assert_eq!(devid, (k + 1) as u64, "the layout moved: /n's only copy is not on the device without metadata");
    let old = save(&imgs[k]);
    let b = pseudo(100_000, 2);
    write_file(dir, &imgs[0], "/n", &b, &["--nodatasum", "--truncate"]);
    std::fs::copy(&old, &imgs[k]).unwrap();

    let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/n"]);
    assert_eq!(code, 1, "cat served unverifiable bytes: {err}");
    assert!(out.is_empty() && err.contains("--accept-lagging"), "{err}");
    let (code, rep, _) = scrub_json(&imgs[0], &["--repair"]);
    assert_eq!(code, 3, "{rep}");
    let stale: Vec<_> = findings(&rep).iter().filter(|f| f["kind"] == "stale_device").collect();
    assert!(stale.len() == 1 && stale[0]["repaired"] == false, "{rep}");
    let (code, _, err) = btrs(&["cat", s(&imgs[0]), "/n"]);
    assert_eq!(code, 1, "the repair laundered the lagging device: {err}");
    let err = fails(&["mkdir", s(&imgs[0]), "/d"], 1);
    assert!(err.contains("--accept-lagging"), "{err}");
    // The caller who says it was a crash takes it as current (here wrongly:
    // the image is older, and what it holds where /n now lives is served).
    let (code, out, err) = btrs(&["--accept-lagging", "cat", s(&imgs[0]), "/n"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.len() == b.len() && err.contains("taken as current"), "{err}");
}

/// A device that only missed the superblock writes of the last commit (a
/// crash), holding no tree block of it, with one bad sector in a file whose
/// only copy it holds: the repair rewrites its superblocks (the bad sector
/// stays as detectable as before) instead of keeping the set read-only for
/// good. (On 3bd3b2b every repair left it stale and every write was refused.)
#[test]
fn a_bad_sector_on_a_lagging_device_does_not_block_it_for_good() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs3(dir, "single", "raid1");
    let x = pseudo(100_000, 1);
    write_file(dir, &imgs[0], "/other", &x, &[]);
    let k = device_without_metadata(&imgs);
    let logical = crate::verified::data_logical(&imgs, "/other");
    assert_eq!(locate(&imgs, logical, 0).0, (k + 1) as u64, "the layout moved");
    let old = save(&imgs[k]);
    let y = pseudo(100_000, 2);
    write_file(dir, &imgs[0], "/c", &y, &[]);
    put_supers(&old, &imgs[k]);
    crate::verified::flip(&imgs, logical + 100, 0);

    let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/c"]);
    assert!(code == 0 && out == y, "{err}");
    let (code, rep, _) = scrub_json(&imgs[0], &["--repair"]);
    assert_eq!(code, 3, "{rep}");
    assert!(findings(&rep).iter().all(|f| f["kind"] == "csum" && f["repaired"] == false || f["repaired"] == true), "{rep}");
    ok(&["mkdir", s(&imgs[0]), "/d"]);
    let (code, rep, _) = scrub_json(&imgs[0], &[]);
    assert_eq!(code, 3, "{rep}");
    assert!(findings(&rep).iter().all(|f| f["kind"] == "csum"), "only the bad sector is left: {rep}");
    let (code, _, err) = btrs(&["cat", s(&imgs[0]), "/other"]);
    assert_eq!(code, 1, "the bad sector was served: {err}");
}

/// The device holding the only copy of a NODATACOW file is put back one commit
/// older. `scrub --repair` can rebuild its tree blocks from the current copies
/// but not that data: the device must stay stale, its bytes never served.
/// (On d5dadb4 the repair rebuilt the tree blocks, and the next open took the
/// device as current because they matched: `cat` served the older bytes with
/// exit 0, and writes were accepted.)
#[test]
fn a_repair_that_cannot_rebuild_the_data_leaves_the_device_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs3(dir, "single", "raid1c3");
    write_file(dir, &imgs[0], "/n", &pseudo(100_000, 1), &["--nodatacow"]);
    let (devid, _) = locate(&imgs, crate::verified::data_logical(&imgs, "/n"), 0);
    let k = (devid - 1) as usize;
    let old = save(&imgs[k]);
    write_file(dir, &imgs[0], "/n", &pseudo(100_000, 2), &["--nodatacow"]);
    std::fs::copy(&old, &imgs[k]).unwrap();
    for round in 0..2 {
        let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/n"]);
        assert!(code == 1 && out.is_empty(), "round {round}: the older copy's bytes were served: {err}");
        let before = fingerprints(&imgs);
        fails(&["mkdir", s(&imgs[0]), "/x"], 1);
        assert_eq!(fingerprints(&imgs), before);
        let (code, rep, _) = scrub_json(&imgs[0], &["--repair"]);
        assert_eq!(code, 3, "round {round}: {rep}");
        assert!(
            findings(&rep).iter().any(|f| f["kind"] == "stale_device" && f["repaired"] == false),
            "round {round}: the device was called rebuilt: {rep}"
        );
        // The repair left it untouched, so it is still recognisably an older
        // copy: even --accept-lagging refuses it. (On cdfc405 the repair
        // rebuilt its tree blocks, and --accept-lagging then served and kept
        // the older bytes.)
        let (code, out, err) = btrs(&["--accept-lagging", "cat", s(&imgs[0]), "/n"]);
        assert!(code == 1 && out.is_empty(), "round {round}: --accept-lagging served the older copy: {err}");
    }
}

/// An image saved after a commit that never completed, put back, while the
/// current device's copies of the blocks that differ are damaged: no copy of
/// them can be trusted, so nothing is served from them and the repair takes
/// nothing from the stale device. (On d5dadb4 `ls` showed the commit that
/// never happened with no warning, and the repair overwrote the current
/// copies with it.)
#[test]
fn a_stale_copy_never_repairs_a_damaged_current_one() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 2, "128M", "raid1", &[]);
    let (g1a, g1b) = (save(&imgs[0]), save(&imgs[1]));
    std::fs::create_dir_all(dir.join("aside")).unwrap();
    let ghost = dir.join("aside").join("ghost.img");
    ok(&["mkdir", s(&imgs[0]), "/aaaa"]);
    std::fs::copy(&imgs[0], &ghost).unwrap();
    put_supers(&g1a, &ghost);
    std::fs::copy(&g1a, &imgs[0]).unwrap();
    std::fs::copy(&g1b, &imgs[1]).unwrap();
    ok(&["mkdir", s(&imgs[0]), "/bbbb"]);
    // Where the ghost's tree blocks differ from the current ones, damage the current copy.
    let meta = tree_chunks(&imgs);
    let nodesize = 16384u64;
    let (ga, cur) = (std::fs::File::open(&ghost).unwrap(), std::fs::OpenOptions::new().read(true).write(true).open(&imgs[1]).unwrap());
    let mut damaged = 0;
    for (start, len) in meta {
        for logical in (start..start + len).step_by(nodesize as usize) {
            let (pa, pb) = (locate(&imgs, logical, 0), locate(&imgs, logical, 1));
            let (pa, pb) = if pa.0 == 1 { (pa.1, pb.1) } else { (pb.1, pa.1) };
            let (mut x, mut y) = (vec![0u8; nodesize as usize], vec![0u8; nodesize as usize]);
            ga.read_exact_at(&mut x, pa).unwrap();
            cur.read_exact_at(&mut y, pb).unwrap();
            if x != y && x.iter().any(|&b| b != 0) {
                y[2000] ^= 0x55;
                cur.write_all_at(&y, pb).unwrap();
                damaged += 1;
            }
        }
    }
    assert!(damaged > 0, "the ghost's tree blocks do not differ");
    std::fs::copy(&ghost, &imgs[0]).unwrap();
    let (code, out, err) = btrs(&["ls", s(&imgs[1]), "/"]);
    assert!(!String::from_utf8_lossy(&out).contains("aaaa"), "ls showed the commit that never completed (exit {code}): {err}");
    let before = fingerprints(&imgs);
    let (code, _, _) = btrs(&["scrub", s(&imgs[1]), "--repair"]);
    assert_ne!(code, 0);
    let after = fingerprints(&imgs);
    assert_eq!(after[1], before[1], "the repair wrote the stale device's blocks over the current device");
    fails(&["mkdir", s(&imgs[1]), "/x"], 1);
}

/// Two histories with one fsid: a copy of the set written apart from it (a
/// split brain, or an image kept aside and mounted elsewhere), one of its
/// images put back. Its tree blocks carry the same addresses and
/// generations as the current ones and their own valid checksums, so
/// nothing in a block tells which history it is from: where the current
/// copy is damaged, serving the stale one returned the other history's
/// file with exit 0, and `scrub --repair` wrote it over the current copy
/// (a third attacker's pass on c7d86f9). A stale device's tree blocks are
/// trusted for nothing; only a data checksum from the current trees vouches.
#[test]
fn a_stale_device_from_another_history_never_speaks_for_the_current_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 2, "128M", "raid1", &[]);
    let (ours, theirs) = (pseudo(300_000, 11), pseudo(300_000, 12));
    // The copy, kept in its own directory and written there.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let copy: Vec<PathBuf> = imgs.iter().map(|p| other.join(p.file_name().unwrap())).collect();
    for (p, c) in imgs.iter().zip(&copy) {
        std::fs::copy(p, c).unwrap();
    }
    write_file(dir, &imgs[0], "/s", &ours, &[]);
    ok(&["mkdir", s(&imgs[0]), "/m3"]);
    ok(&["mkdir", s(&imgs[0]), "/m4"]);
    write_file(&other, &copy[0], "/s", &theirs, &[]);
    ok(&["mkdir", s(&copy[0]), "/f3"]);
    std::fs::copy(&copy[0], &imgs[0]).unwrap();
    // Damage the current device's copy of every tree block where the two histories differ.
    let damaged = where_histories_differ(&imgs, 2, 1, true);
    assert!(damaged > 0, "no tree block of the two histories shares address and generation");
    let (code, out, err) = btrs(&["cat", s(&imgs[1]), "/s"]);
    assert!(out != theirs, "cat served the other history's /s (exit {code}): {err}");
    assert!(code != 0 || out == ours, "cat /s exit 0 with bytes /s never held: {err}");
    assert!(code == 0 || err.contains("stale devid 1"), "the error does not name the stale device: {err}");
    let before = fingerprints(&imgs);
    let (code, _, err) = btrs(&["scrub", s(&imgs[1]), "--repair"]);
    assert_ne!(code, 0, "scrub --repair reported the damaged set repaired: {err}");
    assert_eq!(fingerprints(&imgs)[1], before[1], "the repair wrote the other history's blocks over the current device");
    let (code, out, err) = btrs(&["cat", s(&imgs[1]), "/s"]);
    assert!(out != theirs, "after the repair cat served the other history's /s (exit {code}): {err}");
    fails(&["mkdir", s(&imgs[1]), "/x"], 1);
}

/// A set made the way the attacker's pass on the fix above found it (allocation is
/// deterministic, so this placement repeats): `n` images with data in `data`,
/// metadata in `meta`, a subvolume `sv`; the set writes X to /sv/s and commits twice
/// more, a copy of it writes Y there and commits once; then device `foreign`
/// (0-based) of the copy is put in the set. It is one commit behind and the newest
/// commit wrote no tree block to it. Returns (images, X, Y).
fn foreign_one_behind(dir: &Path, n: usize, data: &str, meta: &str, foreign: usize) -> (Vec<PathBuf>, Vec<u8>, Vec<u8>) {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("sv")).unwrap();
    std::fs::write(root.join("sv/f"), b"hi\n").unwrap();
    let imgs: Vec<PathBuf> = (1..=n).map(|i| dir.join(format!("dev{i}.img"))).collect();
    let mut args = vec!["mkfs", "-f", "-b", "128M", "-d", data, "-m", meta, "--rootdir", s(&root), "--subvol", "sv"];
    args.extend(imgs.iter().map(|p| s(p)));
    ok(&args);
    ok(&["mkdir", s(&imgs[0]), "/p1"]);
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let copy: Vec<PathBuf> = imgs.iter().map(|p| other.join(p.file_name().unwrap())).collect();
    for (p, c) in imgs.iter().zip(&copy) {
        std::fs::copy(p, c).unwrap();
    }
    let (x, y) = (vec![b'X'; 100], vec![b'Y'; 100]);
    write_file(dir, &imgs[0], "/sv/s", &x, &[]);
    ok(&["mkdir", s(&imgs[0]), "/sv/d1"]);
    ok(&["mkdir", s(&imgs[0]), "/d2"]);
    write_file(&other, &copy[0], "/sv/s", &y, &[]);
    ok(&["mkdir", s(&copy[0]), "/sv/d1"]);
    std::fs::copy(&copy[foreign], &imgs[foreign]).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
    (imgs, x, y)
}

/// A device one commit behind to which that commit wrote no tree block holds nothing
/// that tells a crash from another history: its tree blocks are trusted for nothing
/// until `--accept-lagging` says it was a crash. (Raid0 metadata: the other history's
/// leaf of /sv was the only copy and `cat` served Y with exit 0, no damage needed; then
/// `scrub --repair` only rewrote the device's superblocks, exit 0, and made it current.)
#[test]
fn a_device_the_newest_commit_wrote_nothing_to_is_no_witness() {
    let tmp = tempfile::tempdir().unwrap();
    let (imgs, x, y) = foreign_one_behind(tmp.path(), 2, "raid1", "raid0", 1);
    let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/sv/s"]);
    assert!(err.contains("one behind"), "devid 2 is not one commit behind here: {err}");
    assert!(out != y, "cat served the other history's /sv/s (exit {code}): {err}");
    assert!(code != 0 || out == x, "cat exit 0 with bytes /sv/s never held: {err}");
    let before = fingerprints(&imgs);
    let (code, _, err) = btrs(&["scrub", s(&imgs[0]), "--repair"]);
    assert_ne!(code, 0, "scrub --repair made the foreign device current: {err}");
    assert_eq!(fingerprints(&imgs), before, "the repair wrote to a set it could not rebuild");
    let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/sv/s"]);
    assert!(out != y, "after the repair cat served the other history's /sv/s (exit {code}): {err}");
    assert!(code != 0 || err.contains("accept-lagging"), "the error does not say what would read it: {err}");
    fails(&["mkdir", s(&imgs[0]), "/x"], 1);
}

/// The same on RAID10: the foreign device's copies neither serve nor repair nor win
/// by `--prefer-mirror`. (The current copy damaged: `cat` served Y with exit 0 and the
/// repair wrote Y over the current device; undamaged, `--prefer-mirror 2` overwrote
/// the good current copy with the foreign one.)
#[test]
fn a_foreign_raid10_device_never_repairs_or_outranks_a_current_copy() {
    for damage in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let (imgs, x, y) = foreign_one_behind(tmp.path(), 4, "raid10", "raid10", 3);
        let (_, _, err) = btrs(&["ls", s(&imgs[0]), "/"]);
        assert!(err.contains("one behind"), "devid 4 is not one commit behind here: {err}");
        // The foreign device's partner copies (devid 3) of tree blocks that differ.
        let differ = where_histories_differ(&imgs, 3, 4, damage);
        assert!(differ > 0, "no tree block of the two histories shares address and generation");
        let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/sv/s"]);
        assert!(out != y, "damage {damage}: cat served the other history's /sv/s (exit {code}): {err}");
        assert!(code != 0 || out == x, "damage {damage}: cat exit 0 with bytes /sv/s never held: {err}");
        let before = fingerprints(&imgs);
        let mut args = vec!["scrub", s(&imgs[0]), "--repair"];
        if !damage {
            args.extend(["--prefer-mirror", "2"]);
        }
        let (code, _, err) = btrs(&args);
        let after = fingerprints(&imgs);
        assert_eq!(after[..3], before[..3], "damage {damage}: the repair wrote over a current device (exit {code}): {err}");
        let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/sv/s"]);
        assert!(out != y, "damage {damage}: after the repair cat served the other history's /sv/s (exit {code}): {err}");
        if !damage {
            // Every copy the foreign device holds has a current partner: rebuilt from them.
            assert_eq!((code, out), (0, x), "{err}");
        }
    }
}

/// A device one commit behind that holds the newest commit's tree blocks is what a
/// crash between the superblock writes leaves, and also what an older copy from another
/// history looks like once those blocks are copied into it (an attacker's pass on
/// 66d5d26: the exception for such a device let its foreign leaf win `--prefer-mirror`
/// over a good current copy, and, the current copy damaged, `cat` served it with exit
/// 0 and `scrub --repair` copied it over the current device). No stale device's tree
/// block is trusted; `--accept-lagging` is the caller's word that it was a crash.
#[test]
fn a_lagging_device_given_the_newest_commit_is_still_no_witness() {
    use std::os::unix::fs::FileExt;
    for damage in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), b"original").unwrap();
        let imgs: Vec<PathBuf> = (1..=2).map(|i| dir.join(format!("dev{i}.img"))).collect();
        ok(&["mkfs", "-f", "-b", "128M", "-d", "raid1", "-m", "raid1", "--rootdir", s(&root), "--subvol", "sub", s(&imgs[0]), s(&imgs[1])]);
        let other = dir.join("other");
        std::fs::create_dir_all(&other).unwrap();
        let copy: Vec<PathBuf> = imgs.iter().map(|p| other.join(p.file_name().unwrap())).collect();
        for (p, c) in imgs.iter().zip(&copy) {
            std::fs::copy(p, c).unwrap();
        }
        let (cur, foreign) = (b"CURRENT-CONTENT".to_vec(), b"FOREIGN-CONTENT".to_vec());
        write_file(dir, &imgs[0], "/sub/f", &cur, &[]);
        ok(&["mkdir", s(&imgs[0]), "/x"]);
        write_file(&other, &copy[0], "/sub/f", &foreign, &[]);
        // The foreign devid 2, given every tree block of the newest commit the current one holds.
        let current = std::fs::read(&imgs[1]).unwrap();
        std::fs::copy(&copy[1], &imgs[1]).unwrap();
        let newest = u64::from_le_bytes(current[65536 + 72..65536 + 80].try_into().unwrap());
        let fsid = &current[65536 + 32..65536 + 48];
        let f = std::fs::OpenOptions::new().write(true).open(&imgs[1]).unwrap();
        for at in (0..current.len() - 16384).step_by(4096) {
            if at == 65536 || at == 64 << 20 || &current[at + 32..at + 48] != fsid {
                continue;
            }
            if u64::from_le_bytes(current[at + 80..at + 88].try_into().unwrap()) == newest {
                f.write_all_at(&current[at..at + 16384], at as u64).unwrap();
            }
        }
        let (_, _, err) = btrs(&["ls", s(&imgs[0]), "/"]);
        assert!(err.contains("one behind"), "devid 2 is not one commit behind here: {err}");
        if damage {
            // Every tree block of devid 1 where the two histories differ.
            let damaged = where_histories_differ(&imgs, 1, 2, true);
            assert!(damaged > 0, "no tree block of the two histories shares address and generation");
        }
        let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/sub/f"]);
        assert!(out != foreign, "damage {damage}: cat served the other history's file (exit {code}): {err}");
        assert!(code != 0 || out == cur, "damage {damage}: cat exit 0 with bytes the file never held: {err}");
        let before = fingerprints(&imgs);
        let mut args = vec!["scrub", s(&imgs[0]), "--repair"];
        if !damage {
            args.extend(["--prefer-mirror", "2"]);
        }
        let (code, _, err) = btrs(&args);
        assert_eq!(fingerprints(&imgs)[0], before[0], "damage {damage}: the repair wrote over the current device (exit {code}): {err}");
        let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/sub/f"]);
        assert!(out != foreign, "damage {damage}: after the repair cat served the other history's file (exit {code}): {err}");
        if damage {
            fails(&["mkdir", s(&imgs[0]), "/y"], 1);
        } else {
            // Every copy it holds has a current partner: rebuilt from them, current bytes.
            assert_eq!((code, out), (0, cur), "{err}");
            ok(&["mkdir", s(&imgs[0]), "/y"]);
        }
    }
}

/// The chunk tree is read before the stale devices are known from the chunk map, but
/// their superblocks already say which are behind: it too is never served from them.
/// (`-m dup` on two devices keeps the system chunk on devid 1 alone; an older devid 1
/// whose chunk tree leaf was rewritten, DATA|RAID0 to DATA|RAID1 at the same stripes,
/// and resealed made `cat` return another file's bytes with exit 0, `--degraded` too:
/// an attacker's pass on e08b8ff.) A crash that leaves that device one commit behind
/// reads with `--accept-lagging`, as the error says.
#[test]
fn the_chunk_tree_is_never_read_from_a_stale_device() {
    use std::os::unix::fs::FileExt;
    for forged in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let imgs: Vec<PathBuf> = (1..=2).map(|i| dir.join(format!("dev{i}.img"))).collect();
        ok(&["mkfs", "-f", "-b", "128M", "-m", "dup", "-d", "raid0", s(&imgs[0]), s(&imgs[1])]);
        let (f1, f2) = (pseudo(300_000, 1), pseudo(200_000, 2));
        write_file(dir, &imgs[0], "/f2", &f2, &["--nodatasum"]);
        let old = save(&imgs[0]);
        write_file(dir, &imgs[0], "/f1", &f1, &[]);
        if forged {
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&old).unwrap();
            let mut leaf = vec![0u8; 16384];
            f.read_exact_at(&mut leaf, 1 << 20).unwrap();
            assert_eq!(leaf[100], 0, "the chunk tree root is not a leaf");
            let nritems = u32::from_le_bytes(leaf[96..100].try_into().unwrap()) as usize;
            let mut changed = 0;
            for i in 0..nritems {
                let h = 101 + i * 25;
                let (item_type, data_off) = (leaf[h + 8], u32::from_le_bytes(leaf[h + 17..h + 21].try_into().unwrap()) as usize);
                let at = 101 + data_off;
                let chunk_type = u64::from_le_bytes(leaf[at + 24..at + 32].try_into().unwrap());
                // A chunk item (228) of a RAID0 data chunk: RAID1, half as long.
                if item_type == 228 && chunk_type == 0x1 | 0x8 {
                    let len = u64::from_le_bytes(leaf[at..at + 8].try_into().unwrap());
                    leaf[at..at + 8].copy_from_slice(&(len / 2).to_le_bytes());
                    leaf[at + 24..at + 32].copy_from_slice(&(0x1u64 | 0x10).to_le_bytes());
                    changed += 1;
                }
            }
            assert!(changed > 0, "no RAID0 data chunk in the chunk tree");
            reseal(btrs::format::CsumType::Crc32c, &mut leaf);
            for m in 0..2 {
                let (devid, physical) = locate(&imgs, 1 << 20, m);
                assert_eq!(devid, 1, "the system chunk is not on devid 1 alone");
                f.write_all_at(&leaf, physical).unwrap();
            }
            std::fs::copy(&old, &imgs[0]).unwrap();
        } else {
            put_supers(&old, &imgs[0]);
        }
        let before = fingerprints(&imgs);
        for degraded in [false, true] {
            let mut args = vec!["cat", s(&imgs[1]), "/f2"];
            if degraded {
                args.insert(0, "--degraded");
            }
            let (code, out, err) = btrs(&args);
            assert!(
                out.is_empty() || out == f2,
                "forged {forged}, degraded {degraded}: cat /f2 served bytes it never held (exit {code}): {err}"
            );
            assert_ne!(code, 0, "forged {forged}, degraded {degraded}: {err}");
            assert!(degraded || err.contains("accept-lagging") || forged, "the error does not say what reads it after a crash: {err}");
        }
        assert_eq!(fingerprints(&imgs), before);
        if !forged {
            let (code, out, err) = btrs(&["--accept-lagging", "cat", s(&imgs[1]), "/f2"]);
            assert_eq!((code, out == f2), (0, true), "after a crash --accept-lagging does not read it: {err}");
            let (code, _, err) = btrs(&["--accept-lagging", "scrub", s(&imgs[1]), "--repair"]);
            assert_eq!(code, 0, "{err}");
            assert!(btrs(&["cat", s(&imgs[1]), "/f1"]).1 == f1);
            ok(&["mkdir", s(&imgs[1]), "/d"]);
        }
    }
}

/// Two copies of a set that each made the same number of commits, one device of each
/// put together: no device is behind, so nothing is stale, yet the two hold different
/// histories at the same addresses with valid checksums. `cat` of a nodatasum file
/// served whichever copy it read first with exit 0 (and the other history's bytes when
/// that copy failed). Open now compares the current devices' copies of the newest
/// commit's tree blocks and refuses a set whose verified copies differ; scrub lists the
/// differences; `scrub --repair` repairs nothing (it "repaired" the other history's
/// checksummed data from this one's checksums, an attacker's pass found); each history
/// stays readable alone with `--degraded`.
#[test]
fn two_histories_of_one_generation_are_refused_not_mixed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 2, "128M", "raid1", &[]);
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let copy: Vec<PathBuf> = imgs.iter().map(|p| other.join(p.file_name().unwrap())).collect();
    for (p, c) in imgs.iter().zip(&copy) {
        std::fs::copy(p, c).unwrap();
    }
    let (ours, theirs) = (pseudo(300_000, 21), pseudo(300_000, 22));
    let (ours_c, theirs_c) = (pseudo(200_000, 23), pseudo(200_000, 24));
    write_file(dir, &imgs[0], "/s", &ours, &["--nodatasum"]);
    write_file(dir, &imgs[0], "/c", &ours_c, &[]);
    write_file(&other, &copy[0], "/s", &theirs, &["--nodatasum"]);
    write_file(&other, &copy[0], "/c", &theirs_c, &[]);
    std::fs::copy(&copy[1], &imgs[1]).unwrap();
    std::fs::remove_dir_all(&other).unwrap();

    for img in &imgs {
        let (code, out, err) = btrs(&["cat", s(img), "/s"]);
        assert_eq!(
            code,
            1,
            "cat /s of two histories exit {code} ({} bytes, ours {}, theirs {}): {err}",
            out.len(),
            out == ours,
            out == theirs
        );
        assert!(out.is_empty(), "cat wrote bytes before refusing");
        assert!(
            err.contains("two histories") && err.contains("devid 1") && err.contains("devid 2"),
            "the error names neither device: {err}"
        );
    }
    fails(&["ls", s(&imgs[0]), "/"], 1);
    let before = fingerprints(&imgs);
    fails(&["mkdir", s(&imgs[0]), "/x"], 1);
    for extra in [&["--repair"][..], &["--repair", "--prefer-mirror", "1"], &["--repair", "--prefer-mirror", "2"], &["--fix-csum"]] {
        let mut args = vec!["scrub", s(&imgs[0])];
        args.extend_from_slice(extra);
        // Each reports where the histories differ and repairs nothing (exit 3).
        let err = fails(&args, 3);
        assert!(err.contains("two histories"), "{args:?}: {err}");
    }
    assert_eq!(fingerprints(&imgs), before, "a command wrote to a set it cannot tell the history of");
    let (code, rep, err) = scrub_json(&imgs[0], &[]);
    assert_eq!(code, 3, "scrub of two histories: {err}");
    let differ =
        findings(&rep).iter().filter(|f| f["kind"] == "mirror_mismatch" || (f["kind"] == "two_histories" && f["logical"].is_u64())).count();
    assert!(differ >= 4, "scrub does not list the differing copies: {rep}");
    let blocks = findings(&rep).iter().filter(|f| f["kind"] == "two_histories" && f["metadata"] == true && f["logical"].is_u64()).count();
    assert!(blocks >= 2, "scrub does not name the tree blocks where the histories differ: {rep}");
    assert!(findings(&rep).iter().any(|f| f["kind"] == "two_histories"), "scrub does not name the two histories: {rep}");
    assert_eq!(fingerprints(&imgs), before, "scrub without --repair wrote");
    // Each history is whole on its own device.
    assert!(cat_alone(&imgs, 0, "/s") == ours && cat_alone(&imgs, 0, "/c") == ours_c, "devid 1 alone does not read its own history");
    assert!(cat_alone(&imgs, 1, "/s") == theirs && cat_alone(&imgs, 1, "/c") == theirs_c, "devid 2 alone does not read its own history");
}

/// A tree block whose every copy is on a stale device is not damaged: the error says
/// there is no current copy and which device holds it (it said "corrupt tree block").
/// `--degraded` leaves the stale device out, and scrub names it as that, not as a
/// missing device.
#[test]
fn a_block_only_a_stale_device_holds_is_untrusted_not_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let (imgs, x, y) = foreign_one_behind(tmp.path(), 2, "raid1", "raid0", 1);
    let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/sv/s"]);
    assert!(out != y && out != x, "cat served /sv/s through a leaf only the stale device holds (exit {code}): {err}");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no copy on a current device") && err.contains("stale devid 2"), "{err}");
    assert!(!err.contains("corrupt"), "an untrusted block is called corrupt: {err}");
    let before = fingerprints(&imgs);
    let (code, rep, err) = scrub_json(&imgs[0], &["--degraded", "--repair"]);
    assert_ne!(code, 0, "{err}");
    assert_eq!(fingerprints(&imgs), before, "a degraded repair wrote to the set");
    let dev2 = rep["devices"].as_array().unwrap().iter().find(|d| d["devid"] == 2).expect("devid 2 in the report").clone();
    assert!(dev2["left_out"] == true && dev2["path"].as_str().is_some_and(|p| p.ends_with("dev2.img")), "{dev2}");
    let f = findings(&rep).iter().find(|f| f["devid"] == 2).expect("a finding about devid 2");
    let detail = f["detail"].as_str().unwrap();
    assert!(detail.contains("stale") && detail.contains("left out") && !detail.contains("missing"), "{detail}");
}

/// Regression (third attacker pass): two histories that differ only in a tree block the
/// newest commit did not write (here the checksum leaf, one copy changed and resealed so
/// both copies verify). Open compares only the newest commit's blocks and let it through;
/// scrub called the two copies a `mirror_mismatch`, and `scrub --repair --prefer-mirror 1`
/// overwrote the other history's block, along with every other repair it made. Scrub now
/// names the block `two_histories` (exit 3), and `--repair` first reads every tree block
/// and, on two histories, repairs nothing at all, not even damage elsewhere; nor does
/// `--fix-csum` commit its checksums (it did, an attacker's pass on the first fix found).
#[test]
fn two_histories_in_an_older_tree_are_never_repaired() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 2, "128M", "raid1", &[]);
    let (c, d) = (pseudo(200_000, 31), pseudo(100_000, 32));
    write_file(dir, &imgs[0], "/c", &c, &[]);
    write_file(dir, &imgs[0], "/d", &d, &[]);
    ok(&["mkdir", s(&imgs[0]), "/x"]);
    let opts = btrs::volumes::OpenOptions { image: imgs[0].clone(), devices: imgs.clone(), ..Default::default() };
    let fs = btrs::Filesystem::open(&opts).unwrap();
    let csum_root = fs.reader.root_block(&fs.tree_root(btrs::format::CSUM_TREE_OBJECTID).unwrap()).unwrap();
    assert!(csum_root.is_leaf() && csum_root.header.generation.get() < fs.sb.generation.get(), "the newest commit wrote the csum leaf");
    let leaf = csum_root.logical;
    let nodesize = fs.sb.nodesize.get() as usize;
    // Another history's checksum leaf in copy 2: the last checksum byte differs, resealed.
    let (devid, phys) = locate(&imgs, leaf, 1);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(image_of(&imgs, devid)).unwrap();
    let mut b = vec![0u8; nodesize];
    f.read_exact_at(&mut b, phys).unwrap();
    b[nodesize - 1] ^= 0x5a;
    reseal(fs.csum, &mut b);
    f.write_all_at(&b, phys).unwrap();
    // And damage that a repair would mend: copy 2 of /d's first sector; and a
    // sector of /c changed alike on both copies, whose checksum --fix-csum rewrites.
    let c_logical = {
        let ent = fs.resolve("/c").unwrap();
        fs.file_extents(ent.id)
            .unwrap()
            .iter()
            .find_map(|(_, e)| match e.kind {
                btrs::format::items::FileExtentKind::Regular { disk_bytenr, offset, .. } => Some(disk_bytenr + offset),
                _ => None,
            })
            .expect("/c has a regular extent")
    };
    for m in 0..2 {
        let (devid, phys) = locate(&imgs, c_logical + 8192, m);
        let h = std::fs::OpenOptions::new().read(true).write(true).open(image_of(&imgs, devid)).unwrap();
        h.write_all_at(&[0x77; 16], phys + 100).unwrap();
    }
    let d_logical = {
        let ent = fs.resolve("/d").unwrap();
        let ext = fs.file_extents(ent.id).unwrap();
        ext.iter()
            .find_map(|(_, e)| match e.kind {
                btrs::format::items::FileExtentKind::Regular { disk_bytenr, offset, .. } => Some(disk_bytenr + offset),
                _ => None,
            })
            .expect("/d has a regular extent")
    };
    drop(fs);
    let (devid, phys) = locate(&imgs, d_logical, 1);
    let g = std::fs::OpenOptions::new().read(true).write(true).open(image_of(&imgs, devid)).unwrap();
    g.write_all_at(&[0xee; 512], phys).unwrap();
    drop((f, g));
    let before = fingerprints(&imgs);

    let (code, rep, err) = scrub_json(&imgs[0], &[]);
    assert_eq!(code, 3, "{err}");
    let two: Vec<_> = findings(&rep).iter().filter(|f| f["kind"] == "two_histories" && f["logical"] == leaf).collect();
    assert_eq!(two.len(), 2, "both copies of the csum leaf are named two_histories: {rep}");
    assert!(findings(&rep).iter().any(|f| f["kind"] == "csum_all_copies"), "{rep}");
    // --fix-csum committed its checksums over the two histories (attacker's pass on c363b17).
    for extra in [
        &["--repair"][..],
        &["--repair", "--prefer-mirror", "1"],
        &["--repair", "--prefer-mirror", "2"],
        &["--fix-csum"],
        &["--repair", "--fix-csum"],
    ] {
        let (code, rep, err) = scrub_json(&imgs[0], extra);
        assert_eq!(code, 3, "{extra:?}: {err}");
        assert!(findings(&rep).iter().all(|f| f["repaired"] == false), "{extra:?} repaired something: {rep}");
        assert!(findings(&rep).iter().any(|f| f["kind"] == "two_histories"), "{extra:?}: {rep}");
        let said = if extra.contains(&"--repair") { "repaired nothing" } else { "rewrote no checksum" };
        assert!(err.contains(said), "{extra:?}: {err}");
        assert_eq!(fingerprints(&imgs), before, "scrub {extra:?} wrote to a set of two histories");
    }
}
