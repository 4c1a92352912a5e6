//! Configuration: a TOML file, then command-line flags on top.
//!
//! Every key is listed with its default in `config/slotguard.toml`. Unknown keys are
//! errors (a typo must not silently fall back to a default), and so are values that do
//! not parse; each error names the key and the value.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::Limits;

/// Where reads go (`backend.read_from`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// Every request to the slot's master.
    Master,
    /// Reads to the master's replicas only; with none up, they wait like a slot without
    /// an owner.
    Replica,
    /// Reads to a replica when one is up, else (or when it fails the read) to the master.
    PreferReplica,
}

/// What a proxy user may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Commands that change no data.
    ReadOnly,
    /// Everything but commands that wipe data (FLUSHALL, FLUSHDB, SCRIPT FLUSH, FUNCTION
    /// FLUSH|DELETE|LOAD|RESTORE).
    ReadWrite,
    /// Everything the proxy forwards.
    Admin,
}

/// A proxy user (`[[users]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: String,
    pub access: Access,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Cluster nodes to learn the topology from; any subset, one is enough.
    pub seeds: Vec<String>,
    /// Worker threads of the runtime.
    pub threads: usize,
    /// When set, clients must `AUTH` with it first (as the `default` user, full access).
    pub password: Option<String>,
    /// Proxy users besides `default`, each with a password and an access level.
    pub users: Vec<User>,
    /// Admin HTTP listener (`/healthz`), off when `None`.
    pub admin_listen: Option<SocketAddr>,
    /// When set, every admin path but `/healthz` and the page needs
    /// `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    /// Where the migration journal is kept; `None`: in memory only.
    pub state_dir: Option<std::path::PathBuf>,
    /// Repair broken slots (`true`), or only detect, hold and report.
    pub repair_auto: bool,
    /// How long a slot must look like an aborted migration before it is rolled back.
    pub repair_grace: Duration,
    /// Bounds on client requests.
    pub limits: Limits,
    /// Replies a client may have outstanding before the proxy stops reading from it.
    pub max_pending: usize,
    /// Bytes of replies a client may have owed at once, as its replies so far size them;
    /// past it the proxy reads none of its requests until replies drain. A client that
    /// asks for large replies keeps that much in flight on the node connections others
    /// share, not `max_pending` times a large reply.
    pub max_inflight_bytes: usize,
    /// `client.output_buffer_limit.normal`: when a client that leaves its replies unread
    /// is disconnected.
    pub output_limit: OutputLimit,
    /// `client.output_buffer_limit.pubsub`: the same for a subscribed client.
    pub output_limit_pubsub: OutputLimit,
    /// Connections the proxy keeps to each cluster node.
    pub backend_connections: usize,
    /// Most connections to one node that single clients hold for themselves (blocking
    /// commands, WATCH, subscriptions).
    pub dedicated_connections: usize,
    /// A client's own connection with nothing in flight and no WATCH is closed after this.
    pub dedicated_idle: Duration,
    /// How long a connection attempt to a node may take.
    pub connect_timeout: Duration,
    /// The cluster's credentials, when its nodes require them.
    pub backend_auth: Option<crate::client::Auth>,
    /// Where reads go.
    pub read_from: ReadFrom,
    /// TLS on the listener: clients must speak TLS.
    pub tls: Option<crate::tls::ListenerTls>,
    /// TLS towards the cluster's nodes.
    pub backend_tls: Option<crate::tls::BackendTls>,
    /// How often the slot map is refreshed when nothing prompts it.
    pub refresh_interval: Duration,
    /// How long a request may wait for its slot to be served again before the client gets
    /// an error.
    pub hold_timeout: Duration,
    /// Most bytes of requests that may wait at once; past it, new ones fail at once.
    pub hold_max_bytes: usize,
    /// Log filter (`info`, `slotguard=debug`, ...); `RUST_LOG` overrides it.
    pub log_level: String,
    /// One JSON object per log line instead of text.
    pub log_json: bool,
    /// Most clients connected at once; more are refused.
    pub max_clients: usize,
    /// Close a client idle this long; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// On SIGTERM, how long in-flight and held requests may take to finish.
    pub shutdown_grace: Duration,
    /// When a write is answered (`[durability]`).
    pub ack: Ack,
    /// How long one `WAIT` for the replicas may take before it is asked again
    /// (`durability.wait_timeout`); asked again until `hold.timeout`.
    pub wait_timeout: Duration,
    /// Which replicas may win a failover (`durability.promote`).
    pub promote: Promote,
    /// Replicas (`host:port`) whose `cluster-replica-no-failover` the operator keeps: the
    /// proxy never writes it (`durability.promote_exempt`).
    pub promote_exempt: Vec<String>,
    /// Several proxies sharing one journal and one repair authority (`[coordination]`);
    /// `None`: this proxy alone, with its own journal.
    pub coordination: Option<Coordination>,
}

