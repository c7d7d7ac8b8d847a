//! `btrs chmod`, `chown`, `touch`, `truncate`, `mkdir -m`, `rm -f`,
//! `stat`, `getfattr`, `readlink` and setfattr's value encodings: what
//! btrs sets, coreutils' stat, attr's getfattr and readlink read the same
//! on a kernel mount; what the kernel sets, btrs reads the same; btrfs
//! check stays clean; refusals leave the image byte-identical.

mod common;

use std::path::Path;
use std::process::Command;

use common::interop::{btrfs_check, interop_enabled, must, progs_for, Mounted};
use common::{btrs, ok, s};

/// The lines of coreutils' `stat` that do not depend on the host (size
/// and blocks; the four times), in UTC.
fn stat_lines(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = vec![lines[1].trim_end().to_string()];
    for l in &lines {
        if ["Access: 1", "Access: 2", "Modify:", "Change:", " Birth:"].iter().any(|p| l.starts_with(p)) {
            out.push(l.to_string());
        }
    }
    out
}

fn kernel_stat(path: &Path) -> (Vec<String>, String) {
    let full = must(Command::new("stat").env("TZ", "UTC").arg(path));
    let short = must(Command::new("stat").args(["-c", "%a %u %g %h %F"]).arg(path));
    (stat_lines(&full), short.trim().to_string())
}

fn btrs_stat(img: &Path, path: &str) -> (Vec<String>, String) {
    let full = ok(&["stat", s(img), path]);
    let j: serde_json::Value = serde_json::from_str(&ok(&["stat", s(img), path, "--json"])).unwrap();
    let j = &j[0];
    let short =
        format!("{:o} {} {} {} {}", j["mode"].as_u64().unwrap() & 0o7777, j["uid"], j["gid"], j["nlink"], j["file_type"].as_str().unwrap());
    (stat_lines(&full), short)
}

