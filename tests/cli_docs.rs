//! Man pages in man/ are generated from the clap definitions; this test fails
//! when they are stale. Regenerate with `BTRS_UPDATE_MAN=1 cargo test --test cli_docs`.

use std::path::PathBuf;

/// The binary without the caller's SOURCE_DATE_EPOCH (see tests/common).
fn btrs_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_btrs"));
    c.env_remove("SOURCE_DATE_EPOCH");
    c
}

#[test]
fn man_pages_are_current() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("man");
    let pages = btrs::cli::man_pages().expect("render man pages");
    assert!(pages.len() > 2, "one page per subcommand plus btrs.1");
    if std::env::var_os("BTRS_UPDATE_MAN").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "1") {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
        for (name, bytes) in &pages {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        return;
    }
    let mut stale = Vec::new();
    for (name, bytes) in &pages {
        match std::fs::read(dir.join(name)) {
            Ok(on_disk) if &on_disk == bytes => {}
            _ => stale.push(name.clone()),
        }
    }
    let expected: Vec<&String> = pages.iter().map(|(n, _)| n).collect();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".1") && !expected.contains(&&name) {
            stale.push(format!("{name} (no longer a command)"));
        }
    }
    assert!(stale.is_empty(), "stale man pages: {stale:?}; run BTRS_UPDATE_MAN=1 cargo test --test cli_docs");
}

