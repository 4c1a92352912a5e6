//! A plain request-reply connection to one node: one request at a time, every step under
//! a timeout. The control plane asks with it (topology refreshes, `COMMAND`, repairs,
//! cluster set-up), and the data plane's WAIT reads replication offsets with it. Client
//! requests never travel on it: they have `proxy`'s pipelined connections.

use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use rustc_hash::FxHashMap;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

use crate::protocol::{ReplyScanner, Request, Value};
use crate::tls::{BackendTls, Stream};

/// A failed call: which node, and what went wrong.
#[derive(Debug, Clone)]
pub struct ConnError {
    pub addr: String,
    pub failure: Failure,
}

/// What went wrong on a call to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nothing listens on the port (the connection was refused): the node's process is
    /// gone, or not started yet.
    Refused,
    /// The connection could not be made otherwise (unreachable, timed out).
    Connect(String),
    /// The node refused the credentials (its reply to `AUTH`).
    Auth(String),
    /// No reply came in time.
    Timeout,
    /// Writing or reading failed, or the node closed the connection.
    Io(String),
    /// The node answered with an error reply (its text).
    Reply(String),
    /// The reply could not be read: malformed, or larger than the proxy reads.
    Protocol(String),
}

impl ConnError {
    /// A node's error reply to a call on `addr`.
    pub fn reply(addr: &str, text: &[u8]) -> ConnError {
        ConnError {
            addr: addr.to_string(),
            failure: Failure::Reply(String::from_utf8_lossy(text).into_owned()),
        }
    }

    /// The error code of a node's error reply (`TRYAGAIN`, `ERR`, ...).
    pub fn code(&self) -> Option<&str> {
        match &self.failure {
            Failure::Reply(text) => text.split_whitespace().next(),
            _ => None,
        }
    }

    /// Whether the same call may succeed later: the node was not reached or did not
    /// answer in time, or it answered an error that depends on the cluster's state (a
    /// node that has not yet heard of a change answers `ERR`, `TRYAGAIN`, `CLUSTERDOWN`,
    /// `LOADING`, ...). Refused credentials or permissions (`NOAUTH`, `WRONGPASS`,
    /// `NOPERM`) and a reply that cannot be read will not pass by waiting.
    pub fn may_pass(&self) -> bool {
        match &self.failure {
            Failure::Refused | Failure::Connect(_) | Failure::Timeout | Failure::Io(_) => true,
            Failure::Reply(_) => !matches!(self.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM")),
            Failure::Auth(_) | Failure::Protocol(_) => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused => f.write_str("connect: connection refused"),
            Failure::Connect(why) => write!(f, "connect: {why}"),
            Failure::Auth(why) => write!(f, "AUTH: {why}"),
            Failure::Timeout => f.write_str("no reply in time"),
            Failure::Io(why) | Failure::Reply(why) | Failure::Protocol(why) => f.write_str(why),
        }
    }
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.addr, self.failure)
    }
}

impl std::error::Error for ConnError {}

/// Credentials for a cluster whose nodes require them (`requirepass`, or an ACL user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// `None`: the `default` user.
    pub username: Option<String>,
    pub password: String,
}

impl Auth {
    /// `AUTH [username] password`.
    pub fn args(&self) -> Vec<&str> {
        match &self.username {
            Some(user) => vec!["AUTH", user, &self.password],
            None => vec!["AUTH", &self.password],
        }
    }

    /// The `AUTH` request, as it goes on the wire.
    pub fn request(&self) -> bytes::Bytes {
        Request::from_args(&self.args()).into_raw()
    }

    /// MIGRATE's option for the target's credentials.
    pub fn migrate_option(&self) -> Vec<Vec<u8>> {
        match &self.username {
            Some(user) => vec![
                b"AUTH2".to_vec(),
                user.as_bytes().to_vec(),
                self.password.as_bytes().to_vec(),
            ],
            None => vec![b"AUTH".to_vec(), self.password.as_bytes().to_vec()],
        }
    }
}

/// How such connections reach nodes: a time limit for connecting and for each call, and
/// the cluster's credentials.
#[derive(Clone, Debug)]
pub struct Dial {
    pub limit: Duration,
    pub auth: Option<Auth>,
    /// TLS towards the nodes, when the cluster speaks it.
    pub tls: Option<BackendTls>,
}

impl Dial {
    /// No credentials.
    pub fn new(limit: Duration) -> Dial {
        Dial {
            limit,
            auth: None,
            tls: None,
        }
    }

    /// The same credentials, another time limit.
    pub fn with_limit(&self, limit: Duration) -> Dial {
        Dial {
            limit,
            ..self.clone()
        }
    }
}

/// One request-reply connection.
pub struct Conn {
    addr: String,
    stream: Stream,
    buf: BytesMut,
    timeout: Duration,
}

impl Conn {
    /// Connects to `addr` (`host:port`); `limit` bounds the connect and each later call.
    pub async fn connect(addr: &str, limit: Duration) -> Result<Conn, ConnError> {
        Conn::open(addr, limit, None).await
    }

