//! TLS towards clients (`tls.cert`, `tls.key`, optional `tls.client_ca`) and towards the
//! cluster (`tls.backend`), with rustls.
//!
//! Every connection the proxy reads and writes is a [`Stream`]: plain TCP or TLS, one enum,
//! so the session, the backend connections, subscriptions and the control plane share one
//! code path. None of them splits its stream: each writes and reads in turn.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// A connection, in the clear or over TLS.
pub enum Stream {
    Tcp(TcpStream),
    /// The proxy connected to a node over TLS.
    Client(Box<client::TlsStream<TcpStream>>),
    /// A client connected to the proxy over TLS.
    Server(Box<server::TlsStream<TcpStream>>),
}

impl Stream {
    /// This end's address.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr(),
            Stream::Client(s) => s.get_ref().0.local_addr(),
            Stream::Server(s) => s.get_ref().0.local_addr(),
        }
        .ok()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Client(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The listener's TLS.
#[derive(Clone)]
pub struct ListenerTls(pub TlsAcceptor);

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListenerTls")
    }
}

/// Writes all of `buf` and flushes it (TLS buffers records; TCP's flush does nothing).
pub async fn write(stream: &mut Stream, buf: &[u8]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    stream.write_all(buf).await?;
    if !matches!(stream, Stream::Tcp(_)) {
        stream.flush().await?;
    }
    Ok(())
}

/// How the proxy speaks TLS to the cluster's nodes.
#[derive(Clone)]
pub struct BackendTls {
    connector: TlsConnector,
    /// The name node certificates must carry; `None`: the address the node is dialed at.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Connects to a node, over TLS when `tls` is given; `limit` bounds connect and handshake.
pub async fn connect(addr: &str, limit: Duration, tls: Option<&BackendTls>) -> io::Result<Stream> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
    let deadline = tokio::time::Instant::now() + limit;
    let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())??;
    tcp.set_nodelay(true).ok();
    let Some(tls) = tls else {
        return Ok(Stream::Tcp(tcp));
    };
    let name = match &tls.server_name {
        Some(name) => name.clone(),
        None => host_name(addr)?,
    };
    let stream = tokio::time::timeout_at(deadline, tls.connector.connect(name, tcp))
        .await
        .map_err(|_| timed_out())??;
    Ok(Stream::Client(Box::new(stream)))
}

/// The host part of `host:port` as a TLS server name (an IP address or a DNS name).
fn host_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))
}

/// What went wrong loading TLS files, naming the key.
#[derive(Debug)]
pub struct TlsError(pub String);

fn certs(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = std::fs::File::open(path).map_err(|e| TlsError(format!("{key} = {path:?}: {e}")))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut io::BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("{key} = {path:?}: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{key} = {path:?}: no certificate in the file"
        )));
    }
    Ok(certs)
}

fn private_key(key: &str, path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file = std::fs::File::open(path).map_err(|e| TlsError(format!("{key} = {path:?}: {e}")))?;
    rustls_pemfile::private_key(&mut io::BufReader::new(file))
        .map_err(|e| TlsError(format!("{key} = {path:?}: {e}")))?
        .ok_or_else(|| TlsError(format!("{key} = {path:?}: no private key in the file")))
}

fn roots(key: &str, path: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(key, path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError(format!("{key} = {path:?}: {e}")))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's TLS: its certificate and key, and, when `client_ca` is given, client
/// certificates signed by that CA are required.
pub fn acceptor(cert: &str, key: &str, client_ca: Option<&str>) -> Result<ListenerTls, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots("tls.client_ca", ca)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError(format!("tls.client_ca = {ca:?}: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs("tls.cert", cert)?, private_key("tls.key", key)?)
        .map_err(|e| TlsError(format!("tls.cert / tls.key: {e}")))?;
    Ok(ListenerTls(TlsAcceptor::from(Arc::new(config))))
}

/// TLS towards the nodes: trusting `ca`, presenting `cert` and `key` when given (Redis
/// asks for a client certificate unless `tls-auth-clients no`).
pub fn backend(
    ca: &str,
    cert: Option<&str>,
    key: Option<&str>,
    server_name: Option<&str>,
) -> Result<BackendTls, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots("tls.backend_ca", ca)?);
    let config = match (cert, key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                certs("tls.backend_cert", cert)?,
                private_key("tls.backend_key", key)?,
            )
            .map_err(|e| TlsError(format!("tls.backend_cert / tls.backend_key: {e}")))?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError(
                "tls.backend_cert and tls.backend_key go together".into(),
            ))
        }
    };
    let server_name = server_name
        .map(|name| {
            ServerName::try_from(name.to_string())
                .map_err(|e| TlsError(format!("tls.backend_server_name = {name:?}: {e}")))
        })
        .transpose()?;
    Ok(BackendTls {
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
    })
}
