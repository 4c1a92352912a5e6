//! A plain request-reply connection to one node, for the control plane (topology
//! refreshes, `COMMAND`, cluster set-up): one request at a time, every step under a
//! timeout. The data plane never uses it.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::protocol::{ReplyScanner, Request, Value};

/// A control-plane failure: which node, and what went wrong.
#[derive(Debug, Clone)]
pub struct ConnError {
    pub addr: String,
    pub what: String,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.addr, self.what)
    }
}

impl std::error::Error for ConnError {}

/// One control connection.
pub struct Conn {
    addr: String,
    stream: TcpStream,
    buf: BytesMut,
    timeout: Duration,
}

impl Conn {
    /// Connects to `addr` (`host:port`); `limit` bounds the connect and each later call.
    pub async fn connect(addr: &str, limit: Duration) -> Result<Conn, ConnError> {
        let err = |what: String| ConnError {
            addr: addr.to_string(),
            what,
        };
        let stream = timeout(limit, TcpStream::connect(addr))
            .await
            .map_err(|_| err("connect timed out".into()))?
            .map_err(|e| err(format!("connect: {e}")))?;
        stream.set_nodelay(true).ok();
        Ok(Conn {
            addr: addr.to_string(),
            stream,
            buf: BytesMut::with_capacity(4096),
            timeout: limit,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one command and reads its reply. An error reply is `Ok(Value::Error)`.
    pub async fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value, ConnError> {
        let req = Request::from_args(args);
        match timeout(self.timeout, self.round_trip(&req)).await {
            Ok(result) => result,
            Err(_) => Err(self.err("no reply in time".into())),
        }
    }

    /// Like [`Conn::call`], but an error reply is an `Err` too.
    pub async fn call_ok<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value, ConnError> {
        match self.call(args).await? {
            Value::Error(e) => Err(self.err(String::from_utf8_lossy(&e).into_owned())),
            v => Ok(v),
        }
    }

    async fn round_trip(&mut self, req: &Request) -> Result<Value, ConnError> {
        self.stream
            .write_all(req.raw())
            .await
            .map_err(|e| self.err(format!("write: {e}")))?;
        let mut scanner = ReplyScanner::default();
        loop {
            if let Some(len) = scanner
                .scan(&self.buf)
                .map_err(|e| self.err(e.to_string()))?
            {
                let frame = self.buf.split_to(len).freeze();
                return Value::parse(&frame).map_err(|e| self.err(e.to_string()));
            }
            self.buf.reserve(16 * 1024);
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| self.err(format!("read: {e}")))?;
            if n == 0 {
                return Err(self.err("connection closed".into()));
            }
        }
    }

    fn err(&self, what: String) -> ConnError {
        ConnError {
            addr: self.addr.clone(),
            what,
        }
    }
}

/// Connects, sends one command, returns its reply.
pub async fn query<A: AsRef<[u8]>>(
    addr: &str,
    args: &[A],
    limit: Duration,
) -> Result<Value, ConnError> {
    Conn::connect(addr, limit).await?.call(args).await
}
