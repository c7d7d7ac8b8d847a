//! `btrs fixture`: every fixture is reproducible byte for byte, clean ones pass
//! `btrfs check` and mount with exactly the manifest's files, and `btrs scrub`
//! finds exactly the damage the manifest promises. Runs the real binary.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::interop::{btrfs_check, interop_enabled, Mounted};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn btrs(args: &[&str]) -> (i32, String, String) {
    let out = common::btrs_cmd().args(args).output().expect("running btrs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn names() -> Vec<String> {
    let (code, out, err) = btrs(&["fixture", "list"]);
    assert_eq!(code, 0, "fixture list: {err}");
    // Groups (made into subdirectories) are tested on their own.
    out.lines().filter(|l| !l.contains("(group)")).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// Make fixture `name` in `dir` (a separate process each time) and load its manifest.
fn make(name: &str, dir: &Path) -> Value {
    let d = dir.to_str().expect("utf-8 path");
    let (code, _, err) = btrs(&["fixture", name, d, "--seed", "42"]);
    assert_eq!(code, 0, "fixture {name}: {err}");
    let text = std::fs::read(dir.join("manifest.json")).expect("manifest.json");
    serde_json::from_slice(&text).expect("manifest is JSON")
}

fn images(dir: &Path, m: &Value) -> Vec<PathBuf> {
    m["devices"].as_array().expect("devices").iter().map(|d| dir.join(d.as_str().expect("device name"))).collect()
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (std::fs::File::open(a).expect("open"), std::fs::File::open(b).expect("open"));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).expect("read");
        let mut nb = 0;
        while nb < na {
            let n = fb.read(&mut bb[nb..na]).expect("read");
            if n == 0 {
                return false;
            }
            nb += n;
        }
        if na == 0 {
            return fb.read(&mut bb[..1]).expect("read") == 0;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
    }
}

const REQUIRED: [&str; 17] = [
    "raid1-clean",
    "dup-clean",
    "raid1c3-clean",
    "raid1-csum-crc32c",
    "raid1-csum-xxhash",
    "raid1-csum-sha256",
    "raid1-csum-blake2",
    "raid1-compressed",
    "raid1-deep-tree",
    "raid1-many-files",
    "raid1-nodatasum-mismatch",
    "raid1-csum-error",
    "raid1-stale-csum",
    "raid1-metadata-error",
    "raid1-super-error",
    "raid1c3-majority",
    "raid1-degraded",
];

