//! `btrs device add`, `btrs device remove`, `btrs balance --convert` and
//! `btrs resize` below the last stripe: chunks re-striped in place of their
//! logical ranges, judged by btrfs check, btrs scrub (identical mirrors) and
//! the kernel (mounted without `degraded`, read, written, scrubbed, fully
//! balanced; each RAID1 image alone mounted `degraded`), on sets made by btrs
//! and by mkfs.btrfs and the kernel; every refusal leaves the images as they
//! were.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::interop::{btrfs_check, interop_enabled, mkfs_btrfs_set, must, progs_for, Mounted};
use common::{btrs, ok, pseudo, reads_back, s, scrubs_clean};
use common::{judged, kernel_writes};

/// The files a set holds: (path in the image, bytes).
type Files = Vec<(String, Vec<u8>)>;

/// Checksummed, NODATASUM, inline and nested content, written by btrs.
fn fill(dir: &Path, img: &Path, extra: &[&str]) -> Files {
    let mut files = Vec::new();
    for (i, (path, len, flags)) in
        [("/big", 6_000_000usize, &[][..]), ("/nosum", 1_500_000, &["--nodatasum"][..]), ("/d/small", 300, &["-p"][..])].iter().enumerate()
    {
        let data = pseudo(*len, i as u64 + 11);
        let src = dir.join(format!("src{i}"));
        std::fs::write(&src, &data).unwrap();
        let mut args = vec!["write", s(img), path, "--from", s(&src)];
        args.extend_from_slice(flags);
        args.extend_from_slice(extra);
        ok(&args);
        files.push((path.to_string(), data));
    }
    files
}

/// The profiles of the chunks, as `btrfs inspect-internal dump-tree -t chunk` names them.
fn chunk_types(img: &Path) -> Vec<String> {
    let (c, out, err) = btrs(&["dump-tree", s(img), "--tree", "chunk"]);
    assert_eq!(c, 0, "{err}");
    out.lines().filter_map(|l| l.split_once(" type ").map(|(_, t)| t.trim().to_string())).filter(|t| !t.starts_with('0')).collect()
}

fn contents(imgs: &[PathBuf]) -> Vec<Vec<u8>> {
    imgs.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Each image of a RAID1 pair alone: btrs reads everything with
/// --degraded, and the kernel mounts it `degraded,ro` and reads everything.
fn each_alone(test: &str, set: &[PathBuf], files: &Files) {
    for (i, img) in set.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let alone = dir.path().join("alone.img");
        // A reflink-free copy: the original set stays as it is.
        std::fs::copy(img, &alone).unwrap();
        reads_back(&alone, files, &["--degraded"], &format!("image {} alone", i + 1));
        if !interop_enabled(test) {
            continue;
        }
        let mnt = dir.path().join("mnt");
        // The whole set was checked by `judged`.
        let m = Mounted::mount_checked_elsewhere(&mnt, std::slice::from_ref(&alone), "degraded,ro")
            .unwrap_or_else(|e| panic!("image {} alone: mount -o degraded: {e}", i + 1));
        for (path, data) in files {
            assert!(std::fs::read(mnt.join(&path[1..])).unwrap() == *data, "image {} alone: the kernel reads {path} differently", i + 1);
        }
        m.unmount().unwrap();
    }
}

/// A single image (DUP metadata, single data) gets a second device and
/// becomes a RAID1 pair.
fn dup_to_raid1(test: &str, dir: &Path, first: PathBuf, files: &Files) {
    let second = dir.join("second.img");
    let out = ok(&["device", "add", s(&first), s(&second)]);
    assert!(out.contains("added devid 2"), "{out}");
    let set = vec![first.clone(), second.clone()];
    // The set with an empty new device is valid as it is.
    if progs_for(test, true) {
        btrfs_check(&set, &[]).unwrap_or_else(|e| panic!("after device add: {e}"));
    }
    reads_back(&first, files, &[], "after device add");
    let out = ok(&["balance", s(&first), "--convert", "data=raid1,metadata=raid1"]);
    assert!(out.contains("chunks converted"), "{out}");
    let types = chunk_types(&first);
    assert!(!types.is_empty() && types.iter().all(|t| t.ends_with("|RAID1")), "chunk types after convert: {types:?}");
    judged(test, &set, files, "dup to raid1");
    each_alone(test, &set, files);
}

