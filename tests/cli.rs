//! The `slotguard` binary: configuration errors stop start-up and name the key.

use std::io::Write;
use std::process::Command;

fn slotguard(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_slotguard"))
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config file that is removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("slotguard-cli-{}-{n}.toml", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn bad_configuration_stops_start_up_naming_the_key() {
    let cases = [
        (
            "seeds = [\"127.0.0.1:7000\"]\nlisten_addr = \"x\"\n",
            "unknown field `listen_addr`",
        ),
        (
            "seeds = [\"127.0.0.1:7000\"]\nlisten = \"localhost\"\n",
            "listen = \"localhost\"",
        ),
        (
            "seeds = [\"127.0.0.1:7000\"]\n[hold]\ntimeout = \"20 seconds\"\n",
            "hold.timeout = \"20 seconds\"",
        ),
        ("seeds = [\"7000\"]\n", "seeds = \"7000\""),
        ("[client]\nmax_bulk_len = -1\n", "max_bulk_len"),
    ];
    for (text, want) in cases {
        let file = TempFile::new(text);
        let (code, stderr) = slotguard(&["--config", file.path()]);
        assert_eq!(code, 2, "{text:?}: {stderr}");
        assert!(stderr.contains(want), "{text:?}: {stderr}");
    }
}

#[test]
fn bad_flags_and_missing_files_are_reported() {
    let (code, stderr) = slotguard(&["--listen", "nowhere", "--seed", "127.0.0.1:7000"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("listen = \"nowhere\""), "{stderr}");
    let (code, stderr) = slotguard(&["--seed", "no-port"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("seeds = \"no-port\""), "{stderr}");
    let (code, stderr) = slotguard(&["--config", "/nonexistent/slotguard.toml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read /nonexistent/slotguard.toml"),
        "{stderr}"
    );
    let (code, stderr) = slotguard(&[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no seeds"), "{stderr}");
}

#[test]
fn the_shipped_config_file_is_accepted() {
    // It has no seeds, so the binary stops after reading it, at the seed check.
    let (code, stderr) = slotguard(&[
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/slotguard.toml"),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no seeds"), "{stderr}");
}

#[test]
fn the_demo_says_how_to_install_a_missing_redis_server() {
    let out = Command::new(env!("CARGO_BIN_EXE_slotguard"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("PATH", "/nonexistent")
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("redis-server was not found on PATH"),
        "{stderr}"
    );
    assert!(
        stderr.contains("apt-get install -y redis-server redis-tools"),
        "{stderr}"
    );
}