#[test]
fn inode_commands_are_what_the_kernel_sees_and_sets() {
    let test = "inode_commands_are_what_the_kernel_sees_and_sets";
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("a.img");
    ok(&["mkfs", "-b", "256M", s(&img)]);
    let src = d.join("src");
    std::fs::write(&src, common::pseudo(8000, 7)).unwrap();
    ok(&["write", s(&img), "/data", "--from", s(&src)]);
    ok(&["mkdir", s(&img), "-m", "700", "/private"]);
    ok(&["mkdir", s(&img), "-p", "-m", "711", "/p/q/r"]);
    ok(&["touch", s(&img), "/t1", "/t2"]);
    ok(&["touch", s(&img), "-a", "-d", "@1000000000.5", "/t1"]);
    ok(&["touch", s(&img), "-m", "-d", "1969-07-20T20:17:40Z", "/t2"]);
    ok(&["chmod", s(&img), "4755", "/data"]);
    ok(&["chown", s(&img), "1000:100", "/data"]);
    ok(&["chmod", s(&img), "u+s,g+ws,o-r", "/t1"]);
    ok(&["chown", s(&img), ":50", "/private"]);
    ok(&["chmod", s(&img), "a+X", "/private", "/t2"]);
    ok(&["truncate", s(&img), "-s", "1M", "/t1"]);
    ok(&["truncate", s(&img), "-s", "-3000", "/data"]);
    // After the truncate, which sets the modification time to now.
    ok(&["touch", s(&img), "-d", "2024-02-29 12:34:56.789", "/data"]);
    ok(&["truncate", s(&img), "-s", "12K", "/new"]);
    ok(&["setfattr", s(&img), "/data", "-n", "user.hex", "-v", "0x00ff0a41"]);
    ok(&["setfattr", s(&img), "/data", "-n", "user.b64", "-v", "0sYQpi"]);
    ok(&["setfattr", s(&img), "/data", "-n", "user.txt", "-v", "\"a\\\"b\\\\c\\012\""]);
    ok(&["setfattr", s(&img), "/data", "-n", "user.plain", "-v", "hello"]);
    ok(&["ln", "-s", s(&img), "/p/q/r", "/lnk"]);
    ok(&["rm", "-f", s(&img), "/nothing", "/no/such/dir", "/t2"]);
    ok(&["touch", s(&img), "/t2"]);
    ok(&["chmod", s(&img), "0640", "/t2"]);

    // What btrs reads back, before any judge.
    let (_, short) = btrs_stat(&img, "/data");
    assert_eq!(short, "755 1000 100 1 regular file", "chown drops set-user-ID");
    assert_eq!(btrs_stat(&img, "/t1").1, "6660 0 0 1 regular file");
    assert_eq!(btrs_stat(&img, "/private").1, "711 0 50 1 directory");
    assert_eq!(btrs_stat(&img, "/p/q/r").1, "711 0 0 1 directory");
    assert_eq!(btrs_stat(&img, "/p/q").1, "755 0 0 1 directory");
    assert_eq!(btrs_stat(&img, "/t2").1, "640 0 0 1 regular empty file");
    let j: serde_json::Value = serde_json::from_str(&ok(&["stat", s(&img), "/data", "/t1", "/new", "--json"])).unwrap();
    assert_eq!(j[0]["size"], 5000);
    assert_eq!(j[0]["mtime"]["sec"], 1_709_210_096);
    assert_eq!(j[0]["mtime"]["nsec"], 789_000_000);
    assert_eq!(j[1]["size"], 1 << 20);
    assert_eq!(j[1]["blocks"], 0, "a truncated-up file is a hole");
    assert_eq!(j[1]["atime"]["sec"], 1_000_000_000);
    assert_eq!(j[1]["atime"]["nsec"], 500_000_000);
    assert_eq!(j[2]["size"], 12288);
    assert_eq!(ok(&["readlink", s(&img), "/lnk"]), "/p/q/r\n");
    let cat = common::btrs_cmd().args(["cat", s(&img), "/data"]).output().unwrap();
    assert!(cat.status.success() && cat.stdout == common::pseudo(8000, 7)[..5000], "truncated file reads back wrong");
    let dump = ok(&["getfattr", s(&img), "-d", "/data"]);
    assert_eq!(dump, "# file: data\nuser.b64=0sYQpi\nuser.hex=0sAP8KQQ==\nuser.plain=\"hello\"\nuser.txt=0sYSJiXGMK\n\n");
    assert_eq!(ok(&["getfattr", s(&img), "-n", "user.txt", "-e", "text", "/data"]), "# file: data\nuser.txt=\"a\\\"b\\\\c\\012\"\n\n");
    let raw = common::btrs_cmd().args(["getfattr", s(&img), "--only-values", "-n", "user.hex", "/data"]).output().unwrap();
    assert_eq!(raw.stdout, b"\0\xff\nA");

    if progs_for(test, false) {
        btrfs_check(std::slice::from_ref(&img), &[]).unwrap_or_else(|e| panic!("btrfs check: {e}"));
    }
    if !interop_enabled(test) {
        return;
    }
    let mnt = d.join("mnt");
    let m = Mounted::mount(&mnt, std::slice::from_ref(&img), "").unwrap();
    for p in ["data", "t1", "t2", "new", "private", "p/q", "p/q/r", "lnk"] {
        assert_eq!(kernel_stat(&mnt.join(p)), btrs_stat(&img, &format!("/{p}")), "stat of {p}");
    }
    for args in [&["-d", "-m", "-", "-e", "hex"][..], &["-d"], &["-d", "-e", "text"], &["-d", "-e", "base64"], &["-n", "user.plain"], &[]] {
        let k = must(Command::new("getfattr").current_dir(&mnt).args(args).arg("data"));
        let mut mine = vec!["getfattr", s(&img)];
        mine.extend_from_slice(args);
        mine.push("/data");
        assert_eq!(k, ok(&mine), "getfattr {args:?}");
    }
    assert_eq!(must(Command::new("readlink").arg(mnt.join("lnk"))), ok(&["readlink", s(&img), "/lnk"]));
    // The kernel changes what btrs then reads.
    let kfile = mnt.join("kfile");
    std::fs::write(&kfile, b"kernel bytes").unwrap();
    for cmd in [
        vec!["chmod", "2751"],
        vec!["chown", "7:8"],
        vec!["touch", "-m", "-d", "2001-02-03 04:05:06.123456789 UTC"],
        vec!["truncate", "-s", "100000"],
        vec!["setfattr", "-n", "user.k", "-v", "0x0102"],
    ] {
        must(Command::new(cmd[0]).args(&cmd[1..]).arg(&kfile));
    }
    std::fs::set_permissions(mnt.join("private"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let want = [kernel_stat(&kfile), kernel_stat(&mnt.join("private"))];
    let kx = must(Command::new("getfattr").current_dir(&mnt).args(["-d", "-e", "hex", "kfile"]));
    m.unmount().unwrap();
    assert_eq!([btrs_stat(&img, "/kfile"), btrs_stat(&img, "/private")], want);
    assert_eq!(ok(&["getfattr", s(&img), "-d", "-e", "hex", "/kfile"]), kx);
    // And btrs changes the kernel's file again, judged clean.
    ok(&["chmod", s(&img), "go-rwx", "/kfile"]);
    ok(&["truncate", s(&img), "-s", "<5", "/kfile"]);
    assert_eq!(ok(&["cat", s(&img), "/kfile"]), "kerne");
    let kmode = u32::from_str_radix(want[0].1.split(' ').next().unwrap(), 8).unwrap();
    assert_eq!(btrs_stat(&img, "/kfile").1, format!("{:o} 7 8 1 regular file", kmode & !0o077));
    btrfs_check(std::slice::from_ref(&img), &[]).unwrap_or_else(|e| panic!("btrfs check after both: {e}"));
}

#[test]
fn refusals_name_the_problem_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("a.img");
    ok(&["mkfs", "-b", "256M", s(&img)]);
    ok(&["touch", s(&img), "/f", "/imm", "/app"]);
    ok(&["mkdir", s(&img), "/dir"]);
    ok(&["chattr", s(&img), "/imm", "+i"]);
    ok(&["chattr", s(&img), "/app", "+a"]);
    ok(&["subvolume", "create", s(&img), "/sv"]);
    ok(&["touch", s(&img), "/sv/inside"]);
    ok(&["property", "set", s(&img), "/sv", "ro", "true"]);
    ok(&["ln", "-s", s(&img), "/dir", "/lnk"]);
    let before = std::fs::read(&img).unwrap();
    let long = format!("/{}", "n".repeat(256));
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["chmod", s(&img), "600", "/imm"], 1, "immutable"),
        (vec!["chown", s(&img), "1", "/imm"], 1, "immutable"),
        (vec!["touch", s(&img), "/imm"], 1, "immutable"),
        (vec!["truncate", s(&img), "-s", "0", "/imm"], 1, "immutable"),
        (vec!["chmod", s(&img), "600", "/app"], 1, "append-only"),
        (vec!["touch", s(&img), "-d", "@0", "/app"], 1, "append-only"),
        (vec!["chmod", s(&img), "600", "/sv/inside"], 1, "read-only"),
        (vec!["touch", s(&img), "/sv/new"], 1, "read-only"),
        // One path refused refuses the whole command.
        (vec!["chmod", s(&img), "600", "/f", "/imm"], 1, "immutable"),
        (vec!["chmod", s(&img), "600", "/f", "/missing"], 1, "missing"),
        (vec!["truncate", s(&img), "-s", "1", "/dir"], 1, "not a regular file"),
        (vec!["truncate", s(&img), "-s", "+8E", "/f"], 1, "largest file size"),
        (vec!["touch", s(&img), "/missing/f"], 1, "missing"),
        (vec!["rm", s(&img), "/missing"], 1, "missing"),
        (vec!["rm", "-f", s(&img), "/f/x"], 1, "not a directory"),
        (vec!["readlink", s(&img), "/f"], 1, "not a symbolic link"),
        (vec!["stat", s(&img), "/missing"], 1, "missing"),
        (vec!["getfattr", s(&img), "-n", "user.none", "/f"], 1, "No such attribute"),
        (vec!["chown", s(&img), "root", "/f"], 2, "numeric"),
        (vec!["chown", s(&img), "1:", "/f"], 2, ":GROUP"),
        (vec!["chown", s(&img), "4294967296", "/f"], 2, "invalid user"),
        (vec!["chmod", s(&img), "8", "/f"], 2, "invalid mode"),
        (vec!["chmod", s(&img), "u+q", "/f"], 2, "invalid mode"),
        (vec!["mkdir", s(&img), "-m", "77777", "/x"], 2, "octal mode"),
        (vec!["touch", s(&img), "-d", "2023-02-29", "/f"], 2, "no such day"),
        (vec!["touch", s(&img), "-d", "yesterday", "/f"], 2, "invalid date"),
        (vec!["truncate", s(&img), "-s", "1Q", "/f"], 2, "unknown suffix"),
        (vec!["setfattr", s(&img), "/f", "-n", "user.a", "-v", "0xabc"], 2, "bad input encoding"),
        (vec!["setfattr", s(&img), "/f", "-n", "user.a", "-v", "0s!!"], 2, "bad input encoding"),
        (vec!["getfattr", s(&img), "-e", "rot13", "/f"], 2, "unknown encoding"),
        (vec!["getfattr", s(&img), "-d", "-m", "(", "/f"], 2, "regular expression"),
        // A trailing / names a directory (attacker's pass: rm /f/ removed the file).
        (vec!["rm", s(&img), "/f/"], 1, "not a directory"),
        (vec!["rm", s(&img), "/lnk/"], 1, "not a directory"),
        (vec!["touch", s(&img), "/new/"], 1, "not a directory"),
        (vec!["truncate", s(&img), "-s", "1", "/new/"], 1, "not a directory"),
        (vec!["chmod", s(&img), "600", "/f/"], 1, "not a directory"),
        (vec!["stat", s(&img), "/f/"], 1, "not a directory"),
        // Everywhere else too (attacker's pass on b175bc2: `mv /g /f/`
        // replaced the file f): creating a non-directory, renaming one, reading.
        (vec!["mv", s(&img), "/imm", "/f/"], 1, "not a directory"),
        (vec!["mv", s(&img), "/f", "/new/"], 1, "not a directory"),
        (vec!["mv", s(&img), "/f/", "/new"], 1, "not a directory"),
        (vec!["mv", s(&img), "/f/.", "/new"], 1, "not a name"),
        (vec!["ln", s(&img), "/f", "/new/"], 1, "not a directory"),
        (vec!["ln", "-s", s(&img), "target", "/new/"], 1, "not a directory"),
        (vec!["write", s(&img), "/new/"], 1, "not a directory"),
        (vec!["write", s(&img), "/f/"], 1, "not a directory"),
        (vec!["cat", s(&img), "/f/"], 1, "not a directory"),
        (vec!["cat", s(&img), "/f/."], 1, "not a directory"),
        (vec!["ls", s(&img), "/f/"], 1, "not a directory"),
        (vec!["readlink", s(&img), "/lnk/"], 1, "not a directory"),
        (vec!["getfattr", s(&img), "-d", "/f/"], 1, "not a directory"),
        (vec!["lsattr", s(&img), "/f/"], 1, "not a directory"),
        (vec!["extract", s(&img), "/f/", "/nonexistent-dest"], 1, "not a directory"),
        (vec!["put", s(&img), "/etc/hostname", "/new/"], 1, "not a directory"),
        (vec!["subvolume", "create", s(&img), "/f/"], 1, "exists"),
        // A name longer than a directory holds is said as such when read.
        (vec!["stat", s(&img), &long], 1, "256 bytes"),
        (vec!["cat", s(&img), &long], 1, "256 bytes"),
        // An empty path names nothing, as for coreutils (not the root).
        (vec!["cat", s(&img), ""], 1, "No such file"),
        (vec!["ls", s(&img), ""], 1, "No such file"),
        (vec!["chmod", s(&img), "600", "/lnk"], 1, "symbolic link's mode"),
    ];
    for (args, code, says) in &cases {
        let (c, _, err) = btrs(args);
        assert_eq!(c, *code, "{args:?}: {err}");
        assert!(err.to_lowercase().contains(&says.to_lowercase()), "{args:?}: {err}");
        assert!(std::fs::read(&img).unwrap() == before, "{args:?} changed the image");
    }
    // What coreutils allows: touching an append-only file to now, -c and
    // -f on missing paths (the last two write nothing at all).
    ok(&["touch", "-c", s(&img), "/none", "/dir/none"]);
    ok(&["rm", "-f", s(&img), "/none", "/no/such"]);
    assert!(std::fs::read(&img).unwrap() == before, "touch -c / rm -f of missing paths wrote");
    // A directory may be renamed or copied in under a name ending in "/".
    ok(&["mv", s(&img), "/dir", "/dir2/"]);
    let src = d.join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("file"), b"x").unwrap();
    ok(&["put", s(&img), s(&src), "/copied/"]);
    assert_eq!(ok(&["cat", s(&img), "/copied/file"]), "x");
    ok(&["touch", s(&img), "/app"]);
    assert!(std::fs::read(&img).unwrap() != before);
    // `chown :` changes no id but is a chown: set-ID bits and file
    // capabilities go, as the kernel's (attacker's pass on fd1fe86).
    ok(&["setfattr", s(&img), "/f", "-n", "security.capability", "-v", "0x0100000200200000000000000000000000000000"]);
    ok(&["chmod", s(&img), "6755", "/f"]);
    ok(&["chown", s(&img), ":", "/f"]);
    assert_eq!(btrs_stat(&img, "/f").1, "755 0 0 1 regular empty file");
    assert_eq!(ok(&["getfattr", s(&img), "-d", "-m", "security", "/f"]), "");
}