#[test]
fn a_btrs_image_gets_a_device_and_becomes_a_raid1_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("one.img");
    ok(&["mkfs", "-b", "256M", s(&img)]);
    let files = fill(d, &img, &[]);
    dup_to_raid1("a_btrs_image_gets_a_device_and_becomes_a_raid1_pair", d, img, &files);
}

/// A mkfs.btrfs image the kernel filled (and btrs wrote to).
#[test]
fn a_kernel_filled_image_gets_a_device_and_becomes_a_raid1_pair() {
    let test = "a_kernel_filled_image_gets_a_device_and_becomes_a_raid1_pair";
    if !progs_for(test, true) || !interop_enabled(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("k.img");
    std::fs::File::create(&img).unwrap().set_len(320 << 20).unwrap();
    must(Command::new("mkfs.btrfs").arg("-q").arg(&img));
    let kernel = pseudo(20_000_000, 5);
    {
        let mnt = d.join("mnt");
        let m = Mounted::mount(&mnt, std::slice::from_ref(&img), "").unwrap();
        std::fs::write(mnt.join("kernel"), &kernel).unwrap();
        m.unmount().unwrap();
    }
    let mut files = fill(d, &img, &[]);
    files.push(("/kernel".into(), kernel));
    dup_to_raid1(test, d, img, &files);
}

/// RAID1C3 on three: removing one is refused (the profile needs three),
/// images unchanged; converted to RAID1, a device goes and its superblocks
/// with it.
fn raid1c3_to_raid1_on_two(test: &str, imgs: &[PathBuf], files: &Files) {
    let before = contents(imgs);
    let (c, _, err) = btrs(&["device", "remove", s(&imgs[0]), "2"]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("raid1c3") && err.contains("convert"), "{err}");
    assert!(contents(imgs) == before, "a refused remove changed the images");
    let out = ok(&["balance", s(&imgs[0]), "--convert", "data=raid1,metadata=raid1"]);
    assert!(out.contains("chunks converted"), "{out}");
    let out = ok(&["device", "remove", s(&imgs[0]), s(&imgs[1])]);
    assert!(out.contains("removed devid 2"), "{out}");
    // No btrfs signature left on the removed image.
    let removed = std::fs::read(&imgs[1]).unwrap();
    for off in [65536usize, 64 << 20] {
        assert!(&removed[off + 64..off + 72] != b"_BHRfS_M", "the removed image still has a superblock at {off}");
    }
    let set = vec![imgs[0].clone(), imgs[2].clone()];
    let types = chunk_types(&set[0]);
    assert!(types.iter().all(|t| t.ends_with("|RAID1")), "{types:?}");
    judged(test, &set, files, "raid1c3 to raid1 on two");
}

#[test]
fn a_btrs_raid1c3_set_loses_a_device_after_converting() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs: Vec<PathBuf> = (1..=3).map(|i| d.join(format!("dev{i}.img"))).collect();
    let mut args = vec!["mkfs", "-b", "256M", "-d", "raid1c3", "-m", "raid1c3"];
    args.extend(imgs.iter().map(|p| s(p)));
    ok(&args);
    let files = fill(d, &imgs[0], &[]);
    raid1c3_to_raid1_on_two("a_btrs_raid1c3_set_loses_a_device_after_converting", &imgs, &files);
}

