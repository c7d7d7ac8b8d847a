//! Checks of the fixture helpers themselves: the Rust manifest walker agrees with
//! fixtures/manifest.py, the stored manifests are well formed, and unpacking gives sparse images
//! with the right devids.

mod common;

use common::fixtures::*;
use std::fs::{self, File, FileTimes};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn run(cmd: &mut Command) -> bool {
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

fn set_mtime(p: &Path, secs: i64, nsec: u32) {
    let t = if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs((-secs) as u64) + Duration::from_nanos(nsec as u64)
    };
    let f = File::options().write(true).open(p).or_else(|_| File::open(p)).unwrap();
    f.set_times(FileTimes::new().set_modified(t)).unwrap();
}

/// Build a tree with every kind of entry the manifest knows about.
fn build_tree(root: &Path) {
    let root_user = is_root();
    fs::create_dir_all(root.join("d/sub")).unwrap();
    fs::create_dir_all(root.join("other")).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    fs::write(root.join("empty-file"), b"").unwrap();
    fs::write(root.join("d/one"), b"x").unwrap();
    fs::write(root.join("d/big"), vec![7u8; 3 * 1024 * 1024 + 5]).unwrap();
    fs::write(root.join("d/hello"), b"hello world\n").unwrap();
    fs::hard_link(root.join("d/hello"), root.join("d/sub/hello2")).unwrap();
    fs::hard_link(root.join("d/hello"), root.join("other/hello3")).unwrap();
    // name sorting: '-' (0x2d) sorts before '/' (0x2f)
    fs::write(root.join("d-x"), b"dash").unwrap();
    fs::write(root.join("日本語"), b"nihongo").unwrap();
    fs::write(root.join("émoji-😀"), b"emoji").unwrap();
    fs::write(root.join("new\nline \"q\" \\"), b"odd").unwrap();
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"bad-\xff-name")), b"bad").unwrap();
    fs::write(root.join("L".repeat(255)), b"long").unwrap();

    symlink("d/hello", root.join("link-rel")).unwrap();
    symlink("/nonexistent/abs", root.join("link-dangling")).unwrap();
    symlink(std::ffi::OsStr::from_bytes(b"bad-\xfe-target"), root.join("link-bad")).unwrap();
    symlink("x".repeat(1000), root.join("link-long")).unwrap();
    fs::hard_link(root.join("link-rel"), root.join("d/link-hard")).unwrap();

    assert!(run(Command::new("mkfifo").arg(root.join("fifo"))));
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    if root_user {
        assert!(run(Command::new("mknod").arg(root.join("chr")).args(["c", "4", "64"])));
        assert!(run(Command::new("mknod").arg(root.join("chr-big")).args(["c", "300", "70000"])));
        assert!(run(Command::new("mknod").arg(root.join("blk")).args(["b", "4095", "1048575"])));
    }

    xattr::set(root.join("d/one"), "user.color", b"red").unwrap();
    xattr::set(root.join("d/one"), "user.empty", b"").unwrap();
    xattr::set(root.join("d/one"), "user.bin", &[0, 255, 127, 128]).unwrap();
    xattr::set(root.join("d"), "user.dir", b"dir attr").unwrap();
    xattr::set(root, "user.root", b"top").unwrap();
    if root_user {
        let _ = xattr::set(root.join("d/one"), "trusted.hidden", b"no");
    }

    // (mode 000 only as root: the walkers must still be able to read the file)
    let none_mode = if root_user { 0o000 } else { 0o400 };
    for (name, mode) in [("setuid", 0o4755), ("setgid", 0o2711), ("all", 0o7777), ("none", none_mode)] {
        let p = root.join(format!("d/{name}"));
        fs::write(&p, name).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    if root_user {
        std::os::unix::fs::chown(root.join("d/hello"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::chown(root.join("other"), Some(4321), Some(8765)).unwrap();
        std::os::unix::fs::lchown(root.join("link-rel"), Some(1111), Some(2222)).unwrap();
        std::os::unix::fs::chown(root.join("d/big"), Some(3_000_000_000), Some(3_000_000_001)).unwrap();
    }

    set_mtime(&root.join("d/one"), 1614834367, 123456789);
    set_mtime(&root.join("d/big"), -14182940, 500000000);
    set_mtime(&root.join("other"), 7258118400, 999999999);
    // a symlink's own mtime (std cannot set it; touch -h can)
    let _ = run(Command::new("touch").args(["-h", "-d", "@1600000000.5"]).arg(root.join("link-long")));
}

#[test]
fn rust_walker_matches_python_walker() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir(&root).unwrap();
    build_tree(&root);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/manifest.py");
    let out = match Command::new("python3").arg(&script).arg(&root).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipping: cannot run python3: {e}");
            return;
        }
    };
    assert!(out.status.success(), "manifest.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with("}\n"));
    let py: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rs = walk_manifest(&root);
    assert_manifest_eq(&py, &rs);
    assert_eq!(py, rs);

    // Spot checks, so that agreement is not agreement on nothing.
    let entries = rs["entries"].as_array().unwrap();
    let get = |p: &str| entries.iter().find(|e| e["path"] == p).unwrap_or_else(|| panic!("no {p}"));
    assert_eq!(entries[0]["path"], "");
    assert_eq!(entries[0]["xattrs"]["user.root"], "746f70");
    assert_eq!(get("d/one")["xattrs"]["user.bin"], "00ff7f80");
    assert_eq!(get("d/one")["xattrs"]["user.empty"], "");
    assert!(get("d/one")["xattrs"].get("trusted.hidden").is_none());
    assert_eq!(get("d/one")["mtime"], serde_json::json!([1614834367, 123456789]));
    assert_eq!(get("d/big")["mtime"], serde_json::json!([-14182940, 500000000]));
    assert_eq!(get("d/sub/hello2")["link"], "d/hello");
    assert_eq!(get("other/hello3")["link"], "d/hello");
    assert!(get("d/hello").get("link").is_none());
    assert_eq!(get("link-rel")["link"], "d/link-hard");
    assert_eq!(get("link-bad")["target"], format!("hex:{}", hex(b"bad-\xfe-target")));
    assert_eq!(get(&format!("hex:{}", hex(b"bad-\xff-name")))["type"], "file");
    assert_eq!(get("fifo")["type"], "fifo");
    assert_eq!(get("sock")["type"], "sock");
    assert_eq!(get("d/setuid")["mode"], 0o4755);
    assert_eq!(get("sticky")["mode"], 0o1777);
    assert_eq!(get("link-long")["size"], 1000);
    let paths: Vec<&str> = entries.iter().map(|e| e["path"].as_str().unwrap()).collect();
    let pos = |p: &str| paths.iter().position(|x| *x == p).unwrap();
    assert!(pos("d-x") < pos("d/big"), "byte order: '-' before '/'");
    if is_root() {
        assert_eq!(get("chr")["rdev"], serde_json::json!([4, 64]));
        assert_eq!(get("chr-big")["rdev"], serde_json::json!([300, 70000]));
        assert_eq!(get("blk")["rdev"], serde_json::json!([4095, 1048575]));
        assert_eq!(get("d/hello")["uid"], 1234);
        assert_eq!(get("d/big")["gid"], 3_000_000_001u64);
    }
}