    async fn open(
        addr: &str,
        limit: Duration,
        tls: Option<&BackendTls>,
    ) -> Result<Conn, ConnError> {
        let stream = crate::tls::connect(addr, limit, tls)
            .await
            .map_err(|e| ConnError {
                addr: addr.to_string(),
                failure: match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => Failure::Refused,
                    _ => Failure::Connect(e.to_string()),
                },
            })?;
        Ok(Conn {
            addr: addr.to_string(),
            stream,
            buf: BytesMut::with_capacity(4096),
            timeout: limit,
        })
    }

    /// Connects and authenticates when `dial` has credentials.
    pub async fn dial(addr: &str, dial: &Dial) -> Result<Conn, ConnError> {
        let mut conn = Conn::open(addr, dial.limit, dial.tls.as_ref()).await?;
        if let Some(auth) = &dial.auth {
            if let Value::Error(e) = conn.call(&auth.args()).await? {
                let why = String::from_utf8_lossy(&e).into_owned();
                return Err(conn.err(Failure::Auth(why)));
            }
        }
        Ok(conn)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one command and reads its reply. An error reply is `Ok(Value::Error)`.
    pub async fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value, ConnError> {
        let req = Request::from_args(args);
        match timeout(self.timeout, self.round_trip(&req)).await {
            Ok(result) => result,
            Err(_) => Err(self.err(Failure::Timeout)),
        }
    }

    /// [`Conn::call`] with its own bound instead of the connection's.
    pub async fn call_within<A: AsRef<[u8]>>(
        &mut self,
        args: &[A],
        limit: Duration,
    ) -> Result<Value, ConnError> {
        let req = Request::from_args(args);
        match timeout(limit, self.round_trip(&req)).await {
            Ok(result) => result,
            Err(_) => Err(self.err(Failure::Timeout)),
        }
    }

    /// Like [`Conn::call`], but an error reply is an `Err` too.
    pub async fn call_ok<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value, ConnError> {
        match self.call(args).await? {
            Value::Error(e) => Err(ConnError::reply(&self.addr, &e)),
            v => Ok(v),
        }
    }

    /// Sends many commands in one write and reads their replies, in order; `limit`
    /// bounds the whole exchange.
    pub async fn pipeline<A: AsRef<[u8]>>(
        &mut self,
        commands: &[Vec<A>],
        limit: Duration,
    ) -> Result<Vec<Value>, ConnError> {
        let mut raw = Vec::new();
        for args in commands {
            raw.extend_from_slice(Request::from_args(args).raw());
        }
        let exchange = async {
            crate::tls::write(&mut self.stream, &raw)
                .await
                .map_err(|e| self.err(Failure::Io(format!("write: {e}"))))?;
            let mut replies = Vec::with_capacity(commands.len());
            for _ in commands {
                replies.push(self.read_reply().await?);
            }
            Ok(replies)
        };
        match timeout(limit, exchange).await {
            Ok(result) => result,
            Err(_) => Err(self.err(Failure::Timeout)),
        }
    }

    async fn round_trip(&mut self, req: &Request) -> Result<Value, ConnError> {
        crate::tls::write(&mut self.stream, req.raw())
            .await
            .map_err(|e| self.err(Failure::Io(format!("write: {e}"))))?;
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> Result<Value, ConnError> {
        let mut scanner = ReplyScanner::default();
        loop {
            if let Some(len) = scanner
                .scan(&self.buf)
                .map_err(|e| self.err(Failure::Protocol(e.to_string())))?
            {
                let frame = self.buf.split_to(len).freeze();
                return Value::parse(&frame)
                    .map_err(|e| self.err(Failure::Protocol(e.to_string())));
            }
            if self.buf.len() > MAX_REPLY {
                let why = format!("a reply over {MAX_REPLY} bytes");
                return Err(self.err(Failure::Protocol(why)));
            }
            self.buf.reserve(16 * 1024);
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| self.err(Failure::Io(format!("read: {e}"))))?;
            if n == 0 {
                return Err(self.err(Failure::Io("connection closed".into())));
            }
        }
    }

    fn err(&self, failure: Failure) -> ConnError {
        ConnError {
            addr: self.addr.clone(),
            failure,
        }
    }
}

/// The largest reply the proxy reads on its own connections: a `DUMP` of a 512 MB
/// string fits; a node sending more is cut off.
const MAX_REPLY: usize = 1 << 30;

/// Idle connections a [`Pool`] keeps per node.
const POOL_PER_NODE: usize = 4;

/// Idle connections to nodes, taken for a few calls and given back (WAIT reads
/// replication offsets on them).
#[derive(Default)]
pub struct Pool {
    idle: Mutex<FxHashMap<String, Vec<Conn>>>,
}

impl Pool {
    /// An idle connection to `addr`, or a new one.
    pub async fn take(&self, addr: &str, dial: &Dial) -> Option<Conn> {
        let pooled = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.get_mut(addr).and_then(Vec::pop)
        };
        match pooled {
            Some(conn) => Some(conn),
            None => Conn::dial(addr, dial).await.ok(),
        }
    }

    /// Keeps a connection that answered its last call, up to [`POOL_PER_NODE`] a node.
    pub fn give(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let conns = idle.entry(conn.addr().to_string()).or_default();
        if conns.len() < POOL_PER_NODE {
            conns.push(conn);
        }
    }

    /// Connections kept now.
    pub fn idle(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum()
    }
}

/// Connects, sends one command, returns its reply.
pub async fn query<A: AsRef<[u8]>>(
    addr: &str,
    args: &[A],
    dial: &Dial,
) -> Result<Value, ConnError> {
    Conn::dial(addr, dial).await?.call(args).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_become_auth_and_migrate_options() {
        let default = Auth {
            username: None,
            password: "pw".into(),
        };
        assert_eq!(default.args(), ["AUTH", "pw"]);
        assert_eq!(default.migrate_option(), [b"AUTH".to_vec(), b"pw".to_vec()]);
        let user = Auth {
            username: Some("proxy".into()),
            password: "pw".into(),
        };
        assert_eq!(user.args(), ["AUTH", "proxy", "pw"]);
        assert_eq!(
            &user.request()[..],
            b"*3\r\n$4\r\nAUTH\r\n$5\r\nproxy\r\n$2\r\npw\r\n"
        );
        assert_eq!(
            user.migrate_option(),
            [b"AUTH2".to_vec(), b"proxy".to_vec(), b"pw".to_vec()]
        );
    }
}