#[test]
fn list_names_every_fixture_and_bad_requests_fail_cleanly() {
    let listed = names();
    for n in REQUIRED {
        assert!(listed.iter().any(|l| l == n), "{n} not in `btrs fixture list`: {listed:?}");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("x");
    let (code, out, err) = btrs(&["fixture", "no-such-fixture", d.to_str().expect("utf-8")]);
    // A usage error: the name is checked against the list before anything else.
    assert_eq!(code, 2, "unknown fixture: {out}{err}");
    assert!(err.contains("no-such-fixture") && !err.contains("panicked"), "{err}");
    assert!(!d.exists(), "nothing is created for an unknown name");
    // A non-empty DIR is refused and left alone.
    std::fs::create_dir(&d).expect("mkdir");
    std::fs::write(d.join("keep"), b"mine").expect("write");
    let (code, _, err) = btrs(&["fixture", "raid1-clean", d.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "non-empty dir: {err}");
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read_dir(&d).expect("readdir").count(), 1);
    // NAME without DIR, and list with one: usage errors.
    let (code, _, err) = btrs(&["fixture", "raid1-clean"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs a DIR"), "{err}");
    let (code, _, err) = btrs(&["fixture", "list", "extra"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn every_fixture_is_byte_for_byte_reproducible() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for name in names() {
        let (a, b) = (tmp.path().join(format!("{name}.a")), tmp.path().join(format!("{name}.b")));
        let ma = make(&name, &a);
        make(&name, &b);
        let mut files: Vec<String> =
            std::fs::read_dir(&a).expect("readdir").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
        files.sort();
        let mut want: Vec<String> = images(&a, &ma).iter().map(|p| p.file_name().expect("name").to_string_lossy().into_owned()).collect();
        want.push("manifest.json".into());
        want.sort();
        assert_eq!(files, want, "{name}: DIR holds exactly the images and the manifest (no staging left)");
        for f in &files {
            assert!(same_bytes(&a.join(f), &b.join(f)), "{name}/{f} differs between two runs");
        }
        let h = |p: &Path| Sha256::digest(std::fs::read(p).expect("read"));
        assert_eq!(h(&a.join("manifest.json")), h(&b.join("manifest.json")));
        // A different seed gives a different filesystem.
        if name == "raid1-clean" {
            let c = tmp.path().join("seed7");
            let (code, _, err) = btrs(&["fixture", &name, c.to_str().expect("utf-8"), "--seed", "7"]);
            assert_eq!(code, 0, "{err}");
            assert!(!same_bytes(&a.join("dev1.img"), &c.join("dev1.img")));
        }
        std::fs::remove_dir_all(&a).expect("cleanup");
        std::fs::remove_dir_all(&b).expect("cleanup");
    }
}

/// The comparable fields of a finding: kind, devid, logical, mirror, first path, file offset.
fn key(kind: &Value, devid: &Value, logical: &Value, mirror: &Value, path: &Value, off: &Value) -> String {
    format!("{kind} devid={devid} logical={logical} mirror={mirror} path={path} file_offset={off}")
}

#[test]
fn scrub_finds_exactly_the_manifests_findings() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut damaged = 0;
    for name in names() {
        let dir = tmp.path().join(&name);
        let m = make(&name, &dir);
        let imgs = images(&dir, &m);
        let first = imgs[0].to_str().expect("utf-8").to_string();
        let mut args = vec!["scrub", "--json", "--no-progress", first.as_str()];
        let degraded = !m["missing_devices"].as_array().expect("missing_devices").is_empty();
        if degraded {
            args.push("--degraded");
        }
        let (code, out, err) = btrs(&args);
        let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{name}: bad JSON ({e}): {out}{err}"));
        let got: BTreeSet<String> = report["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .map(|f| key(&f["kind"], &f["devid"], &f["logical"], &f["mirror"], &f["paths"], &f["file_offset"]))
            .collect();
        let want: BTreeSet<String> = m["expected_findings"]
            .as_array()
            .expect("expected_findings")
            .iter()
            .map(|f| key(&f["kind"], &f["devid"], &f["logical"], &f["mirror"], &f["paths"], &f["file_offset"]))
            .collect();
        assert_eq!(got, want, "{name}: scrub findings vs manifest\n{out}");
        assert_eq!(report["findings"].as_array().map(Vec::len), Some(want.len()), "{name}: duplicate findings\n{out}");
        assert_eq!(Some(code as i64), m["expected_exit"].as_i64(), "{name}: scrub exit code\n{err}");
        assert_eq!(m["clean"].as_bool(), Some(want.is_empty()), "{name}: clean flag");
        if !want.is_empty() {
            damaged += 1;
        }
        if degraded {
            // Without --degraded the missing device is an error, not a finding.
            let (code, _, _) = btrs(&["scrub", "--json", "--no-progress", first.as_str()]);
            assert_ne!(code, 0, "{name}: scrub without --degraded");
        }
        if name == "raid1-deep-tree" {
            assert!(m["fs_tree_levels"].as_u64() >= Some(3), "{name}: {}", m["fs_tree_levels"]);
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
    assert!(damaged >= 7, "only {damaged} damaged fixtures");
}

/// What the kernel shows under `root`: path -> (type, size, sha256, mode, mtime, mtime_nsec, target).
fn walk(root: &Path, rel: &str, out: &mut Vec<Value>) {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel)).expect("readdir").map(|e| e.expect("entry").file_name()).collect();
    entries.sort();
    for name in entries {
        let name = name.to_string_lossy().into_owned();
        let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let p = root.join(&path);
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        let (kind, size, sha, target) = if md.is_dir() {
            ("dir", 0, Value::Null, Value::Null)
        } else if md.file_type().is_symlink() {
            let t = std::fs::read_link(&p).expect("readlink").to_string_lossy().into_owned();
            ("symlink", t.len() as u64, Value::Null, Value::String(t))
        } else {
            let data = std::fs::read(&p).expect("read");
            let h: String = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
            ("file", data.len() as u64, Value::String(h), Value::Null)
        };
        out.push(serde_json::json!({
            "path": path, "type": kind, "size": size, "sha256": sha,
            "mode": md.permissions().mode() & 0o7777, "mtime": md.mtime(), "mtime_nsec": md.mtime_nsec(), "target": target,
        }));
        if md.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// Entries seen (from [`walk`]) against the manifest's files; the content of
/// `ambiguous` files is not compared.
fn compare(name: &str, what: &str, mut seen: Vec<Value>, m: &Value, ambiguous: &[&str]) {
    let mut want: Vec<Value> = m["files"].as_array().expect("files").clone();
    for w in &mut want {
        if let Some(o) = w.as_object_mut() {
            o.remove("flags");
        }
    }
    want.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    seen.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    let paths = |v: &[Value]| v.iter().map(|e| e["path"].as_str().unwrap_or_default().to_string()).collect::<Vec<_>>();
    assert_eq!(paths(&seen), paths(&want), "{name}: {what}: entries");
    for (mut s, mut w) in seen.into_iter().zip(want) {
        if ambiguous.contains(&w["path"].as_str().unwrap_or_default()) {
            s["sha256"] = Value::Null;
            w["sha256"] = Value::Null;
        }
        assert_eq!(s, w, "{name}: {what} vs manifest");
    }
}

#[test]
fn clean_fixtures_pass_btrfs_check_and_mount_with_the_manifests_files() {
    if !interop_enabled("clean_fixtures_pass_btrfs_check_and_mount_with_the_manifests_files") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    for name in names() {
        let dir = tmp.path().join(&name);
        let m = make(&name, &dir);
        if m["clean"].as_bool() != Some(true) {
            // Never mount a damaged fixture.
            continue;
        }
        let imgs = images(&dir, &m);
        if let Err(e) = btrfs_check(&imgs, &[]) {
            panic!("{name}: btrfs check: {e}");
        }
        let mnt = tmp.path().join(format!("{name}.mnt"));
        let mounted = Mounted::mount(&mnt, &imgs, "ro").unwrap_or_else(|e| panic!("{name}: mount: {e}"));
        let mut seen = Vec::new();
        walk(&mnt, "", &mut seen);
        mounted.unmount().unwrap_or_else(|e| panic!("{name}: umount: {e}"));
        compare(&name, "kernel view", seen, &m, &[]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

#[test]
fn mkfs_inode_flags_nodatasum_passes_btrfs_check() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("d")).expect("mkdir");
    std::fs::write(root.join("d/raw"), vec![7u8; 100_000]).expect("write");
    std::fs::write(root.join("summed"), vec![9u8; 100_000]).expect("write");
    let img = tmp.path().join("a.img");
    let (code, _, err) = btrs(&[
        "mkfs",
        "-b",
        "128M",
        "--rootdir",
        root.to_str().expect("utf-8"),
        "--inode-flags",
        "nodatacow:d/raw",
        img.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, tree, err) = btrs(&["dump-tree", "-t", "fs", img.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    assert!(tree.contains("flags 0x3(NODATASUM|NODATACOW)"), "inode flags not in the fs tree:\n{tree}");
    // 100,000 bytes are 25 sectors; scrub counts the ones without a checksum: d/raw's only.
    let (code, out, err) = btrs(&["scrub", "--json", "--no-progress", img.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect("scrub JSON");
    assert_eq!(report["totals"]["no_csum"], 25, "{out}");
    let (code, out, _) = btrs(&["cat", img.to_str().expect("utf-8"), "/d/raw"]);
    assert_eq!(code, 0);
    assert_eq!(out.len(), 100_000);
    // A flag for a path that is not there is refused.
    let img2 = tmp.path().join("b.img");
    let (code, _, err) = btrs(&[
        "mkfs",
        "-b",
        "128M",
        "--rootdir",
        root.to_str().expect("utf-8"),
        "--inode-flags",
        "nodatasum:nope",
        img2.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 1, "{err}");
    if common::interop::progs_available() {
        if let Err(e) = btrfs_check(&[img], &[]) {
            panic!("btrfs check with a nodatacow file: {e}");
        }
    }
}

/// btrs's own read path sees the manifest's files in every fixture (no kernel
/// needed): bad copies are read around; a file whose copies differ without a
/// checksum may read either way, so only its presence is compared; a stale
/// checksum (no good copy) makes extract fail.
#[test]
fn extract_shows_the_manifests_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for name in names() {
        let dir = tmp.path().join(&name);
        let m = make(&name, &dir);
        let imgs = images(&dir, &m);
        let dest = tmp.path().join(format!("{name}.out"));
        let mut args = vec!["extract", imgs[0].to_str().expect("utf-8"), dest.to_str().expect("utf-8")];
        if !m["missing_devices"].as_array().expect("missing_devices").is_empty() {
            args.push("--degraded");
        }
        let findings = m["expected_findings"].as_array().expect("expected_findings");
        let unreadable = findings.iter().any(|f| f["kind"] == "csum_all_copies");
        let (code, out, err) = btrs(&args);
        if unreadable {
            assert_ne!(code, 0, "{name}: extract must fail on data no copy of which matches its checksum\n{out}{err}");
            continue;
        }
        assert_eq!(code, 0, "{name}: extract\n{out}{err}");
        let ambiguous: Vec<&str> = findings
            .iter()
            .filter(|f| f["kind"] == "mirror_mismatch")
            .flat_map(|f| f["paths"].as_array().into_iter().flatten().filter_map(Value::as_str))
            .collect();
        let mut seen = Vec::new();
        walk(&dest, "", &mut seen);
        compare(&name, "extracted", seen, &m, &ambiguous);
        std::fs::remove_dir_all(&dir).expect("cleanup");
        std::fs::remove_dir_all(&dest).expect("cleanup");
    }
}

/// The same fixture made by root and by an unprivileged user is the same
/// bytes: nothing of who ran btrs ends up in the image.
#[test]
fn fixtures_do_not_depend_on_the_user() {
    if !common::interop::is_root() {
        eprintln!("skipped: fixtures_do_not_depend_on_the_user: needs root to run btrs as another user");
        assert_ne!(std::env::var("BTRS_INTEROP").as_deref(), Ok("require"), "needs root");
        return;
    }
    let tmp = tempfile::Builder::new().prefix("btrs-fixture-user-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let as_root = tmp.path().join("root");
    let m = make("raid1-clean", &as_root);
    let as_nobody = tmp.path().join("nobody");
    let st = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_btrs"), "fixture", "raid1-clean"])
        .arg(&as_nobody)
        .args(["--seed", "42"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    for img in images(&as_root, &m) {
        let other = as_nobody.join(img.file_name().unwrap());
        assert_eq!(std::fs::metadata(&other).unwrap().uid(), 65534);
        assert!(same_bytes(&img, &other), "{} differs between users", img.display());
    }
}

/// `raid1-every-csum` makes one fixture per checksum type, each the same bytes
/// as the fixture made alone.
#[test]
fn every_csum_group_makes_one_fixture_per_checksum() {
    let (code, out, _) = btrs(&["fixture", "list"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("raid1-every-csum") && l.contains("(group)")), "{out}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("group");
    let (code, _, err) = btrs(&["fixture", "raid1-every-csum", dir.to_str().unwrap(), "--seed", "42"]);
    assert_eq!(code, 0, "{err}");
    for (sub, csum) in [("crc32c", "crc32c"), ("xxhash", "xxhash64"), ("sha256", "sha256"), ("blake2", "blake2")] {
        let text = std::fs::read(dir.join(sub).join("manifest.json")).unwrap();
        let m: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(m["csum"], csum, "{sub}: {}", m["csum"]);
        let alone = tmp.path().join(format!("alone-{sub}"));
        let m2 = make(&format!("raid1-csum-{sub}"), &alone);
        for img in images(&alone, &m2) {
            assert!(same_bytes(&img, &dir.join(sub).join(img.file_name().unwrap())), "{sub}");
        }
    }
}

/// `scrub --fix-csum` on the stale-checksum fixture rewrites the checksums in a
/// transaction: afterwards btrs scrub and `btrfs check --check-data-csum` are clean.
#[test]
fn fix_csum_makes_stale_checksums_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let m = make("raid1-stale-csum", tmp.path());
    let imgs = images(tmp.path(), &m);
    let img = imgs[0].to_str().unwrap();
    let (code, out, _) = btrs(&["scrub", "--json", img]);
    assert_eq!(code, 3);
    assert!(out.contains("csum_all_copies"), "{out}");
    let (code, out, err) = btrs(&["scrub", "--json", "--fix-csum", img]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let fixed: Vec<&Value> = v["findings"].as_array().unwrap().iter().filter(|f| f["kind"] == "csum_all_copies").collect();
    assert!(!fixed.is_empty() && fixed.iter().all(|f| f["repaired"] == true), "{out}");
    assert!(v["totals"]["corrected_errors"].as_u64().unwrap() > 0, "{out}");
    let (code, out, _) = btrs(&["scrub", "--json", img]);
    assert_eq!(code, 0, "rescrub: {out}");
    if interop_enabled("fix_csum_makes_stale_checksums_clean") {
        btrfs_check(&imgs, &["--check-data-csum"]).unwrap_or_else(|e| panic!("{e}"));
    }
}