#[test]
fn stored_manifests_are_well_formed() {
    let names = foreign_names();
    assert!(!names.is_empty(), "no fixtures in {}", fixtures_dir().display());
    for name in &names {
        let m = load_manifest(name);
        assert_eq!(m["name"], name.as_str());
        let devs = foreign_device_files(name);
        assert!(!devs.is_empty(), "{name}: no devices");
        for (i, d) in devs.iter().enumerate() {
            assert!(d.is_file(), "{name}: {} missing", d.display());
            assert!(d.ends_with(format!("dev{}.img.zst", i + 1)));
        }
        assert!(m["mkfs"].as_str().unwrap().starts_with("mkfs.btrfs "));
        assert!(m["device_size"].as_u64().unwrap() > 0);
        let entries = m["entries"].as_array().unwrap();
        assert_eq!(entries[0]["path"], "", "{name}: first entry is the root");
        assert_eq!(entries[0]["type"], "dir");
        let keys: Vec<Vec<u8>> = entries.iter().map(|e| e["path"].as_str().unwrap().as_bytes().to_vec()).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{name}: entries not sorted by bytes");
    }
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

#[test]
fn unpack_gives_sparse_images_in_devid_order() {
    for name in ["mixed-noholes", "raid1-xxhash-4k"] {
        if !foreign_names().iter().any(|n| n == name) {
            continue;
        }
        let m = load_manifest(name);
        let tmp = tempfile::tempdir().unwrap();
        let imgs = unpack_foreign(name, tmp.path());
        assert_eq!(imgs.len(), m["devices"].as_array().unwrap().len());
        let fsid = m["fsid"].as_str().unwrap().replace('-', "");
        for (i, img) in imgs.iter().enumerate() {
            assert_eq!(img.file_name().unwrap().to_str().unwrap(), format!("dev{}.img", i + 1));
            let data = fs::read(img).unwrap();
            assert_eq!(data.len() as u64, m["device_size"].as_u64().unwrap());
            let sb = &data[0x10000..0x11000];
            assert_eq!(&sb[0x40..0x48], b"_BHRfS_M", "{name}: superblock magic");
            assert_eq!(hex(&sb[0x20..0x30]), fsid, "{name}: fsid");
            assert_eq!(le_u64(&sb[0xc9..]), i as u64 + 1, "{name}: devid of {}", img.display());
            use std::os::unix::fs::MetadataExt;
            let md = fs::metadata(img).unwrap();
            assert!(md.blocks() * 512 < md.len() / 2, "{name}: {} is not sparse", img.display());
        }
    }
}