/// Redis's `client-output-buffer-limit` for one class of clients: a client with more than
/// `hard` bytes waiting unwritten, or more than `soft` for `soft_for` on end, is
/// disconnected. 0 turns a limit off. What waits is counted behind the reply being
/// written: one reply larger than the limit goes through alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputLimit {
    pub hard: usize,
    pub soft: usize,
    pub soft_for: Duration,
}

impl OutputLimit {
    /// Parses Redis's form, `"<hard> <soft> <soft seconds>"`, with Redis's units (`1k` is
    /// 1000 bytes, `1kb` 1024; `m`, `mb`, `g`, `gb` alike).
    fn parse(key: &str, value: &str) -> Result<OutputLimit, ConfigError> {
        let expected = "expected \"<hard> <soft> <soft seconds>\", like \"32mb 8mb 60\"";
        let parts: Vec<&str> = value.split_whitespace().collect();
        let [hard, soft, seconds] = parts[..] else {
            return Err(bad(key, value, expected));
        };
        let (Some(hard), Some(soft), Ok(seconds)) = (size(hard), size(soft), seconds.parse())
        else {
            return Err(bad(key, value, expected));
        };
        Ok(OutputLimit {
            hard,
            soft,
            soft_for: Duration::from_secs(seconds),
        })
    }

    /// Whether `unwritten` bytes, past the soft limit since `over_soft_since`, break this
    /// limit: `Some` says which.
    pub fn broken(
        &self,
        unwritten: usize,
        over_soft_since: Option<std::time::Instant>,
    ) -> Option<&'static str> {
        if self.hard > 0 && unwritten > self.hard {
            return Some("hard");
        }
        match over_soft_since {
            Some(since) if self.soft > 0 && since.elapsed() >= self.soft_for => Some("soft"),
            _ => None,
        }
    }

    /// Whether `unwritten` bytes are past the soft limit.
    pub fn over_soft(&self, unwritten: usize) -> bool {
        self.soft > 0 && unwritten > self.soft
    }
}