#[test]
fn a_mkfs_btrfs_raid1c3_set_loses_a_device_after_converting() {
    let test = "a_mkfs_btrfs_raid1c3_set_loses_a_device_after_converting";
    if !progs_for(test, true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs = mkfs_btrfs_set(d, "p", 3, "raid1c3");
    let files = fill(d, &imgs[0], &[]);
    raid1c3_to_raid1_on_two(test, &imgs, &files);
}

/// The same on a set made by mkfs.btrfs and filled by the kernel (and btrs).
#[test]
fn a_kernel_filled_raid1c3_set_loses_a_device_after_converting() {
    let test = "a_kernel_filled_raid1c3_set_loses_a_device_after_converting";
    if !progs_for(test, true) || !interop_enabled(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs = mkfs_btrfs_set(d, "k", 3, "raid1c3");
    let mut files = vec![kernel_writes(d, &imgs, "kernel", 31)];
    files.extend(fill(d, &imgs[0], &[]));
    raid1c3_to_raid1_on_two(test, &imgs, &files);
}

/// RAID10 over four becomes RAID1, then two devices go.
fn raid10_to_raid1_on_two(test: &str, imgs: &[PathBuf], files: &Files) {
    // Not to raid1c3 on three... nor below raid10's four devices.
    let before = contents(imgs);
    let (c, _, err) = btrs(&["device", "remove", s(&imgs[0]), "4"]);
    assert_eq!(c, 1, "{err}");
    assert!(contents(imgs) == before);
    ok(&["balance", s(&imgs[0]), "--convert", "data=raid1,metadata=raid1"]);
    ok(&["device", "remove", s(&imgs[0]), "4"]);
    ok(&["device", "remove", s(&imgs[0]), "3"]);
    let set = vec![imgs[0].clone(), imgs[1].clone()];
    let types = chunk_types(&set[0]);
    assert!(types.iter().all(|t| t.ends_with("|RAID1")), "{types:?}");
    judged(test, &set, files, "raid10 of four to raid1 on two");
}

#[test]
fn a_raid10_set_of_four_becomes_raid1_on_two() {
    let test = "a_raid10_set_of_four_becomes_raid1_on_two";
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs: Vec<PathBuf> = (1..=4).map(|i| d.join(format!("dev{i}.img"))).collect();
    let mut args = vec!["mkfs", "-b", "256M", "-d", "raid10", "-m", "raid10"];
    args.extend(imgs.iter().map(|p| s(p)));
    ok(&args);
    let files = fill(d, &imgs[0], &[]);
    raid10_to_raid1_on_two(test, &imgs, &files);
}

#[test]
fn a_kernel_filled_raid10_set_of_four_becomes_raid1_on_two() {
    let test = "a_kernel_filled_raid10_set_of_four_becomes_raid1_on_two";
    if !progs_for(test, true) || !interop_enabled(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs = mkfs_btrfs_set(d, "k", 4, "raid10");
    let mut files = vec![kernel_writes(d, &imgs, "kernel", 41)];
    files.extend(fill(d, &imgs[0], &[]));
    raid10_to_raid1_on_two(test, &imgs, &files);
}

/// Offsets and lengths of the dev extents of devid 1.
fn dev_extents(img: &Path) -> Vec<(u64, u64)> {
    let (c, out, err) = btrs(&["dump-tree", s(img), "--tree", "dev"]);
    assert_eq!(c, 0, "{err}");
    let mut v = Vec::new();
    let mut at = None;
    for l in out.lines() {
        if let Some(rest) = l.split_once("key (1 DEV_EXTENT ").map(|x| x.1) {
            at = rest.split(')').next().and_then(|n| n.trim().parse::<u64>().ok());
        } else if let (Some(o), Some(len)) = (at, l.split_once(" length ").and_then(|x| x.1.trim().parse::<u64>().ok())) {
            v.push((o, len));
            at = None;
        }
    }
    v
}

/// A 1 GiB image the kernel wrote 300 MB to, then deleted it (the empty
/// chunks gone): `resize min` moves the last data chunk down into the hole
/// and cuts the file to the end of the last stripe.
#[test]
fn resize_min_moves_stripes_down_on_a_kernel_filled_image() {
    let test = "resize_min_moves_stripes_down_on_a_kernel_filled_image";
    if !progs_for(test, true) || !interop_enabled(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("k.img");
    std::fs::File::create(&img).unwrap().set_len(1 << 30).unwrap();
    must(Command::new("mkfs.btrfs").arg("-q").arg(&img));
    let keep = pseudo(100_000_000, 3);
    {
        let mnt = d.join("mnt");
        let m = Mounted::mount(&mnt, std::slice::from_ref(&img), "").unwrap();
        std::fs::write(mnt.join("gone"), pseudo(300_000_000, 4)).unwrap();
        must(&mut Command::new("sync"));
        std::fs::write(mnt.join("keep"), &keep).unwrap();
        must(&mut Command::new("sync"));
        std::fs::remove_file(mnt.join("gone")).unwrap();
        must(&mut Command::new("sync"));
        must(Command::new("btrfs").args(["balance", "start", "-dusage=0"]).arg(&mnt));
        m.unmount().unwrap();
    }
    let last_end = |img: &Path| dev_extents(img).iter().map(|(o, l)| o + l).max().unwrap();
    let before_end = last_end(&img);
    let out = ok(&["resize", s(&img), "min", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(r["moved"]["chunks_moved"].as_u64().unwrap() >= 1, "{out}");
    let len = std::fs::metadata(&img).unwrap().len();
    assert!(len < before_end, "min did not go below the old last stripe ({len} >= {before_end})");
    assert!(last_end(&img) <= len, "a stripe lies past the end");
    assert_eq!(r["new_size"].as_u64(), Some(len));
    let files: Files = vec![("/keep".into(), keep)];
    btrfs_check(std::slice::from_ref(&img), &[]).unwrap_or_else(|e| panic!("after resize min: {e}"));
    scrubs_clean(&img, "after resize min");
    reads_back(&img, &files, &[], "after resize min");
    // Full now. The kernel's balance moves the 95 MB extent whole, into
    // one new chunk, whose size it bounds by a tenth of the filesystem:
    // grow it back for that.
    ok(&["resize", s(&img), "+1G"]);
    judged(test, &[img], &files, "after resize min and +1G");
}

/// A 1 GiB btrs image with about 100 MiB used: `resize min` leaves it no
/// longer than the end of its last stripe, check-clean; `+1G` grows it.
#[test]
fn resize_min_on_a_btrs_image_ends_at_its_last_stripe() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("one.img");
    ok(&["mkfs", "-b", "1G", s(&img)]);
    let data = pseudo(100 << 20, 8);
    let src = d.join("src");
    std::fs::write(&src, &data).unwrap();
    ok(&["write", s(&img), "/data", "--from", s(&src)]);
    ok(&["resize", s(&img), "min"]);
    let len = std::fs::metadata(&img).unwrap().len();
    let end = dev_extents(&img).iter().map(|(o, l)| o + l).max().unwrap();
    assert!(len <= end.next_multiple_of(1 << 20) && len >= end, "file {len}, last stripe ends at {end}");
    let files: Files = vec![("/data".into(), data)];
    if progs_for("resize_min_on_a_btrs_image_ends_at_its_last_stripe", false) {
        btrfs_check(std::slice::from_ref(&img), &[]).unwrap();
    }
    reads_back(&img, &files, &[], "after resize min");
    ok(&["resize", s(&img), "+1G"]);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), len + (1 << 30));
    judged("resize_min_on_a_btrs_image_ends_at_its_last_stripe", &[img], &files, "after resize +1G");
}

/// What cannot be done is refused before anything is written.
#[test]
fn refusals_leave_the_images_as_they_were() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("one.img");
    ok(&["mkfs", "-b", "256M", s(&img)]);
    let other = d.join("other.img");
    ok(&["mkfs", "-b", "256M", s(&other)]);
    fill(d, &img, &[]);
    let all = vec![img.clone(), other.clone()];
    let before = contents(&all);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["balance", s(&img), "--convert", "data=raid1"], 1, "needs at least 2 devices"),
        (vec!["balance", s(&img), "--convert", "data=raid5"], 2, "RAID5"),
        (vec!["balance", s(&img), "--convert", "data=raid1,data=dup"], 2, "twice"),
        (vec!["balance", s(&img)], 2, "--convert"),
        (vec!["device", "remove", s(&img), "1"], 1, "only device"),
        (vec!["device", "remove", s(&img), "7"], 1, "no devid 7"),
        (vec!["device", "remove", s(&img), s(&other)], 1, "no device of the filesystem"),
        (vec!["device", "add", s(&img), s(&other)], 1, "already holds a btrfs superblock"),
        (vec!["device", "add", s(&img), s(&img)], 1, "already a device of the set"),
        (vec!["device", "add", s(&img)], 2, "required"),
    ];
    for (args, code, says) in cases {
        let (c, _, err) = btrs(&args);
        assert_eq!(c, code, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(contents(&all) == before, "{args:?} changed an image");
    }
    // One file under two names; a file elsewhere than the set's directory
    // (later commands would miss it); a size that would change a file.
    let blank = d.join("blank.img");
    std::fs::File::create(&blank).unwrap().set_len(200 << 20).unwrap();
    let twin = d.join("twin.img");
    std::fs::hard_link(&blank, &twin).unwrap();
    let away = tempfile::tempdir().unwrap();
    let far = away.path().join("far.img");
    for (args, says) in [
        (vec!["device", "add", s(&img), s(&blank), s(&twin)], "given twice"),
        (vec!["device", "add", s(&img), s(&far)], "where the set's images are found"),
        (vec!["device", "add", s(&img), s(&blank), "--size", "300M"], "would change it"),
    ] {
        let (c, _, err) = btrs(&args);
        assert_eq!(c, 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(contents(&all) == before, "{args:?} changed an image");
    }
    assert!(!far.exists());
    assert_eq!(std::fs::metadata(&blank).unwrap().len(), 200 << 20);
    assert!(std::fs::read(&blank).unwrap().iter().all(|&b| b == 0), "a refused add wrote into {}", blank.display());
    // Too small, and a missing directory: no file is left behind.
    let small = d.join("small.img");
    let (c, _, err) = btrs(&["device", "add", s(&img), s(&small), "--size", "1M"]);
    assert_eq!(c, 1, "{err}");
    assert!(!small.exists(), "a refused add left {}", small.display());
    let (c, _, _) = btrs(&["device", "add", s(&img), s(&d.join("no/such.img"))]);
    assert_eq!(c, 1);
    assert!(contents(&all) == before);
    // Shrinking below what the stripes need names the minimum.
    let (c, _, err) = btrs(&["resize", s(&img), "2M"]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("cannot be smaller than"), "{err}");
    assert!(contents(&all) == before);
}

/// Where `needle` first lies in the file at `p`.
fn find(p: &Path, needle: &[u8]) -> usize {
    let hay = std::fs::read(p).unwrap();
    hay.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("pattern not in {}", p.display()))
}

fn flip(p: &Path, at: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at as u64).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, at as u64).unwrap();
}

