//! `btrs resize`: a device image grown or shrunk offline, judged by btrfs
//! check, btrs scrub and the kernel (which must use the grown space); every
//! refusal leaves the images as they were.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::interop::{btrfs_check, interop_enabled, progs_for, Mounted};
use common::interop::{root_for, Tmpfs};
use common::{btrs, ok, pseudo, s};

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn checked(test: &str, imgs: &[PathBuf], what: &str) {
    if progs_for(test, imgs.len() > 1) {
        btrfs_check(imgs, &[]).unwrap_or_else(|e| panic!("{what}: btrfs check: {e}"));
    }
    let (c, out, err) = btrs(&["scrub", s(&imgs[0]), "--no-progress"]);
    assert!(c == 0 && out.contains("no errors found"), "{what}: scrub: {out}{err}");
}

fn write(dir: &Path, img: &Path, path: &str, data: &[u8]) {
    let src = dir.join("src.bin");
    std::fs::write(&src, data).unwrap();
    ok(&["write", s(img), path, "--from", s(&src)]);
}

fn reads(img: &Path, path: &str, data: &[u8], what: &str) {
    let out = common::btrs_cmd().args(["cat", s(img), path]).output().unwrap();
    assert!(out.status.success() && out.stdout == data, "{what}: {path}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A 128 MiB image grown by 256 MiB: check- and scrub-clean, and the kernel
/// writes a file larger than the old image could hold; btrs reads it after.
#[test]
fn a_grown_image_gives_the_kernel_the_new_space() {
    let test = "a_grown_image_gives_the_kernel_the_new_space";
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("a.img");
    ok(&["mkfs", "-b", "128M", "-d", "single", "-m", "dup", s(&img)]);
    let small = pseudo(5_000_000, 1);
    write(d, &img, "/small", &small);
    let out = ok(&["resize", s(&img), "+256M"]);
    assert!(out.contains("from 134217728 to 402653184"), "{out}");
    assert_eq!(len(&img), 384 << 20);
    let imgs = vec![img.clone()];
    checked(test, &imgs, "after growing");
    reads(&img, "/small", &small, "after growing");
    // btrs itself allocates in the new space.
    let big = pseudo(150 << 20, 2);
    write(d, &img, "/big", &big);
    checked(test, &imgs, "after btrs filled the new space");
    if !interop_enabled(test) {
        return;
    }
    let mnt = d.join("mnt");
    let m = Mounted::mount(&mnt, &imgs, "").expect("mount");
    let more = pseudo(120 << 20, 3);
    std::fs::write(mnt.join("more"), &more).unwrap();
    m.unmount().expect("umount");
    btrfs_check(&imgs, &[]).unwrap_or_else(|e| panic!("btrfs check after the kernel: {e}"));
    reads(&img, "/more", &more, "after the kernel wrote");
    reads(&img, "/big", &big, "after the kernel wrote");
}

/// Shrinking: `min` cuts the image to the end of its last chunk stripe;
/// below that, and any spec that does not parse, is refused with the image
/// unchanged; `max` after the file was made longer takes its length.
#[test]
fn shrinking_stops_at_the_last_stripe_and_refusals_change_nothing() {
    let test = "shrinking_stops_at_the_last_stripe_and_refusals_change_nothing";
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("a.img");
    ok(&["mkfs", "-b", "256M", "-d", "single", "-m", "dup", s(&img)]);
    let data = pseudo(3_000_000, 4);
    write(d, &img, "/f", &data);
    let out = ok(&["resize", s(&img), "--json", "min"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let min = r["new_size"].as_u64().unwrap();
    assert!(min < 256 << 20 && min == r["min_size"].as_u64().unwrap(), "{out}");
    assert_eq!(len(&img), min);
    let imgs = vec![img.clone()];
    checked(test, &imgs, "after shrinking to min");
    reads(&img, "/f", &data, "after shrinking to min");
    let before = std::fs::read(&img).unwrap();
    for (spec, code, says) in [
        ("-1M", 1, "cannot be smaller than"),
        ("1M", 1, "cannot be smaller than"),
        ("2:+1M", 1, "no devid 2"),
        ("0:+1M", 2, "devid"),
        ("+", 2, "size"),
        ("5X", 2, "suffix"),
        ("+16E", 2, "too large"),
    ] {
        let (c, _, err) = btrs(&["resize", s(&img), spec]);
        assert_eq!(c, code, "{spec}: {err}");
        assert!(err.contains(says), "{spec}: {err}");
        assert!(std::fs::read(&img).unwrap() == before, "{spec}: a refused resize changed the image");
    }
    let out = ok(&["resize", s(&img), "min"]);
    assert!(out.contains("already"), "{out}");
    // Made longer by other means, then taken with max.
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(300 << 20).unwrap();
    ok(&["resize", s(&img), "max"]);
    checked(test, &imgs, "after max");
    let (c, out, _) = btrs(&["dump-super", s(&img)]);
    assert!(c == 0 && out.contains(&format!("dev_item.total_bytes\t{}", 300u64 << 20)), "{out}");
}

/// One device of a RAID1 pair grown: only its image and its size change.
#[test]
fn one_device_of_a_pair_grows() {
    let test = "one_device_of_a_pair_grows";
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("dev{i}.img"))).collect();
    ok(&["mkfs", "-b", "128M", "-d", "raid1", "-m", "raid1", s(&imgs[0]), s(&imgs[1])]);
    let data = pseudo(2_000_000, 5);
    write(d, &imgs[0], "/f", &data);
    ok(&["resize", s(&imgs[0]), "2:+64M"]);
    assert_eq!((len(&imgs[0]), len(&imgs[1])), (128 << 20, 192 << 20));
    checked(test, &imgs, "after growing devid 2");
    reads(&imgs[0], "/f", &data, "after growing devid 2");
}

/// An image file longer than its device (a grow killed after the file grew,
/// a shrink killed before the cut, or `truncate -s`) is valid: the
/// superblock copies past the device's end are neither written by a commit
/// nor scrubbed, as the kernel has it. (Attacker's pass on d305348: scrub
/// reported the copy at 64 MiB past a 30 MiB device as bad, exit 3, and a
/// commit wrote it, which the kernel then left behind.)
#[test]
fn a_file_longer_than_its_device_is_valid() {
    let test = "a_file_longer_than_its_device_is_valid";
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("a.img");
    ok(&["mkfs", "-b", "128M", "-d", "single", "-m", "single", s(&img)]);
    let data = pseudo(1_000_000, 6);
    write(d, &img, "/f", &data);
    ok(&["resize", s(&img), "min"]);
    let min = len(&img);
    assert!(min < 64 << 20, "min {min} is past the copy at 64 MiB: the test needs a device below it");
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(128 << 20).unwrap();
    let imgs = vec![img.clone()];
    checked(test, &imgs, "file longer than the device");
    write(d, &img, "/g", &data);
    checked(test, &imgs, "after a commit on it");
    let mut sb = vec![0u8; 8];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(&img).unwrap().read_exact_at(&mut sb, (64 << 20) + 64).unwrap();
    assert_ne!(&sb, b"_BHRfS_M", "a commit wrote a superblock copy past the device's end");
    reads(&img, "/f", &data, "file longer than the device");
}

/// Growing onto a full disk: refused before anything is committed (the new
/// superblock copies' space is allocated first), the image byte-identical.
/// (Attacker's pass on d305348: the primary superblock took the new size,
/// the copy at 64 MiB failed, and the file was cut back under it.)
#[test]
fn growing_on_a_full_disk_changes_nothing() {
    if !root_for("growing_on_a_full_disk_changes_nothing", "a small tmpfs") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    let _guard = Tmpfs::mount(&small, "48M");
    let img = small.join("i.img");
    ok(&["mkfs", "-b", "40M", "-d", "single", "-m", "single", s(&img)]);
    write(tmp.path(), &img, "/f", &pseudo(20_000_000, 7));
    // Fill the rest of the tmpfs.
    let fill = small.join("fill");
    let _ = Command::new("dd").args(["if=/dev/zero", "bs=1M", "count=100"]).arg(format!("of={}", s(&fill))).output();
    let before = std::fs::read(&img).unwrap();
    let (c, _, err) = btrs(&["resize", s(&img), "+100M"]);
    assert_eq!(c, 1, "{err}");
    assert!(std::fs::read(&img).unwrap() == before, "a failed grow changed the image: {err}");
    assert_eq!(len(&img), 40 << 20);
}
