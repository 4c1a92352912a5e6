//! Operating slotguard: metrics, status, health, the slot page, the dashboard, reload,
//! graceful shutdown, and client limits.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, http_get_with, Harness};
use slotguard::localcluster::{free_port, wait_for, LocalCluster, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Parses the Prometheus text format strictly: every sample line is
/// `name{labels} value`, and every sample's family was announced by `# TYPE`.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut typed = HashSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name} has no # TYPE line");
        assert!(name.starts_with("slotguard_"), "{name} lacks the prefix");
        samples.insert(series.to_string(), value);
    }
    samples
}

/// With `admin.token`, the admin listener answers only requests that carry it, except the
/// health check and the (data-free) page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_requires_its_token() {
    let h = Harness::tuned(|c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        c.admin_token = Some("s3cret".into());
    })
    .await;
    let admin = h.proxy.admin_addr.unwrap();
    for path in ["/status", "/metrics", "/readyz"] {
        let (code, body) = http_get(admin, path).await;
        assert_eq!(code, 401, "{path}: {body}");
        assert!(!body.contains("slotguard_"), "{path} leaked: {body}");
        let wrong = "authorization: Bearer s3creT\r\n";
        assert_eq!(http_get_with(admin, path, wrong).await.0, 401, "{path}");
        let right = "Authorization: bearer s3cret\r\n";
        assert_eq!(http_get_with(admin, path, right).await.0, 200, "{path}");
    }
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_eq!(http_get(admin, "/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_and_health_are_served() {
    let h = Harness::start_with(
        Options {
            masters: 3,
            replicas_per_master: 1,
            node_timeout_ms: 1000,
            ..Options::default()
        },
        |c| c.admin_listen = Some("127.0.0.1:0".parse().unwrap()),
    )
    .await;
    let admin = h.proxy.admin_addr.unwrap();
    let mut c = h.client().await;
    for i in 0..50 {
        let () = redis::cmd("SET")
            .arg(format!("m:{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
        let _: Option<String> = redis::cmd("GET")
            .arg(format!("m:{i}"))
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let () = redis::cmd("MSET")
        .arg("a")
        .arg(1)
        .arg("b")
        .arg(2)
        .query_async(&mut c)
        .await
        .unwrap();
    let _ = redis::cmd("SUNIONSTORE")
        .arg("a")
        .arg("b")
        .query_async::<redis::Value>(&mut c)
        .await;
    let _ = redis::cmd("INCR")
        .arg("m:1")
        .arg("extra")
        .query_async::<redis::Value>(&mut c)
        .await;

    let (code, text) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    let m = parse_metrics(&text);
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("{k} missing from:\n{text}"))
    };
    assert!(get("slotguard_requests_total{class=\"write\"}") >= 50.0);
    assert!(get("slotguard_requests_total{class=\"read\"}") >= 50.0);
    assert_eq!(get("slotguard_requests_total{class=\"multikey\"}"), 1.0);
    assert!(get("slotguard_request_duration_seconds_count{class=\"write\"}") >= 50.0);
    assert_eq!(
        get("slotguard_client_errors_total{code=\"CROSSSLOT\"}"),
        1.0
    );
    assert_eq!(get("slotguard_client_errors_total{code=\"ERR\"}"), 1.0);
    assert_eq!(get("slotguard_client_connections"), 1.0);
    assert_eq!(get("slotguard_slots{state=\"served\"}"), 16384.0);
    assert!(get("slotguard_topology_refreshes_total{result=\"ok\"}") >= 1.0);
    assert!(get("slotguard_backend_connects_total{result=\"ok\"}") >= 1.0);
    let backend_count: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("slotguard_backend_duration_seconds_count{node="))
        .map(|(_, v)| v)
        .sum();
    assert!(
        backend_count >= 100.0,
        "per-node latency recorded: {backend_count}"
    );
    for name in [
        "slotguard_held_requests",
        "slotguard_hold_timeouts_total",
        "slotguard_redirects_absorbed_total{kind=\"moved\"}",
        "slotguard_repairs_total{outcome=\"ok\"}",
    ] {
        get(name);
    }

    // Every node is asked once it is known; wait for the view that has them all, and for
    // the new cluster to settle (its replicas may still be joining at the first looks).
    let settled = wait_for(Duration::from_secs(10), || async move {
        let (_, body) = http_get(admin, "/status").await;
        body.contains("\"nodes_answering\":6") && body.contains("\"unsettled\":[]")
    })
    .await;
    if settled.is_err() {
        panic!("not settled: {}", http_get(admin, "/status").await.1);
    }
    let (code, body) = http_get(admin, "/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["slot_map"]["covered"], 16384);
    assert_eq!(status["slot_map"]["ranges"].as_array().unwrap().len(), 3);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 6);
    assert_eq!(nodes.iter().filter(|n| n["role"] == "master").count(), 3);
    assert!(nodes.iter().all(|n| n["health"] == "ok"), "{nodes:?}");
    assert_eq!(status["ready"], true);
    assert!(
        status["unsettled"].as_array().unwrap().is_empty(),
        "{}",
        status["unsettled"]
    );

    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_eq!(
        http_get(admin, "/readyz").await,
        (200, "ready\n".to_string())
    );
    assert_eq!(http_get(admin, "/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_charts_metrics_that_exist() {
    let h = Harness::tuned(|c| c.admin_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let (_, text) = http_get(h.proxy.admin_addr.unwrap(), "/metrics").await;
    let families: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let dash: serde_json::Value =
        serde_json::from_str(include_str!("../config/grafana/slotguard.json")).expect("valid JSON");
    assert_eq!(dash["title"], "slotguard");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let mut ids = HashSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "panel ids are unique"
        );
        for key in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][key].is_i64(), "{p}");
        }
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let used: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("slotguard_"))
                .collect();
            assert!(!used.is_empty(), "{expr}");
            for name in used {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                assert!(
                    families.contains(family),
                    "the dashboard uses {name}, which is not exported"
                );
            }
        }
    }
}