/// Going to fewer copies keeps the stripes it can, and those are checked
/// first: a data sector and a tree block bad on the kept copy only are
/// taken from the dropped one (raid1 to single keeps devid 1's stripe).
#[test]
fn dropping_copies_keeps_the_good_one() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("dev{i}.img"))).collect();
    ok(&["mkfs", "-b", "256M", "-d", "raid1", "-m", "raid1", s(&imgs[0]), s(&imgs[1])]);
    let files = fill(d, &imgs[0], &[]);
    // The name is in the FS tree leaf: a byte of that leaf, on devid 1 only.
    let name = b"a-name-to-find-in-the-leaf";
    let src = d.join("named");
    std::fs::write(&src, b"x").unwrap();
    ok(&["write", s(&imgs[0]), &format!("/{}", std::str::from_utf8(name).unwrap()), "--from", s(&src)]);
    flip(&imgs[0], find(&imgs[0], name));
    // A sector of /big, on devid 1 only.
    let big = &files[0].1;
    flip(&imgs[0], find(&imgs[0], &big[8192..8192 + 512]) + 7);
    let (c, out, _) = btrs(&["scrub", s(&imgs[0]), "--no-progress"]);
    assert_eq!(c, 3, "the damage is there: {out}");
    let out = ok(&["balance", s(&imgs[0]), "--convert", "data=single,metadata=single", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(r["repaired"].as_u64().unwrap() >= 2, "{out}");
    let types = chunk_types(&imgs[0]);
    assert!(types.iter().all(|t| !t.contains("RAID1")), "{types:?}");
    judged("dropping_copies_keeps_the_good_one", &imgs, &files, "raid1 to single");
}

/// Copies of a NODATASUM sector that differ cannot both be kept by fewer
/// copies, and nothing tells which is right: refused, images unchanged.
#[test]
fn dropping_differing_unchecksummed_copies_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("dev{i}.img"))).collect();
    ok(&["mkfs", "-b", "256M", "-d", "raid1", "-m", "raid1", s(&imgs[0]), s(&imgs[1])]);
    let files = fill(d, &imgs[0], &[]);
    let nosum = &files[1].1;
    flip(&imgs[1], find(&imgs[1], &nosum[4096..4096 + 512]) + 3);
    let before = contents(&imgs);
    let (c, _, err) = btrs(&["balance", s(&imgs[0]), "--convert", "data=single"]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("no checksum") && err.contains("differ"), "{err}");
    assert!(contents(&imgs) == before, "a refused conversion changed the images");
    // Keeping both copies loses nothing: allowed.
    ok(&["balance", s(&imgs[0]), "--convert", "data=dup"]);
    let (c, out, _) = btrs(&["scrub", s(&imgs[0]), "--no-progress"]);
    assert_eq!(c, 3, "the difference is still reported: {out}");
}

