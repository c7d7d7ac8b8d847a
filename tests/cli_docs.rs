//! Man pages in man/ are generated from the clap definitions; this test fails
//! when they are stale. Regenerate with `BTRS_UPDATE_MAN=1 cargo test --test cli_docs`.

use std::path::PathBuf;

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
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_btrs")).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("dump-tree") && text.contains("extract"), "{shell} completion lacks subcommands");
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_btrs")).args(["ls"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_btrs")).args(["no-such-command"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
