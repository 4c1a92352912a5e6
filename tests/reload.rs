//! Every key of `config/slotguard.toml`, changed by a reload (what SIGHUP does): in force
//! at once, or named by the reload as needing a restart. Nothing is copied silently.
//!
//! The walk reads the shipped file, so a key added there without a line here fails the
//! test. Keys a session used to copy when it connected are also checked on a connection
//! opened before the reload.

mod common;

use std::time::Duration;

use common::{make_certs, resp, start_proxy, Raw};
use slotguard::config::Config;

const SHIPPED: &str = include_str!("../config/slotguard.toml");

/// What a reload does with a key.
#[derive(Clone, Copy, Debug)]
enum Takes {
    /// In force at once: the proxy's configuration is the new one and the reload names
    /// nothing.
    Now,
    /// Named by the reload, as the log shows it: in force after a restart.
    Restart(&'static str),
}

use Takes::{Now, Restart};

/// One key changed: the keys set (itself, and what it needs to mean anything: TLS files
/// come in pairs, `[coordination]` needs etcd), and what the reload does.
struct Change {
    key: &'static str,
    sets: &'static [&'static str],
    takes: Takes,
}

const BACKEND_TLS: &str = "tls.backend*";
const COORDINATION: &str = "coordination*";

/// Every key of the shipped file, and `[[users]]`.
const CHANGES: &[Change] = &[
    change("listen", &[], Restart("listen")),
    change("seeds", &[], Now),
    change("threads", &[], Restart("threads")),
    change("password", &[], Now),
    change("state_dir", &[], Restart("state_dir")),
    change("repair.mode", &[], Now),
    change("repair.grace", &[], Now),
    change(
        "admin.listen",
        &["admin.allow_remote", "admin.token"],
        Restart("admin.listen"),
    ),
    // Only an address beyond loopback needs it, and that needs a token.
    change(
        "admin.allow_remote",
        &["admin.listen", "admin.token"],
        Restart("admin.listen"),
    ),
    change("admin.token", &[], Now),
    change("client.max_clients", &[], Now),
    change("client.idle_timeout", &[], Now),
    change("client.max_args", &[], Now),
    change("client.max_bulk_len", &[], Now),
    change("client.max_request_bytes", &[], Now),
    change("client.max_pending", &[], Now),
    change("client.max_inflight_bytes", &[], Now),
    change("client.output_buffer_limit.normal", &[], Now),
    change("client.output_buffer_limit.pubsub", &[], Now),
    change("backend.connections", &[], Restart("backend.connections")),
    change(
        "backend.dedicated_connections",
        &[],
        Restart("backend.dedicated_connections"),
    ),
    change(
        "backend.dedicated_idle",
        &[],
        Restart("backend.dedicated_idle"),
    ),
    change(
        "backend.connect_timeout",
        &[],
        Restart("backend.connect_timeout"),
    ),
    change(
        "backend.username",
        &["backend.password"],
        Restart("backend.username/password"),
    ),
    change(
        "backend.password",
        &[],
        Restart("backend.username/password"),
    ),
    change("backend.read_from", &[], Restart("backend.read_from")),
    change("tls.cert", &["tls.key"], Now),
    change("tls.key", &["tls.cert"], Now),
    change("tls.client_ca", &["tls.cert", "tls.key"], Now),
    change("tls.backend", &["tls.backend_ca"], Restart(BACKEND_TLS)),
    change("tls.backend_ca", &["tls.backend"], Restart(BACKEND_TLS)),
    change(
        "tls.backend_cert",
        &["tls.backend", "tls.backend_ca", "tls.backend_key"],
        Restart(BACKEND_TLS),
    ),
    change(
        "tls.backend_key",
        &["tls.backend", "tls.backend_ca", "tls.backend_cert"],
        Restart(BACKEND_TLS),
    ),
    change(
        "tls.backend_server_name",
        &["tls.backend", "tls.backend_ca"],
        Restart(BACKEND_TLS),
    ),
    change("topology.refresh_interval", &[], Now),
    change("hold.timeout", &[], Now),
    change("hold.max_bytes", &[], Now),
    change("durability.ack", &[], Now),
    change("durability.wait_timeout", &[], Now),
    change("durability.promote", &[], Now),
    change("durability.promote_exempt", &[], Now),
    change("coordination.etcd", &[], Restart(COORDINATION)),
    change(
        "coordination.prefix",
        &["coordination.etcd"],
        Restart(COORDINATION),
    ),
    change(
        "coordination.name",
        &["coordination.etcd"],
        Restart(COORDINATION),
    ),
    change(
        "coordination.lease_ttl",
        &["coordination.etcd"],
        Restart(COORDINATION),
    ),
    change(
        "coordination.username",
        &["coordination.etcd", "coordination.password"],
        Restart(COORDINATION),
    ),
    change(
        "coordination.password",
        &["coordination.etcd", "coordination.username"],
        Restart(COORDINATION),
    ),
    change(
        "coordination.tls_ca",
        &["coordination.etcd"],
        Restart(COORDINATION),
    ),
    change(
        "coordination.tls_cert",
        &[
            "coordination.etcd",
            "coordination.tls_ca",
            "coordination.tls_key",
        ],
        Restart(COORDINATION),
    ),
    change(
        "coordination.tls_key",
        &[
            "coordination.etcd",
            "coordination.tls_ca",
            "coordination.tls_cert",
        ],
        Restart(COORDINATION),
    ),
    change("log.level", &[], Now),
    change("log.format", &[], Restart("log.format")),
    change("shutdown.grace", &[], Now),
    change("users", &[], Now),
];