/// POSIX ACLs move with the mode as in the kernel: setting an access ACL
/// sets the mode's bits, chmod rewrites the ACL (else it would go on
/// granting what the mode took away), and what is made in a directory with
/// a default ACL inherits it. btrs does each on one file, the kernel the
/// same on a twin; modes and ACL bytes must agree.
#[test]
fn acls_follow_the_mode_as_in_the_kernel() {
    let test = "acls_follow_the_mode_as_in_the_kernel";
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("a.img");
    ok(&["mkfs", "-b", "256M", s(&img)]);
    // u::rw- u:5:rwx g::r-- m::rwx o::r--
    let acl = "0x0200000001000600ffffffff020007000500000004000400ffffffff10000700ffffffff20000400ffffffff";
    // u::rw- g::r-- o::r-- (what the mode says alone)
    let plain = "0x0200000001000600ffffffff04000400ffffffff20000400ffffffff";
    for dir in ["/b", "/k"] {
        ok(&["mkdir", s(&img), dir]);
        ok(&["mkdir", s(&img), &format!("{dir}/ad")]);
    }
    ok(&["touch", s(&img), "/b/secret", "/b/plain"]);
    ok(&["setfattr", s(&img), "/b/secret", "-n", "system.posix_acl_access", "-v", acl]);
    ok(&["setfattr", s(&img), "/b/plain", "-n", "system.posix_acl_access", "-v", plain]);
    assert_eq!(btrs_stat(&img, "/b/secret").1, "674 0 0 1 regular empty file", "the mask is the group's bits");
    ok(&["chmod", s(&img), "0640", "/b/secret"]);
    let got = ok(&["getfattr", s(&img), "-n", "system.posix_acl_access", "-e", "hex", "/b/secret"]);
    assert!(got.contains("=0x0200000001000600ffffffff020007000500000004000400ffffffff10000400ffffffff20000000ffffffff"), "{got}");
    ok(&["setfattr", s(&img), "/b/ad", "-n", "system.posix_acl_default", "-v", acl]);
    ok(&["touch", s(&img), "/b/ad/f"]);
    ok(&["mkdir", s(&img), "/b/ad/d"]);
    ok(&["write", s(&img), "/b/ad/w", "--from", "/dev/null"]);
    if progs_for(test, false) {
        btrfs_check(std::slice::from_ref(&img), &[]).unwrap_or_else(|e| panic!("btrfs check: {e}"));
    }
    if !interop_enabled(test) {
        return;
    }
    let mnt = d.join("mnt");
    let m = Mounted::mount(&mnt, std::slice::from_ref(&img), "").unwrap();
    let k = mnt.join("k");
    let set = |p: &Path, name: &str, v: &str| must(Command::new("setfattr").args(["-n", name, "-v", v]).arg(p));
    for f in ["secret", "plain"] {
        std::fs::write(k.join(f), b"").unwrap();
    }
    set(&k.join("secret"), "system.posix_acl_access", acl);
    set(&k.join("plain"), "system.posix_acl_access", plain);
    must(Command::new("chmod").arg("0640").arg(k.join("secret")));
    set(&k.join("ad"), "system.posix_acl_default", acl);
    must(Command::new("touch").arg(k.join("ad/f")));
    must(Command::new("mkdir").arg(k.join("ad/d")));
    std::fs::write(k.join("ad/w"), b"").unwrap();
    let view = |root: &Path| -> Vec<String> {
        ["secret", "plain", "ad", "ad/f", "ad/d", "ad/w"]
            .iter()
            .map(|p| {
                let st = must(Command::new("stat").args(["-c", "%a %u %g"]).arg(root.join(p)));
                let xa = must(Command::new("getfattr").args(["-d", "-m", "-", "-e", "hex", "--absolute-names"]).arg(root.join(p)));
                let xa: Vec<&str> = xa.lines().filter(|l| l.starts_with("system.")).collect();
                format!("{p}: {} {xa:?}", st.trim())
            })
            .collect()
    };
    let (mine, kernels) = (view(&mnt.join("b")), view(&k));
    m.unmount().unwrap();
    assert_eq!(mine, kernels);
    btrfs_check(std::slice::from_ref(&img), &[]).unwrap_or_else(|e| panic!("btrfs check after both: {e}"));
}