#[test]
fn completions_generate_for_every_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = btrs_cmd().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("dump-tree") && text.contains("extract"), "{shell} completion lacks subcommands");
        // Values complete as values: compressions, profiles, checksums, quoting
        // styles; fixture names too, but for fish, whose generator (clap_complete)
        // completes only options' values, not positional ones.
        let positional: &[&str] = if shell == "fish" { &[] } else { &["raid1-deep-tree"] };
        for value in ["zstd", "raid1c3", "blake2", "shell-escape"].iter().chain(positional) {
            assert!(text.contains(value), "{shell} completion lacks the value {value}");
        }
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = btrs_cmd().args(["ls"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = btrs_cmd().args(["no-such-command"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The JSON shapes in docs/json.md are what the commands print: for every
/// object listed there, its keys are exactly the documented ones; every
/// section is run.
#[test]
fn json_shapes_are_the_documented_ones() {
    use serde_json::Value;
    use std::collections::{BTreeMap, BTreeSet};
    let doc = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/json.md")).unwrap();
    // Section heading -> (path, keys).
    let mut sections: BTreeMap<String, Vec<(String, BTreeSet<String>)>> = BTreeMap::new();
    let mut current = None;
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            let h = h.replace('`', "");
            current = Some(h.clone());
            sections.entry(h).or_default();
        } else if let (Some(sec), Some(rest)) = (&current, line.strip_prefix("- `")) {
            if let Some((path, keys)) = rest.split_once("`: ") {
                let keys = keys.split(", ").map(str::to_string).collect();
                sections.get_mut(sec).unwrap().push((path.to_string(), keys));
            }
        }
    }
    let bin = env!("CARGO_BIN_EXE_btrs");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let run = |args: &[&str]| -> Value {
        let o = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(o.status.success(), "btrs {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("btrs {args:?}: {e}"))
    };
    let quiet = |args: &[&str]| {
        let o = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(o.status.success(), "btrs {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let rd = d.join("rd");
    std::fs::create_dir(&rd).unwrap();
    std::fs::write(rd.join("f"), vec![1u8; 100_000]).unwrap();
    let mut got: BTreeMap<&str, Value> = BTreeMap::new();
    got.insert(
        "btrs mkfs --json",
        run(&["mkfs", "--json", "-b", "300M", "-d", "raid1", "-m", "raid1", "-r", rd.to_str().unwrap(), &p("a1.img"), &p("a2.img")]),
    );
    // A finding for the scrub: one data copy changed (the file's extent, from dump-tree).
    let tree = std::process::Command::new(bin).args(["dump-tree", "-t", "fs", &p("a1.img")]).output().unwrap();
    let text = String::from_utf8_lossy(&tree.stdout).into_owned();
    let bytenr: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("extent data disk byte "))
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let chunk = std::process::Command::new(bin).args(["dump-tree", "-t", "chunk", &p("a1.img")]).output().unwrap();
    let chunk = String::from_utf8_lossy(&chunk.stdout).into_owned();
    let (mut physical, mut start, mut len) = (None, 0u64, 0u64);
    for l in chunk.lines() {
        let l = l.trim();
        if let Some(k) = l.split("CHUNK_ITEM ").nth(1) {
            start = k.split(')').next().unwrap().parse().unwrap();
        } else if let Some(r) = l.strip_prefix("length ") {
            len = r.split(' ').next().unwrap().parse().unwrap();
        } else if let Some(r) = l.strip_prefix("stripe 1 devid 2 offset ") {
            if (start..start + len).contains(&bytenr) {
                physical = Some(r.parse::<u64>().unwrap() + (bytenr - start));
            }
        }
    }
    let mut bytes = std::fs::read(d.join("a2.img")).unwrap();
    bytes[physical.unwrap() as usize] ^= 0xff;
    std::fs::write(d.join("a2.img"), bytes).unwrap();
    let o = std::process::Command::new(bin).args(["scrub", "--json", "--no-progress", &p("a1.img")]).output().unwrap();
    got.insert("btrs scrub --json", serde_json::from_slice(&o.stdout).unwrap());
    assert!(!got["btrs scrub --json"]["findings"].as_array().unwrap().is_empty(), "the scrub has a finding to show");
    quiet(&["scrub", "--repair", "--no-progress", &p("a1.img")]);
    quiet(&["subvolume", "create", &p("a1.img"), "/sv"]);
    got.insert("btrs dump-super --json", run(&["dump-super", "--json", &p("a1.img")]));
    got.insert("btrs filesystem show --json", run(&["filesystem", "show", "--json", &p("a1.img")]));
    got.insert("btrs filesystem df --json", run(&["filesystem", "df", "--json", &p("a1.img")]));
    got.insert("btrs filesystem usage --json", run(&["filesystem", "usage", "--json", &p("a1.img")]));
    got.insert("btrs subvolume list --json", run(&["subvolume", "list", "--json", &p("a1.img")]));
    got.insert("btrs subvolume show --json", run(&["subvolume", "show", "--json", &p("a1.img"), "/sv"]));
    got.insert("btrs stat --json", run(&["stat", "--json", &p("a1.img"), "/f"]));
    got.insert("btrs balance --json", run(&["balance", "--json", &p("a1.img"), "--convert", "data=single"]));
    std::fs::File::create(d.join("a3.img")).unwrap().set_len(300 << 20).unwrap();
    got.insert("btrs device add --json", run(&["device", "add", "--json", &p("a1.img"), &p("a3.img")]));
    got.insert("btrs device remove --json", run(&["device", "remove", "--json", &p("a1.img"), "3"]));
    got.insert("btrs resize --json", run(&["resize", "--json", &p("a1.img"), "1:+16M"]));
    let away = d.join("away");
    std::fs::create_dir(&away).unwrap();
    std::fs::rename(d.join("a2.img"), away.join("a2.img")).unwrap();
    got.insert("btrs replace --json", run(&["replace", "--json", "--degraded", &p("a1.img"), "2", &p("new.img")]));
    quiet(&["fixture", "raid1-csum-error", &p("fx")]);
    got.insert("manifest.json of btrs fixture", serde_json::from_slice(&std::fs::read(d.join("fx/manifest.json")).unwrap()).unwrap());

    let names: BTreeSet<&str> = sections.keys().map(String::as_str).collect();
    let run_names: BTreeSet<&str> = got.keys().copied().collect();
    assert_eq!(names, run_names, "every documented shape is checked, every checked one documented");
    for (sec, objects) in &sections {
        let value = &got[sec.as_str()];
        assert!(!objects.is_empty(), "{sec}: no keys listed");
        for (path, keys) in objects {
            let mut v = value;
            for seg in path.trim_start_matches('.').split('.').filter(|s| !s.is_empty()) {
                let (name, index) = match seg.strip_suffix("[]") {
                    Some(n) => (n, true),
                    None => (seg, false),
                };
                if !name.is_empty() {
                    v = v.get(name).unwrap_or_else(|| panic!("{sec}: {path}: no {name}"));
                }
                if index {
                    v = v.get(0).unwrap_or_else(|| panic!("{sec}: {path}: an empty array in this run"));
                }
            }
            let have: BTreeSet<String> =
                v.as_object().unwrap_or_else(|| panic!("{sec}: {path} is not an object: {v}")).keys().cloned().collect();
            assert_eq!(&have, keys, "{sec}: {path}");
        }
    }
}