/// Chromium, when it is installed (`.ci/run` installs it).
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        eprintln!(
            "SKIPPED: chromium is not installed (apt-get install chromium); .ci/run installs it"
        );
    }
    found
}

/// Opens `url` in headless `chromium`: the DOM once its scripts ran, and a screenshot
/// written to `shot`.
async fn browse(
    chromium: &str,
    url: &str,
    profile: &std::path::Path,
    shot: &std::path::Path,
) -> String {
    let flags = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--window-size=900,700",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(url.to_string());
        args
    };
    let chromium = chromium.to_string();
    let dump_args = flags(&["--dump-dom"]);
    let shot_arg = format!("--screenshot={}", shot.display());
    let shot_args = flags(&[&shot_arg]);
    tokio::task::spawn_blocking(move || {
        let dom = Command::new(&chromium)
            .args(&dump_args)
            .output()
            .expect("chromium runs");
        Command::new(&chromium)
            .args(&shot_args)
            .output()
            .expect("chromium runs");
        String::from_utf8_lossy(&dom.stdout).into_owned()
    })
    .await
    .unwrap()
}

/// What the slot page shows of a healthy 3-master cluster, and its screenshot.
fn assert_page_drawn(dom: &str, shot: &std::path::Path) {
    assert!(
        dom.contains("slots drawn: 16384"),
        "the page drew every slot:\n{dom}"
    );
    assert!(dom.contains("owners: 3"), "{dom}");
    assert!(
        dom.contains("<title>slotguard: 16384 slots, 3 owners</title>"),
        "{dom}"
    );
    let png = std::fs::read(shot).expect("a screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5000,
        "screenshot at {}",
        shot.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_page_draws_every_slot_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        return;
    };
    let h = Harness::tuned(|c| c.admin_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let url = format!("http://{}/", h.proxy.admin_addr.unwrap());
    let profile = h.cluster.dir.join("chromium-profile");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("slot-page.png");
    let dom = browse(chromium, &url, &profile, &shot).await;
    assert_page_drawn(&dom, &shot);
}

/// `slotguard demo` starts the admin listener by itself and prints the slot page's URL; a
/// browser opening it sees the demo's cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_the_slot_page_a_browser_opens() {
    let Some(chromium) = chromium() else {
        return;
    };
    let port = slotguard::localcluster::free_port().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_slotguard"))
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read to the end: a demo whose stdout closed would die at its next line.
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("slot page:") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let url = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the demo prints the slot page's URL");
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    // A profile of this run's own: chromium refuses one another run left locked.
    let profile = tmp.join(format!("chromium-profile-demo-{}", std::process::id()));
    let shot = tmp.join("slot-page-demo.png");
    let dom = browse(chromium, &url, &profile, &shot).await;
    // SIGTERM: the demo stops the proxy and removes its cluster.
    let _ = Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status();
    let _ = demo.wait();
    let _ = std::fs::remove_dir_all(&profile);
    assert_page_drawn(&dom, &shot);
}

/// The built binary, with its stderr collected line by line.
struct Binary {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    fn start(config: &std::path::Path) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_slotguard"))
            .args(["--config", config.to_str().unwrap()])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Binary { child, lines }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    async fn wait_log(&self, needle: &str) {
        let lines = self.lines.clone();
        let needle = needle.to_string();
        wait_for(Duration::from_secs(10), || {
            let found = lines.lock().unwrap().iter().any(|l| l.contains(&needle));
            async move { found }
        })
        .await
        .unwrap_or_else(|_| panic!("log never said {needle:?}:\n{}", self.log()));
    }

