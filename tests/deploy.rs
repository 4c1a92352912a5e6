//! What an operator installs and runs: `--version`, `check-config`, completions and the
//! man page from the same CLI definition, systemd's readiness protocol, and the unit file
//! (`packaging/`; `scripts/package` builds the .deb and `scripts/package-check` installs
//! it).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use slotguard::localcluster::free_port;

fn slotguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slotguard"))
        .args(args)
        .output()
        .expect("slotguard runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_names_the_release_and_the_commit() {
    let out = slotguard(&["--version"]);
    assert!(out.status.success());
    let line = text(&out.stdout);
    let want = format!("slotguard {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&want), "{line}");
    let commit = line[want.len()..].trim_end().trim_end_matches(')');
    let hash = commit.trim_end_matches("-modified");
    assert!(
        hash == "unknown" || (hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit())),
        "{line}"
    );
}

/// The shipped file passes; a bad one fails with exactly the error start-up gives, and
/// nothing is started or connected either way.
#[test]
fn check_config_passes_good_files_and_fails_bad_ones_as_start_up_would() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/slotguard.toml");
    let out = slotguard(&["check-config", shipped.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(summary.contains(": ok: listen 127.0.0.1:6380"), "{summary}");
    assert_eq!(summary.lines().count(), 1, "{summary}");

    let dir = std::env::temp_dir().join(format!("slotguard-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = [
        ("listen.toml", "listen = \"nowhere\"\n", "listen"),
        ("unknown.toml", "litsen = \"127.0.0.1:1\"\n", "litsen"),
        (
            "duration.toml",
            "[hold]\ntimeout = \"soon\"\n",
            "hold.timeout",
        ),
        (
            "ack.toml",
            "[durability]\nack = \"twice\"\n",
            "durability.ack",
        ),
        ("syntax.toml", "listen = \n", "listen"),
    ];
    for (name, body, names) in bad {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        let path = path.to_str().unwrap();
        let checked = slotguard(&["check-config", path]);
        assert_eq!(checked.status.code(), Some(2), "{name}");
        let error = text(&checked.stderr);
        assert!(error.contains(names), "{name}: {error}");
        // Start-up with the same file: the same words, the same status, and no listener.
        let started = slotguard(&["--config", path, "--seed", "127.0.0.1:1"]);
        assert_eq!(started.status.code(), Some(2), "{name}");
        assert_eq!(text(&started.stderr), error, "{name}");
    }
    let missing = slotguard(&["check-config", dir.join("absent.toml").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn completions_and_the_man_page_come_from_the_cli() {
    for shell in ["bash", "zsh", "fish"] {
        let out = slotguard(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = text(&out.stdout);
        assert!(script.contains("check-config"), "{shell}: {script}");
        assert!(script.contains("rebalance"), "{shell}");
    }
    let man = slotguard(&["man"]);
    assert!(man.status.success());
    let page = text(&man.stdout);
    assert!(page.starts_with(".ie"), "roff: {page}");
    assert!(page.contains(".TH slotguard 1"), "{page}");
    assert!(page.contains("check\\-config"), "{page}");
}

/// The unit file systemd would load: `systemd-analyze verify` accepts it (pointed at this
/// build's binary, as the package points it at /usr/bin/slotguard).
#[test]
fn the_systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/slotguard.service");
    let body = std::fs::read_to_string(&unit).unwrap();
    for needed in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "StateDirectory=slotguard",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(body.contains(needed), "the unit has {needed}");
    }
    let dir = std::env::temp_dir().join(format!("slotguard-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let local = dir.join("slotguard.service");
    std::fs::write(
        &local,
        body.replace("/usr/bin/slotguard", env!("CARGO_BIN_EXE_slotguard")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        // The man page is the package's to install (scripts/package-check verifies with it).
        .args(["verify", "--man=no", local.to_str().unwrap()])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Under systemd (`Type=notify`) the proxy says READY=1 once the first slot map is loaded,
/// as /readyz turns 200, and STOPPING=1 when SIGTERM starts the drain. The socket is the
/// test's own, named by `$NOTIFY_SOCKET` as systemd names its.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_once_the_slot_map_is_loaded_and_stopping_at_the_end() {
    let cluster = common::three_masters().await;
    let path = cluster.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    // Its only seed is stopped: no slot map, so not ready, until the seed answers.
    cluster.nodes[0].signal("STOP").unwrap();
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_slotguard"))
        .args(["--listen", &listen, "--seed", &cluster.addrs()[0]])
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let early = tokio::task::spawn_blocking(move || {
        socket
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let mut buf = [0u8; 256];
        let got = socket.recv(&mut buf).ok();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        (
            socket,
            got.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned()),
        )
    });
    let (socket, early) = early.await.unwrap();
    assert_eq!(early, None, "nothing is said before the slot map");
    cluster.nodes[0].signal("CONT").unwrap();
    let recv = move || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification");
        (socket, String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let (socket, ready) = tokio::task::spawn_blocking(recv).await.unwrap();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    let set = common::call(&listen, &["SET", "{ready}k", "v"]).await;
    assert_eq!(set.as_str(), Some("OK"));
    let _ = Command::new("kill")
        .args(["-TERM", &proxy.id().to_string()])
        .status();
    let recv = move || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let stopping = tokio::task::spawn_blocking(recv).await.unwrap();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(proxy.wait().unwrap().success());
}