/// A size in Redis's units: `1000`, `1k` (1000), `1kb` (1024), `m`, `mb`, `g`, `gb`.
fn size(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: usize = digits.parse().ok()?;
    let unit = match &lower[digits.len()..] {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Where several proxies keep their shared journal and elect their authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coordination {
    /// etcd's client URLs (`http://` or `https://`).
    pub endpoints: Vec<String>,
    /// Every key the proxies use starts with it: one prefix per cluster.
    pub prefix: String,
    /// This proxy's name in the lease and in `/status`.
    pub name: String,
    /// How long the authority's lease outlives its last renewal.
    pub lease_ttl: Duration,
    /// etcd user and password.
    pub user: Option<(String, String)>,
    /// The CA of etcd's certificate (PEM), and this proxy's certificate and key for
    /// client authentication.
    pub tls_ca: Option<std::path::PathBuf>,
    pub tls_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// When a write is answered (`durability.ack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// When the master has applied it (Redis's own behaviour).
    Master,
    /// When every replica of the master that is up has it too: a `WAIT` follows each batch
    /// of writes on a node connection.
    Replicated,
}

/// Which replicas may win a failover (`durability.promote`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promote {
    /// Only a replica that has synced with its master since it last started or changed
    /// masters: the proxy keeps `cluster-replica-no-failover yes` on the others
    /// (`cluster::promotion`).
    Synced,
    /// Any replica, as the cluster itself decides.
    Any,
}

impl Config {
    /// How the control plane reaches nodes.
    pub fn dial(&self) -> crate::client::Dial {
        crate::client::Dial {
            limit: self.connect_timeout,
            auth: self.backend_auth.clone(),
            tls: self.backend_tls.clone(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        File::default()
            .validate()
            .expect("the built-in defaults are valid")
    }
}

/// The file as written, before validation.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct File {
    listen: String,
    seeds: Vec<String>,
    threads: usize,
    password: String,
    users: Vec<UserEntry>,
    state_dir: String,
    admin: AdminSection,
    repair: RepairSection,
    client: ClientSection,
    backend: BackendSection,
    tls: TlsSection,
    topology: TopologySection,
    hold: HoldSection,
    log: LogSection,
    shutdown: ShutdownSection,
    durability: DurabilitySection,
    coordination: CoordinationSection,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct CoordinationSection {
    etcd: Vec<String>,
    prefix: String,
    name: String,
    lease_ttl: String,
    username: String,
    password: String,
    tls_ca: String,
    tls_cert: String,
    tls_key: String,
}

impl Default for CoordinationSection {
    fn default() -> Self {
        CoordinationSection {
            etcd: Vec::new(),
            prefix: "/slotguard/".into(),
            name: String::new(),
            lease_ttl: "5s".into(),
            username: String::new(),
            password: String::new(),
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

impl CoordinationSection {
    fn validate(self, listen: SocketAddr) -> Result<Option<Coordination>, ConfigError> {
        if self.etcd.is_empty() {
            return Ok(None);
        }
        for url in &self.etcd {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad(
                    "coordination.etcd",
                    url,
                    "expected an http:// or https:// URL",
                ));
            }
        }
        if self.prefix.is_empty() {
            return Err(bad("coordination.prefix", "", "must not be empty"));
        }
        let lease_ttl = duration("coordination.lease_ttl", &self.lease_ttl)?;
        if lease_ttl < Duration::from_secs(2) {
            return Err(bad(
                "coordination.lease_ttl",
                &self.lease_ttl,
                "at least 2s",
            ));
        }
        let user = match (some(&self.username), some(&self.password)) {
            (None, None) => None,
            (Some(u), Some(p)) => Some((u.to_string(), p.to_string())),
            _ => {
                return Err(ConfigError(
                    "coordination.username and coordination.password go together".into(),
                ))
            }
        };
        let tls_identity = match (some(&self.tls_cert), some(&self.tls_key)) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((c.into(), k.into())),
            _ => {
                return Err(ConfigError(
                    "coordination.tls_cert and coordination.tls_key go together".into(),
                ))
            }
        };
        Ok(Some(Coordination {
            endpoints: self.etcd,
            prefix: self.prefix,
            name: Some(self.name)
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| listen.to_string()),
            lease_ttl,
            user,
            tls_ca: some(&self.tls_ca).map(Into::into),
            tls_identity,
        }))
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct DurabilitySection {
    ack: String,
    wait_timeout: String,
    promote: String,
    promote_exempt: Vec<String>,
}

impl Default for DurabilitySection {
    fn default() -> Self {
        DurabilitySection {
            ack: "master".into(),
            wait_timeout: "100ms".into(),
            promote: "synced".into(),
            promote_exempt: Vec::new(),
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct TlsSection {
    cert: String,
    key: String,
    client_ca: String,
    backend: bool,
    backend_ca: String,
    backend_cert: String,
    backend_key: String,
    backend_server_name: String,
}

/// A path given, or `None` for an empty string.
fn some(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

impl TlsSection {
    fn listener(&self) -> Result<Option<crate::tls::ListenerTls>, ConfigError> {
        match (some(&self.cert), some(&self.key)) {
            (None, None) if some(&self.client_ca).is_some() => Err(bad(
                "tls.client_ca",
                &self.client_ca,
                "needs tls.cert and tls.key",
            )),
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => crate::tls::acceptor(cert, key, some(&self.client_ca))
                .map(Some)
                .map_err(|e| ConfigError(e.0)),
            _ => Err(ConfigError("tls.cert and tls.key go together".into())),
        }
    }

    fn backend(&self) -> Result<Option<crate::tls::BackendTls>, ConfigError> {
        if !self.backend {
            return Ok(None);
        }
        let Some(ca) = some(&self.backend_ca) else {
            return Err(bad(
                "tls.backend_ca",
                "",
                "tls.backend needs the CA that signed the nodes' certificates",
            ));
        };
        crate::tls::backend(
            ca,
            some(&self.backend_cert),
            some(&self.backend_key),
            some(&self.backend_server_name),
        )
        .map(Some)
        .map_err(|e| ConfigError(e.0))
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password: String,
    access: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct RepairSection {
    mode: String,
    grace: String,
}

impl Default for RepairSection {
    fn default() -> Self {
        RepairSection {
            mode: "auto".into(),
            grace: "5s".into(),
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct AdminSection {
    listen: String,
    token: String,
    /// The admin listener may listen beyond loopback only when this says so.
    allow_remote: bool,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct ClientSection {
    max_clients: usize,
    idle_timeout: String,
    max_args: usize,
    max_bulk_len: usize,
    max_request_bytes: usize,
    max_pending: usize,
    max_inflight_bytes: usize,
    /// Before `output_buffer_limit`: the hard limit for normal clients. Still read.
    max_output_bytes: Option<usize>,
    output_buffer_limit: OutputBufferLimitSection,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct OutputBufferLimitSection {
    normal: Option<String>,
    pubsub: String,
}

/// The normal clients' limit when neither `output_buffer_limit.normal` nor
/// `max_output_bytes` says otherwise.
const NORMAL_OUTPUT_LIMIT: &str = "32mb 0 0";

impl Default for OutputBufferLimitSection {
    fn default() -> Self {
        OutputBufferLimitSection {
            normal: None,
            pubsub: "32mb 8mb 60".into(),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct BackendSection {
    connections: usize,
    dedicated_connections: usize,
    dedicated_idle: String,
    username: String,
    password: String,
    read_from: String,
    connect_timeout: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct TopologySection {
    refresh_interval: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct HoldSection {
    timeout: String,
    max_bytes: usize,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct LogSection {
    level: String,
    format: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct ShutdownSection {
    grace: String,
}

impl Default for File {
    fn default() -> Self {
        File {
            listen: "127.0.0.1:6380".into(),
            seeds: Vec::new(),
            threads: 1,
            password: String::new(),
            users: Vec::new(),
            state_dir: String::new(),
            admin: AdminSection::default(),
            repair: RepairSection::default(),
            client: ClientSection::default(),
            backend: BackendSection::default(),
            tls: TlsSection::default(),
            topology: TopologySection::default(),
            hold: HoldSection::default(),
            log: LogSection::default(),
            shutdown: ShutdownSection::default(),
            durability: DurabilitySection::default(),
            coordination: CoordinationSection::default(),
        }
    }
}

impl Default for ClientSection {
    fn default() -> Self {
        let limits = Limits::default();
        ClientSection {
            max_clients: 10_000,
            idle_timeout: "0s".into(),
            max_args: limits.max_args,
            max_bulk_len: limits.max_bulk_len,
            max_request_bytes: limits.max_request_bytes,
            max_pending: 10_000,
            max_inflight_bytes: 1024 * 1024,
            max_output_bytes: None,
            output_buffer_limit: OutputBufferLimitSection::default(),
        }
    }
}

impl Default for BackendSection {
    fn default() -> Self {
        BackendSection {
            connections: 1,
            dedicated_connections: 256,
            dedicated_idle: "30s".into(),
            username: String::new(),
            password: String::new(),
            read_from: "master".into(),
            connect_timeout: "1s".into(),
        }
    }
}

impl Default for TopologySection {
    fn default() -> Self {
        TopologySection {
            refresh_interval: "1s".into(),
        }
    }
}

impl Default for HoldSection {
    fn default() -> Self {
        HoldSection {
            timeout: "20s".into(),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection {
            grace: "10s".into(),
        }
    }
}

/// A configuration error; the text names the key and the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn bad(key: &str, value: &str, why: &str) -> ConfigError {
    ConfigError(format!("{key} = {value:?}: {why}"))
}

/// Flags given on the command line; each replaces the file's value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub seeds: Vec<String>,
    pub admin_listen: Option<String>,
}

impl Config {
    /// Reads the file (if any), applies the flags, validates.
    pub fn load(path: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let mut file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
                File::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e)))?
            }
            None => File::default(),
        };
        if let Some(listen) = &flags.listen {
            file.listen = listen.clone();
        }
        if !flags.seeds.is_empty() {
            file.seeds = flags.seeds.clone();
        }
        if let Some(admin) = &flags.admin_listen {
            file.admin.listen = admin.clone();
        }
        file.validate()
    }

    /// Parses and validates a configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        File::parse(text)?.validate()
    }
}

impl File {
    fn parse(text: &str) -> Result<File, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.to_string().trim_end().to_string()))
    }

    fn validate(self) -> Result<Config, ConfigError> {
        let listen = socket_addr("listen", &self.listen)?;
        for seed in &self.seeds {
            node_addr("seeds", seed)?;
        }
        let admin_listen = match self.admin.listen.as_str() {
            "" => None,
            addr => Some(socket_addr("admin.listen", addr)?),
        };
        if let Some(addr) = admin_listen.filter(|a| !a.ip().is_loopback()) {
            if !self.admin.allow_remote {
                return Err(ConfigError(format!(
                    "admin.listen = \"{addr}\" is beyond loopback: set admin.allow_remote = true to allow it (and admin.token to require a token)"
                )));
            }
        }
        let admin_token = Some(self.admin.token.clone()).filter(|t| !t.is_empty());
        if self.threads == 0 || self.threads > 1024 {
            return Err(bad(
                "threads",
                &self.threads.to_string(),
                "expected 1 to 1024",
            ));
        }
        positive("client.max_args", self.client.max_args)?;
        positive("client.max_bulk_len", self.client.max_bulk_len)?;
        positive("client.max_request_bytes", self.client.max_request_bytes)?;
        positive("client.max_pending", self.client.max_pending)?;
        positive("client.max_inflight_bytes", self.client.max_inflight_bytes)?;
        let output_limit = match (
            &self.client.output_buffer_limit.normal,
            self.client.max_output_bytes,
        ) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "client.max_output_bytes",
                    "set",
                    "client.output_buffer_limit.normal replaces it; set one of them",
                ))
            }
            (Some(normal), None) => {
                OutputLimit::parse("client.output_buffer_limit.normal", normal)?
            }
            (None, Some(hard)) => {
                positive("client.max_output_bytes", hard)?;
                OutputLimit {
                    hard,
                    soft: 0,
                    soft_for: Duration::ZERO,
                }
            }
            (None, None) => {
                OutputLimit::parse("client.output_buffer_limit.normal", NORMAL_OUTPUT_LIMIT)?
            }
        };
        let output_limit_pubsub = OutputLimit::parse(
            "client.output_buffer_limit.pubsub",
            &self.client.output_buffer_limit.pubsub,
        )?;
        positive("client.max_clients", self.client.max_clients)?;
        let log_json = match self.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => return Err(bad("log.format", other, "expected \"text\" or \"json\"")),
        };
        positive("hold.max_bytes", self.hold.max_bytes)?;
        if self.client.max_request_bytes > u32::MAX as usize {
            return Err(bad(
                "client.max_request_bytes",
                &self.client.max_request_bytes.to_string(),
                "at most 4294967295",
            ));
        }
        if !(1..=64).contains(&self.backend.connections) {
            return Err(bad(
                "backend.connections",
                &self.backend.connections.to_string(),
                "expected 1 to 64",
            ));
        }
        positive(
            "backend.dedicated_connections",
            self.backend.dedicated_connections,
        )?;
        let log_level = self.log.level.clone();
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(bad("log.level", &log_level, "not a log filter"));
        }
        Ok(Config {
            listen,
            seeds: self.seeds,
            threads: self.threads,
            password: Some(self.password).filter(|p| !p.is_empty()),
            users: self
                .users
                .into_iter()
                .map(UserEntry::validate)
                .collect::<Result<_, _>>()?,
            admin_listen,
            admin_token,
            state_dir: Some(self.state_dir)
                .filter(|d| !d.is_empty())
                .map(std::path::PathBuf::from),
            repair_auto: match self.repair.mode.as_str() {
                "auto" => true,
                "off" => false,
                other => return Err(bad("repair.mode", other, "expected \"auto\" or \"off\"")),
            },
            repair_grace: duration("repair.grace", &self.repair.grace)?,
            limits: Limits {
                max_args: self.client.max_args,
                max_bulk_len: self.client.max_bulk_len,
                max_request_bytes: self.client.max_request_bytes,
            },
            max_pending: self.client.max_pending,
            max_inflight_bytes: self.client.max_inflight_bytes,
            output_limit,
            output_limit_pubsub,
            backend_connections: self.backend.connections,
            dedicated_connections: self.backend.dedicated_connections,
            dedicated_idle: duration("backend.dedicated_idle", &self.backend.dedicated_idle)?,
            connect_timeout: duration("backend.connect_timeout", &self.backend.connect_timeout)?,
            tls: self.tls.listener()?,
            backend_tls: self.tls.backend()?,
            read_from: match self.backend.read_from.as_str() {
                "master" => ReadFrom::Master,
                "replica" => ReadFrom::Replica,
                "prefer-replica" => ReadFrom::PreferReplica,
                other => {
                    return Err(bad(
                        "backend.read_from",
                        other,
                        "expected \"master\", \"replica\" or \"prefer-replica\"",
                    ))
                }
            },
            backend_auth: match (self.backend.username, self.backend.password) {
                (user, password) if password.is_empty() => {
                    if !user.is_empty() {
                        return Err(bad(
                            "backend.username",
                            &user,
                            "a username needs backend.password too",
                        ));
                    }
                    None
                }
                (user, password) => Some(crate::client::Auth {
                    username: Some(user).filter(|u| !u.is_empty()),
                    password,
                }),
            },
            refresh_interval: duration(
                "topology.refresh_interval",
                &self.topology.refresh_interval,
            )?,
            hold_timeout: duration("hold.timeout", &self.hold.timeout)?,
            hold_max_bytes: self.hold.max_bytes,
            log_level,
            log_json,
            max_clients: self.client.max_clients,
            idle_timeout: match self.client.idle_timeout.as_str() {
                "0" | "0s" | "off" => None,
                text => Some(duration("client.idle_timeout", text)?),
            },
            shutdown_grace: duration("shutdown.grace", &self.shutdown.grace)?,
            ack: match self.durability.ack.as_str() {
                "master" => Ack::Master,
                "replicated" => Ack::Replicated,
                other => {
                    return Err(bad(
                        "durability.ack",
                        other,
                        "expected \"master\" or \"replicated\"",
                    ))
                }
            },
            wait_timeout: duration("durability.wait_timeout", &self.durability.wait_timeout)?,
            promote: match self.durability.promote.as_str() {
                "synced" => Promote::Synced,
                "any" => Promote::Any,
                other => {
                    return Err(bad(
                        "durability.promote",
                        other,
                        "expected \"synced\" or \"any\"",
                    ))
                }
            },
            promote_exempt: self.durability.promote_exempt.clone(),
            coordination: self.coordination.validate(listen)?,
        })
    }
}

impl UserEntry {
    fn validate(self) -> Result<User, ConfigError> {
        let access = match self.access.as_str() {
            "read-only" => Access::ReadOnly,
            "read-write" => Access::ReadWrite,
            "admin" => Access::Admin,
            other => {
                return Err(bad(
                    "users.access",
                    other,
                    "expected \"read-only\", \"read-write\" or \"admin\"",
                ))
            }
        };
        if self.name.is_empty() || self.name == "default" || self.name.contains(' ') {
            return Err(bad(
                "users.name",
                &self.name,
                "expected a name without spaces, other than \"default\"",
            ));
        }
        if self.password.is_empty() {
            return Err(bad("users.password", "", "every user needs a password"));
        }
        Ok(User {
            name: self.name,
            password: self.password,
            access,
        })
    }
}

fn positive(key: &str, n: usize) -> Result<(), ConfigError> {
    if n == 0 {
        return Err(bad(key, "0", "must be at least 1"));
    }
    Ok(())
}

fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        bad(
            key,
            value,
            "expected an IP address and port, like 127.0.0.1:6380",
        )
    })
}

/// A cluster node address: `host:port`, the host a name or an IP.
pub fn node_addr(key: &str, value: &str) -> Result<(), ConfigError> {
    let valid = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        return Err(bad(key, value, "expected host:port, like 127.0.0.1:7000"));
    }
    Ok(())
}

/// A duration written as a number and a unit: `250ms`, `20s`, `5m`, `1h`.
pub fn duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &value[digits.len()..];
    let n: u64 = digits
        .parse()
        .map_err(|_| bad(key, value, "expected a duration like 500ms, 20s or 5m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(bad(
                key,
                value,
                "expected a duration with a unit: ms, s, m or h",
            ))
        }
    };
    if d.is_zero() {
        return Err(bad(key, value, "must be longer than zero"));
    }
    Ok(d)
}

