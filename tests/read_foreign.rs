//! The read path against images made by mkfs.btrfs and the Linux kernel:
//! `btrs extract` of every foreign fixture must equal the manifest of the
//! kernel's view taken while it was mounted.

mod common;

use std::process::Command;

use common::fixtures::*;

fn btrs() -> Command {
    common::btrs_cmd()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Without root, ownership and device nodes cannot be reproduced on the host;
/// compare what can be.
fn drop_root_only(v: &mut serde_json::Value) {
    if is_root() {
        return;
    }
    if let Some(entries) = v["entries"].as_array_mut() {
        entries.retain(|e| !matches!(e["type"].as_str(), Some("chr" | "blk")));
        for e in entries {
            if let Some(o) = e.as_object_mut() {
                o.remove("uid");
                o.remove("gid");
            }
        }
    }
}

fn extract_and_compare(name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign(name, &tmp.path().join("img"));
    let dest = tmp.path().join("out");
    let out = btrs().arg("extract").arg(&imgs[0]).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{name}: extract failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut expected = expected_entries(name);
    let mut actual = walk_manifest(&dest);
    let volatile = volatile_mtime_paths(name);
    strip_mtime(&mut expected, &volatile);
    strip_mtime(&mut actual, &volatile);
    drop_root_only(&mut expected);
    drop_root_only(&mut actual);
    assert_manifest_eq(&expected, &actual);
}

macro_rules! fixture_test {
    ($fn:ident, $name:expr) => {
        #[test]
        fn $fn() {
            extract_and_compare($name);
        }
    };
}

fixture_test!(extract_single, "single");
fixture_test!(extract_raid1_xxhash_4k, "raid1-xxhash-4k");
fixture_test!(extract_raid1c3_sha256, "raid1c3-sha256");
fixture_test!(extract_raid10_blake2, "raid10-blake2");
fixture_test!(extract_raid0, "raid0");
fixture_test!(extract_mixed_noholes, "mixed-noholes");
fixture_test!(extract_compress, "compress");
fixture_test!(extract_subvol, "subvol");

#[test]
fn every_fixture_has_a_test() {
    let tested = ["single", "raid1-xxhash-4k", "raid1c3-sha256", "raid10-blake2", "raid0", "mixed-noholes", "compress", "subvol"];
    for n in foreign_names() {
        assert!(tested.contains(&n.as_str()), "fixture {n} has no extract test");
    }
}

#[test]
fn cat_and_ls_agree_with_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("raid1c3-sha256", tmp.path());
    let m = expected_entries("raid1c3-sha256");
    let mut checked = 0;
    for e in m["entries"].as_array().unwrap() {
        if e["type"] != "file" {
            continue;
        }
        let path = e["path"].as_str().unwrap();
        let out = btrs().arg("cat").arg(&imgs[0]).arg(path).output().unwrap();
        assert!(out.status.success(), "cat {path}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout.len() as u64, e["size"].as_u64().unwrap(), "{path} size");
        use sha2::Digest;
        assert_eq!(hex(&sha2::Sha256::digest(&out.stdout)), e["sha256"].as_str().unwrap(), "{path} content");
        checked += 1;
    }
    assert!(checked > 0);
    let out = btrs().args(["ls", "-l"]).arg(&imgs[0]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for e in m["entries"].as_array().unwrap() {
        let p = e["path"].as_str().unwrap();
        if !p.is_empty() && !p.contains('/') {
            assert!(text.lines().any(|l| l.ends_with(p) || l.contains(&format!(" {p} -> "))), "ls -l lacks {p}:\n{text}");
        }
    }
}

#[test]
fn devices_found_named_and_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("raid1-xxhash-4k", tmp.path());
    // Found automatically in the same directory.
    let out = btrs().arg("ls").arg(&imgs[1]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Missing device: moved away -> error naming devid 2, unless --degraded.
    let away = tempfile::tempdir().unwrap();
    let moved = away.path().join("dev2.img");
    std::fs::rename(&imgs[1], &moved).unwrap();
    let out = btrs().arg("ls").arg(&imgs[0]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing devid(s) 2"), "{err}");
    // Degraded: RAID1 still reads every file from the remaining copy.
    let dest = tmp.path().join("out");
    let out = btrs().arg("--degraded").arg("extract").arg(&imgs[0]).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut expected = expected_entries("raid1-xxhash-4k");
    let mut actual = walk_manifest(&dest);
    drop_root_only(&mut expected);
    drop_root_only(&mut actual);
    assert_manifest_eq(&expected, &actual);
    // Named explicitly with --device from elsewhere.
    let out = btrs().arg("ls").arg(&imgs[0]).arg("--device").arg(&moved).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Two files claiming the same devid.
    std::fs::copy(&imgs[0], tmp.path().join("dev1-copy.img")).unwrap();
    let out = btrs().arg("ls").arg(&imgs[0]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("both claim to be devid 1"), "{err}");
}

#[test]
fn degraded_raid0_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("raid0", tmp.path());
    std::fs::remove_file(&imgs[1]).unwrap();
    let dest = tmp.path().join("out");
    let out = btrs().arg("--degraded").arg("extract").arg(&imgs[0]).arg(&dest).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "no copy remains for half the data");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("devid 2"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
