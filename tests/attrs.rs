//! `btrs chattr` / `lsattr` and `btrs property` compression and label:
//! what btrs sets is what the kernel's lsattr, getfattr and label show,
//! btrfs check stays clean, and the flags bind btrs's own later writes as
//! they bind the kernel's (immutable, append-only), refusals leaving the
//! image byte-identical.

mod common;

use std::path::Path;
use std::process::Command;

use common::interop::{btrfs_check, interop_enabled, must, progs_for, Mounted};
use common::{btrs, ok, s};

fn write(d: &Path, img: &Path, path: &str, data: &[u8], extra: &[&str]) -> (i32, String) {
    let src = d.join("src");
    std::fs::write(&src, data).unwrap();
    let mut args = vec!["write", s(img), path, "--from", s(&src)];
    args.extend_from_slice(extra);
    let (c, _, err) = btrs(&args);
    (c, err)
}

#[test]
fn flags_and_properties_are_what_the_kernel_sees_and_bind_btrs() {
    let test = "flags_and_properties_are_what_the_kernel_sees_and_bind_btrs";
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("a.img");
    ok(&["mkfs", "-b", "256M", s(&img)]);
    for f in ["/cow", "/comp", "/nocomp", "/imm", "/app"] {
        assert_eq!(write(d, &img, f, b"", &[]).0, 0);
    }
    ok(&["mkdir", s(&img), "/dir"]);
    for (p, m) in [("/cow", "+C"), ("/comp", "+c"), ("/nocomp", "+m"), ("/imm", "+i"), ("/app", "+aA"), ("/dir", "+C"), ("/dir", "+i")] {
        ok(&["chattr", s(&img), p, m]);
    }
    let listed = ok(&["lsattr", s(&img), "/"]);
    let want = "---------------C------ /cow\n--------c------------- /comp\n---------------------m /nocomp\n\
                ----i----------------- /imm\n-----a-A-------------- /app\n----i----------C------ /dir\n";
    assert_eq!(listed, want);
    // What the kernel refuses, btrs refuses, changing nothing.
    let before = std::fs::read(&img).unwrap();
    let refused: Vec<(Vec<&str>, &str)> = vec![
        (vec!["rm", s(&img), "/imm"], "immutable"),
        (vec!["mv", s(&img), "/imm", "/x"], "immutable"),
        (vec!["ln", s(&img), "/imm", "/x"], "immutable"),
        (vec!["setfattr", s(&img), "/imm", "--name", "user.a", "--value", "b"], "immutable"),
        (vec!["rm", s(&img), "/app"], "append-only"),
        (vec!["mkdir", s(&img), "/dir/sub"], "immutable"),
        (vec!["chattr", s(&img), "/cow", "+c"], "c and C"),
        (vec!["chattr", s(&img), "/comp", "+m"], "c and m"),
        (vec!["subvolume", "create", s(&img), "/dir/sv"], "immutable"),
    ];
    for (args, says) in &refused {
        let (c, _, err) = btrs(args);
        assert_eq!(c, 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(std::fs::read(&img).unwrap() == before, "{args:?} changed the image");
    }
    let (c, err) = write(d, &img, "/imm", b"x", &[]);
    assert!(c == 1 && err.contains("immutable"), "{err}");
    assert_eq!(write(d, &img, "/app", b"one", &[]).0, 0, "an append-only file grows at its end");
    let (c, err) = write(d, &img, "/app", b"two", &["--offset", "0"]);
    assert!(c == 1 && err.contains("append-only"), "{err}");
    // Nor past its end (attacker's pass on 7a48e48: a hole was made).
    let (c, err) = write(d, &img, "/app", b"two", &["--offset", "1000000"]);
    assert!(c == 1 && err.contains("append-only"), "{err}");
    assert_eq!(write(d, &img, "/app", b"two", &["--offset", "3"]).0, 0);
    assert!(std::fs::read(&img).unwrap() != before);
    let (c, _, err) = btrs(&["chattr", s(&img), "/imm", "=q"]);
    assert!(c == 2 && err.contains("not a flag"), "{err}");
    // Properties (an immutable directory takes none).
    let (c, _, err) = btrs(&["property", "set", s(&img), "/dir", "compression", "zstd"]);
    assert!(c == 1 && err.contains("immutable"), "{err}");
    ok(&["mkdir", s(&img), "/cdir"]);
    ok(&["property", "set", s(&img), "/cdir", "compression", "zstd"]);
    let (c, _, err) = btrs(&["property", "set", s(&img), "/comp", "compression", "bogus"]);
    assert!(c == 1 && err.contains("zlib, lzo, zstd"), "{err}");
    ok(&["property", "set", s(&img), "/", "label", "images-label"]);
    assert_eq!(ok(&["property", "get", s(&img), "/", "label"]), "label=images-label\n");
    assert_eq!(ok(&["property", "get", s(&img), "/comp", "compression"]), "compression=zlib\n");
    assert_eq!(ok(&["property", "get", s(&img), "/cdir"]), "compression=zstd\n");
    let (c, _, err) = btrs(&["property", "set", s(&img), "/", "label", &"x".repeat(256)]);
    assert!(c == 1 && err.contains("255"), "{err}");
    // A file made in the directory inherits its compression, and is compressed.
    let data: Vec<u8> = (0..400_000u32).map(|i| (i % 7) as u8).collect();
    assert_eq!(write(d, &img, "/cdir/f", &data, &[]).0, 0);
    let tree = ok(&["dump-tree", s(&img), "--tree", "5"]);
    assert!(tree.contains("compression 3"), "not compressed with zstd:\n{tree}");
    if progs_for(test, false) {
        btrfs_check(std::slice::from_ref(&img), &[]).unwrap_or_else(|e| panic!("btrfs check: {e}"));
        let label = must(Command::new("btrfs").args(["filesystem", "label"]).arg(&img));
        assert_eq!(label.trim(), "images-label");
    }
    if !interop_enabled(test) {
        return;
    }
    let mnt = d.join("mnt");
    let m = Mounted::mount(&mnt, std::slice::from_ref(&img), "").unwrap();
    let k = must(Command::new("lsattr").arg("-d").args(["cow", "comp", "nocomp", "imm", "app", "dir"].map(|n| mnt.join(n))));
    let mine = ok(&["lsattr", s(&img), "-d", "/cow", "/comp", "/nocomp", "/imm", "/app", "/dir"]);
    let strip = |t: &str| t.lines().map(|l| l.split(' ').next().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(strip(&k), strip(&mine), "lsattr differs:\n{k}\n{mine}");
    assert!(std::fs::write(mnt.join("imm"), b"x").is_err(), "the kernel wrote into an immutable file");
    assert!(std::fs::read(mnt.join("cdir/f")).unwrap() == data);
    let prop = must(Command::new("btrfs").args(["property", "get"]).arg(mnt.join("cdir")).arg("compression"));
    assert_eq!(prop.trim(), "compression=zstd");
    assert_eq!(std::fs::read(mnt.join("app")).unwrap(), b"onetwo");
    m.unmount().unwrap();
}