/// Compares secrets (passwords, tokens) in time that depends on their length only, not
/// on where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_lists_every_default() {
        let shipped = include_str!("../config/slotguard.toml");
        let parsed = Config::parse(shipped).unwrap();
        let default = Config::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    #[test]
    fn errors_name_the_key_and_value() {
        let cases = [
            ("listn = \"x\"", "unknown field `listn`"),
            ("listen = \"nowhere\"", "listen = \"nowhere\""),
            ("seeds = [\"127.0.0.1\"]", "seeds = \"127.0.0.1\""),
            ("[hold]\ntimeout = \"20\"", "hold.timeout = \"20\""),
            ("[hold]\ntimeout = \"soon\"", "hold.timeout = \"soon\""),
            ("[backend]\nconnections = 0", "backend.connections = \"0\""),
            ("[client]\nmax_pending = 0", "client.max_pending = \"0\""),
            ("[hold]\ntimout = \"1s\"", "unknown field `timout`"),
            ("[durability]\nack = \"all\"", "durability.ack = \"all\""),
            ("threads = \"two\"", "invalid type"),
            (
                "[tls]\ncert = \"/nonexistent.crt\"\nkey = \"/nonexistent.key\"",
                "tls.cert = \"/nonexistent.crt\"",
            ),
            (
                "[tls]\ncert = \"/x.crt\"",
                "tls.cert and tls.key go together",
            ),
            ("[tls]\nbackend = true", "tls.backend_ca"),
            (
                "[backend]\nread_from = \"any\"",
                "backend.read_from = \"any\"",
            ),
            ("[backend]\nusername = \"u\"", "backend.username = \"u\""),
            (
                "[[users]]\nname = \"r\"\npassword = \"p\"\naccess = \"root\"",
                "users.access = \"root\"",
            ),
            (
                "[[users]]\nname = \"default\"\npassword = \"p\"\naccess = \"admin\"",
                "users.name = \"default\"",
            ),
            (
                "[admin]\nlisten = \"0.0.0.0:9000\"",
                "admin.listen = \"0.0.0.0:9000\" is beyond loopback",
            ),
            (
                "[coordination]\netcd = [\"127.0.0.1:2379\"]",
                "coordination.etcd = \"127.0.0.1:2379\"",
            ),
            (
                "[coordination]\netcd = [\"http://e:2379\"]\nlease_ttl = \"1s\"",
                "coordination.lease_ttl = \"1s\": at least 2s",
            ),
            (
                "[coordination]\netcd = [\"http://e:2379\"]\nusername = \"u\"",
                "coordination.username and coordination.password go together",
            ),
        ];
        for (text, want) in cases {
            let err = Config::parse(text).unwrap_err().0;
            assert!(err.contains(want), "{text:?} gave {err:?}, wanted {want:?}");
        }
    }

    #[test]
    fn the_admin_listener_goes_beyond_loopback_only_when_told() {
        let local = Config::parse("[admin]\nlisten = \"127.0.0.1:9000\"").unwrap();
        assert_eq!(local.admin_token, None);
        let remote = "[admin]\nlisten = \"0.0.0.0:9000\"\nallow_remote = true\ntoken = \"s3cret\"";
        let remote = Config::parse(remote).unwrap();
        assert_eq!(remote.admin_token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn output_buffer_limits_read_as_redis_writes_them() {
        let c = Config::parse("").unwrap();
        let mb = 1024 * 1024;
        assert_eq!(
            (c.output_limit.hard, c.output_limit.soft),
            (32 * mb, 0),
            "normal clients: 32 MB hard"
        );
        assert_eq!(
            c.output_limit_pubsub,
            OutputLimit {
                hard: 32 * mb,
                soft: 8 * mb,
                soft_for: Duration::from_secs(60)
            },
            "subscribers: Redis's default"
        );
        let c = Config::parse(
            "[client.output_buffer_limit]\nnormal = \"64MB 16mb 10\"\npubsub = \"1k 2kb 0\"",
        )
        .unwrap();
        assert_eq!(
            c.output_limit,
            OutputLimit {
                hard: 64 * mb,
                soft: 16 * mb,
                soft_for: Duration::from_secs(10)
            }
        );
        assert_eq!(
            (c.output_limit_pubsub.hard, c.output_limit_pubsub.soft),
            (1000, 2048)
        );
        let c = Config::parse("[client]\nmax_output_bytes = 1048576").unwrap();
        assert_eq!(c.output_limit.hard, mb, "the older key is the hard limit");
        for bad in [
            "[client.output_buffer_limit]\nnormal = \"32mb 8mb\"",
            "[client.output_buffer_limit]\npubsub = \"32xb 8mb 60\"",
            "[client.output_buffer_limit]\nnormal = \"-1 0 0\"",
            "[client]\nmax_output_bytes = 1\n[client.output_buffer_limit]\nnormal = \"1 0 0\"",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_output_limit_breaks_past_hard_or_soft_for_long_enough() {
        let limit = OutputLimit {
            hard: 100,
            soft: 10,
            soft_for: Duration::from_secs(5),
        };
        let now = std::time::Instant::now();
        assert_eq!(limit.broken(101, None), Some("hard"));
        assert_eq!(limit.broken(50, Some(now)), None);
        let then = now - Duration::from_secs(5);
        assert_eq!(limit.broken(50, Some(then)), Some("soft"));
        assert!(limit.over_soft(11) && !limit.over_soft(10));
        let off = OutputLimit {
            hard: 0,
            soft: 0,
            soft_for: Duration::ZERO,
        };
        assert_eq!(off.broken(usize::MAX, Some(then)), None);
    }

    #[test]
    fn durations() {
        assert_eq!(duration("k", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("k", "2m").unwrap(), Duration::from_secs(120));
        assert!(duration("k", "0s").is_err());
        assert!(duration("k", "-1s").is_err());
        assert!(duration("k", "1.5s").is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let flags = Overrides {
            listen: Some("127.0.0.1:7777".into()),
            seeds: vec!["localhost:7000".into()],
            admin_listen: None,
        };
        let c = Config::load(None, &flags).unwrap();
        assert_eq!(c.listen.port(), 7777);
        assert_eq!(c.seeds, vec!["localhost:7000".to_string()]);
    }
}