/// A single image whose free space is all in empty chunks (written, then
/// deleted): converting data to dup needs twice the room, which removing
/// the empty chunks (and cutting big ones) makes.
#[test]
fn a_converting_balance_makes_room_from_empty_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("one.img");
    ok(&["mkfs", "-b", "256M", s(&img)]);
    let huge = d.join("huge");
    std::fs::write(&huge, pseudo(150_000_000, 21)).unwrap();
    ok(&["write", s(&img), "/huge", "--from", s(&huge)]);
    let files = fill(d, &img, &[]);
    ok(&["rm", s(&img), "/huge"]);
    let out = ok(&["balance", s(&img), "--convert", "data=dup", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(r["chunks_removed"].as_u64().unwrap() + r["chunks_cut"].as_u64().unwrap() > 0, "no room was made: {out}");
    let types = chunk_types(&img);
    assert!(types.iter().filter(|t| t.starts_with("DATA")).all(|t| t == "DATA|DUP"), "{types:?}");
    judged("a_converting_balance_makes_room_from_empty_chunks", &[img], &files, "data to dup with room made");
}

/// A 64 MiB RAID1 data chunk on 160 MiB devices cannot become DUP whole
/// (twice its length on one device): it is cut in two where no extent
/// spans the cut, the empty half removed, the rest converted.
#[test]
fn a_chunk_too_big_for_its_new_profile_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("dev{i}.img"))).collect();
    ok(&["mkfs", "-b", "160M", "-d", "raid1", "-m", "raid1", s(&imgs[0]), s(&imgs[1])]);
    let files = fill(d, &imgs[0], &[]);
    let out = ok(&["balance", s(&imgs[0]), "--convert", "data=dup", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(r["chunks_cut"].as_u64().unwrap() > 0, "nothing was cut: {out}");
    let types = chunk_types(&imgs[0]);
    assert!(types.iter().filter(|t| t.starts_with("DATA")).all(|t| t == "DATA|DUP"), "{types:?}");
    judged("a_chunk_too_big_for_its_new_profile_is_cut", &imgs, &files, "raid1 to dup, cut");
}

/// A remove stopped after its commit and before its wipe leaves an image
/// with a superblock of the filesystem that no chunk tree lists: every
/// command names it, and `device remove` by its devid wipes it.
#[test]
fn an_image_a_remove_left_behind_is_named_and_wiped() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs: Vec<PathBuf> = (1..=3).map(|i| d.join(format!("dev{i}.img"))).collect();
    ok(&["mkfs", "-b", "200M", "-d", "raid1", "-m", "raid1", s(&imgs[0]), s(&imgs[1]), s(&imgs[2])]);
    let files = fill(d, &imgs[0], &[]);
    // The image as it was before the remove wiped it.
    let away = tempfile::tempdir().unwrap();
    let kept = away.path().join("dev3.img");
    std::fs::copy(&imgs[2], &kept).unwrap();
    ok(&["device", "remove", s(&imgs[0]), "3"]);
    std::fs::copy(&kept, &imgs[2]).unwrap();
    let (c, _, err) = btrs(&["ls", s(&imgs[0]), "/"]);
    assert_eq!(c, 0, "{err}");
    assert!(err.contains("dev3.img") && err.contains("no device of it"), "{err}");
    let out = ok(&["device", "remove", s(&imgs[0]), "3"]);
    assert!(out.contains("removed devid 3"), "{out}");
    let left = std::fs::read(&imgs[2]).unwrap();
    assert!(&left[65536 + 64..65536 + 72] != b"_BHRfS_M", "still a superblock");
    let (_, _, err) = btrs(&["ls", s(&imgs[0]), "/"]);
    assert!(!err.contains("no device of it"), "{err}");
    judged("an_image_a_remove_left_behind_is_named_and_wiped", &imgs[..2], &files, "after the leftover was wiped");
}