const fn change(key: &'static str, also: &'static [&'static str], takes: Takes) -> Change {
    Change {
        key,
        sets: also,
        takes,
    }
}

/// The value a change gives `key`: valid, and not the shipped one.
fn value(key: &str, files: &Files) -> toml::Value {
    let s = |v: &str| toml::Value::String(v.to_string());
    let i = toml::Value::Integer;
    match key {
        "listen" => s("127.0.0.1:6390"),
        "seeds" => toml::Value::Array(vec![s("127.0.0.1:7")]),
        "threads" | "backend.connections" => i(2),
        "password" | "backend.password" | "coordination.password" => s("a long secret"),
        "state_dir" => s(&files.state),
        "repair.mode" => s("off"),
        "admin.listen" => s("0.0.0.0:9"),
        "admin.allow_remote" | "tls.backend" => toml::Value::Boolean(true),
        "admin.token" => s("t0ken"),
        "backend.username" | "coordination.username" => s("ops"),
        "backend.read_from" => s("replica"),
        "tls.cert" | "tls.backend_cert" | "coordination.tls_cert" => s(&files.cert),
        "tls.key" | "tls.backend_key" | "coordination.tls_key" => s(&files.key),
        "tls.client_ca" | "tls.backend_ca" | "coordination.tls_ca" => s(&files.ca),
        "tls.backend_server_name" => s("localhost"),
        "durability.ack" => s("replicated"),
        "durability.promote" => s("any"),
        "durability.promote_exempt" => toml::Value::Array(vec![s("127.0.0.1:7001")]),
        "coordination.etcd" => toml::Value::Array(vec![s("http://127.0.0.1:2379")]),
        "coordination.prefix" => s("/other/"),
        "coordination.name" => s("p2"),
        "client.output_buffer_limit.normal" => s("1mb 0 0"),
        "client.output_buffer_limit.pubsub" => s("2mb 1mb 5"),
        "log.level" => s("slotguard=debug,warn"),
        "log.format" => s("json"),
        "users" => users(),
        // The rest are durations and counts: a little more than shipped.
        _ => match SHIPPED.parse::<toml::Table>().unwrap().get_path(key) {
            Some(toml::Value::Integer(n)) => i(n / 2 + 1),
            Some(toml::Value::String(d)) => s(&format!(
                "{}s",
                3 + d.trim_end_matches(['s', 'm']).parse::<u64>().unwrap_or(0)
            )),
            other => panic!("{key}: no new value for {other:?}"),
        },
    }
}

trait GetPath {
    fn get_path(&self, key: &str) -> Option<toml::Value>;
}

impl GetPath for toml::Table {
    fn get_path(&self, key: &str) -> Option<toml::Value> {
        let (first, rest) = match key.split_once('.') {
            Some((first, rest)) => (first, Some(rest)),
            None => (key, None),
        };
        match (self.get(first)?, rest) {
            (toml::Value::Table(t), Some(rest)) => t.get_path(rest),
            (v, None) => Some(v.clone()),
            _ => None,
        }
    }
}

/// One `[[users]]` table, as the shipped file's comment shows it.
fn users() -> toml::Value {
    let user: toml::Table =
        "name = \"reports\"\npassword = \"a long secret\"\naccess = \"read-only\""
            .parse()
            .unwrap();
    toml::Value::Array(vec![toml::Value::Table(user)])
}

/// Files some keys name: TLS material and a state directory.
struct Files {
    cert: String,
    key: String,
    ca: String,
    state: String,
}

/// Every key the shipped file sets, dotted (`client.output_buffer_limit.normal`), and the
/// one it shows in a comment (`users`).
fn shipped_keys() -> Vec<String> {
    fn walk(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in table {
            let key = format!("{prefix}{k}");
            match v {
                toml::Value::Table(t) => walk(t, &format!("{key}."), out),
                _ => out.push(key),
            }
        }
    }
    let mut out = Vec::new();
    walk(&SHIPPED.parse().unwrap(), "", &mut out);
    assert!(SHIPPED.contains("# [[users]]"), "the file shows [[users]]");
    out.push("users".into());
    out
}

/// The shipped file with `edits`, loaded as start-up and SIGHUP load it, listening where
/// `base` listens and seeded as it is (unless an edit says otherwise).
fn variant(base: &Config, edits: &[(&str, toml::Value)]) -> Config {
    let mut table: toml::Table = SHIPPED.parse().unwrap();
    for (path, value) in edits {
        let mut at = &mut table;
        let parts: Vec<&str> = path.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            at = at
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .unwrap();
        }
        at.insert(parts[parts.len() - 1].to_string(), value.clone());
    }
    let text = toml::to_string(&table).unwrap();
    let mut config = Config::parse(&text).unwrap_or_else(|e| panic!("{edits:?}: {}", e.0));
    let edited = |key: &str| edits.iter().any(|(k, _)| *k == key);
    if !edited("listen") {
        config.listen = base.listen;
    }
    if !edited("seeds") {
        config.seeds = base.seeds.clone();
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_is_in_force_after_a_reload_or_named_as_needing_a_restart() {
    slotguard::logging::init("slotguard=info", false);
    let dir = std::env::temp_dir().join(format!("slotguard-reload-{}", std::process::id()));
    let certs = make_certs(&dir.join("certs"));
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let files = Files {
        cert: path(&certs.server.0),
        key: path(&certs.server.1),
        ca: path(&certs.ca),
        state: path(&dir.join("state")),
    };
    let listed: Vec<&str> = CHANGES.iter().map(|c| c.key).collect();
    let keys = shipped_keys();
    let unlisted: Vec<&String> = keys
        .iter()
        .filter(|k| !listed.contains(&k.as_str()))
        .collect();
    assert!(
        unlisted.is_empty(),
        "keys of the shipped file this test does not change: {unlisted:?}"
    );
    let unknown: Vec<&&str> = listed
        .iter()
        .filter(|k| !keys.iter().any(|s| s == *k))
        .collect();
    assert!(
        unknown.is_empty(),
        "keys the shipped file does not have: {unknown:?}"
    );

    let cluster = common::three_masters().await;
    let mut base = Config::parse(SHIPPED).unwrap();
    base.listen = "127.0.0.1:0".parse().unwrap();
    base.seeds = vec![cluster.nodes[0].addr()];
    let running = start_proxy(base.clone()).await;
    let proxy = &running.proxy;
    let base = proxy.config().as_ref().clone();
    let shown = |c: &Config| format!("{c:?}");

    for Change { key, sets, takes } in CHANGES {
        let edits: Vec<(&str, toml::Value)> = std::iter::once(key)
            .chain(sets.iter())
            .map(|k| (*k, value(k, &files)))
            .collect();
        let changed = variant(&base, &edits);
        assert_ne!(
            shown(&changed),
            shown(&base),
            "{key}: the edit changes the configuration"
        );
        let expected = shown(&changed);
        let named = proxy.reload(changed);
        match takes {
            Now => {
                assert!(named.is_empty(), "{key}: the reload names {named:?}");
                assert_eq!(shown(&proxy.config()), expected, "{key}: in force");
            }
            Restart(name) => assert!(named.contains(name), "{key}: the reload names {named:?}"),
        }
        // Back to the start for the next key.
        proxy.reload(base.clone());
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// What a session copied when it connected (its request limits, its idle timeout) is
/// taken again at its next request after a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_exists_takes_the_new_limits() {
    let h = common::Harness::tuned(|_| {}).await;
    let mut raw = Raw::connect(&h).await;
    assert_eq!(&raw.ask(&resp(&["SET", "k", "v"])).await[..], b"+OK\r\n");
    let mut idle = Raw::connect(&h).await;
    assert_eq!(&idle.ask(&resp(&["PING"])).await[..], b"+PONG\r\n");

    let config = Config {
        limits: slotguard::protocol::Limits {
            max_args: 2,
            ..h.proxy.proxy.config().limits.clone()
        },
        idle_timeout: Some(Duration::from_secs(1)),
        ..h.proxy.proxy.config().as_ref().clone()
    };
    assert!(h.proxy.proxy.reload(config).is_empty());
    // The request that finds the new limits is refused by them, as a new connection's is.
    let refused = raw.ask(&resp(&["SET", "k", "w"])).await;
    assert!(
        refused.starts_with(b"-"),
        "{}",
        String::from_utf8_lossy(&refused)
    );

    // The idle timeout, none when it connected, closes the other once it is idle.
    assert_eq!(&idle.ask(&resp(&["PING"])).await[..], b"+PONG\r\n");
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        idle.s.read(&mut byte).await
    })
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed once idle: {closed:?}"
    );
}