    /// Waits for the process to exit; its exit code.
    async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(path: &std::path::Path, text: &str) {
    std::fs::File::create(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

async fn connect(port: u16, password: Option<&str>) -> redis::aio::MultiplexedConnection {
    let url = match password {
        Some(p) => format!("redis://:{p}@127.0.0.1:{port}/"),
        None => format!("redis://127.0.0.1:{port}/"),
    };
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_rejects_a_bad_one() {
    let cluster = LocalCluster::start(Options {
        masters: 3,
        replicas_per_master: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let port = free_port().unwrap();
    let path = cluster.dir.join("slotguard.toml");
    let base = format!(
        "listen = \"127.0.0.1:{port}\"\nseeds = [\"{}\"]\n[log]\nformat = \"json\"\n",
        cluster.nodes[0].addr()
    );
    write_config(&path, &base);
    let bin = Binary::start(&path);
    bin.wait_log("slot map updated").await;
    let mut c = connect(port, None).await;
    let () = redis::cmd("SET")
        .arg("r")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();

    // A password appears: new clients must authenticate.
    write_config(&path, &format!("password = \"hunter2\"\n{base}"));
    bin.signal("HUP");
    bin.wait_log("configuration reloaded").await;
    let mut fresh = connect(port, None).await;
    let err = redis::cmd("GET")
        .arg("r")
        .query_async::<redis::Value>(&mut fresh)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"));
    let mut authed = connect(port, Some("hunter2")).await;
    let v: String = redis::cmd("GET")
        .arg("r")
        .query_async(&mut authed)
        .await
        .unwrap();
    assert_eq!(v, "1");

    // A typo is rejected, the running settings stay.
    write_config(
        &path,
        &format!("password = \"other\"\npasword = \"typo\"\n{base}"),
    );
    bin.signal("HUP");
    bin.wait_log("configuration reload rejected").await;
    let mut again = connect(port, Some("hunter2")).await;
    let v: String = redis::cmd("GET")
        .arg("r")
        .query_async(&mut again)
        .await
        .unwrap();
    assert_eq!(v, "1");
    // The logs are JSON, one object a line, and the rejection names the key.
    let log = bin.log();
    let rejected = log.lines().find(|l| l.contains("reload rejected")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(rejected).expect("a JSON log line");
    assert!(
        parsed["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("pasword"),
        "{parsed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_held_requests_before_exiting() {
    let mut cluster = LocalCluster::start(Options {
        masters: 3,
        replicas_per_master: 0,
        node_timeout_ms: 5000,
        ..Options::default()
    })
    .await
    .unwrap();
    let port = free_port().unwrap();
    let path = cluster.dir.join("slotguard.toml");
    write_config(
        &path,
        &format!(
            "listen = \"127.0.0.1:{port}\"\nseeds = [\"{}\"]\n[shutdown]\ngrace = \"20s\"\n",
            cluster.nodes[1].addr()
        ),
    );
    let mut bin = Binary::start(&path);
    bin.wait_log("slot map updated").await;
    let c = connect(port, None).await;
    let key = common::keys_in_slots("held", 0..=5000, 1).remove(0);

    // The master of the key's slot stops; a write to it waits in the hold queue.
    cluster.nodes[0].kill();
    let mut writer = c.clone();
    let k = key.clone();
    let write = tokio::spawn(async move {
        redis::cmd("SET")
            .arg(&k)
            .arg("kept")
            .query_async::<()>(&mut writer)
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!write.is_finished(), "the write waits for its master");

    bin.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(bin.child.try_wait().unwrap().is_none(), "still draining");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "no new clients"
    );

    cluster.restart(0).await.unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(15), write)
        .await
        .expect("the held write completes")
        .unwrap();
    assert!(acked.is_ok(), "{acked:?}");
    assert_eq!(
        bin.wait_exit(Duration::from_secs(10)).await,
        Some(0),
        "{}",
        bin.log()
    );
    drop(c);
    let v: String = redis::cmd("GET")
        .arg(&key)
        .query_async(
            &mut redis::Client::open(format!("redis://{}/", cluster.nodes[0].addr()))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(v, "kept", "the acknowledged write is on its master");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_and_idle_timeout_are_enforced() {
    let h = Harness::tuned(|c| {
        c.max_clients = 2;
        c.idle_timeout = Some(Duration::from_millis(500));
    })
    .await;
    let mut a = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    a.write_all(b"PING\r\n").await.unwrap();
    b.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = a.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
    let n = b.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
    let mut third = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut out = Vec::new();
    third.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"-ERR max number of clients reached\r\n");

    // Idle past the timeout: closed.
    let start = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), a.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "closed when idle");
    assert!(start.elapsed() < Duration::from_secs(3));
}
