//! Starting and stopping the proxy: the client listener, the topology task, the hold
//! queue, and the admin listener, all on the current tokio runtime.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin;
use crate::cluster::topology;
use crate::config::{Config, Overrides};
use crate::proxy::{session, Proxy};
use crate::routing::Routing;

/// A running proxy.
pub struct Running {
    /// Where clients connect (the bound address, when port 0 was asked for).
    pub addr: SocketAddr,
    /// Where the admin listener is, when enabled.
    pub admin_addr: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    accept: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops at once: no more clients, background tasks aborted.
    pub fn stop(self) {
        self.accept.abort();
        for task in self.tasks {
            task.abort();
        }
    }

    /// Stops gracefully: stops accepting, lets every client receive the replies it is
    /// owed (held requests included) for up to `shutdown.grace`, then stops.
    pub async fn shutdown(self) {
        self.accept.abort();
        self.proxy.begin_shutdown();
        let grace = self.proxy.config().shutdown_grace;
        let deadline = Instant::now() + grace;
        let clients = &self.proxy.metrics.client_connections;
        while clients.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if clients.get() > 0 {
            warn!(
                clients = clients.get(),
                ?grace,
                "grace period over; closing the remaining clients"
            );
        } else {
            info!("every client has its replies; stopping");
        }
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Binds the listeners and starts serving. Returns once the listeners are bound.
pub async fn start(config: Config) -> std::io::Result<Running> {
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
    })?;
    let addr = listener.local_addr()?;
    let admin_listener = match config.admin_listen {
        Some(admin) => Some(TcpListener::bind(admin).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {admin} (admin): {e}"))
        })?),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let (routing, hints) = Routing::new(config);
    let proxy = Proxy::new(routing.clone());
    let mut tasks = vec![
        tokio::spawn(crate::cluster::mover::serve(routing.clone())),
        tokio::spawn(crate::cluster::promotion::run(routing.clone())),
        tokio::spawn(topology::run(routing, hints)),
        tokio::spawn(proxy.clone().follow_routing()),
        tokio::spawn(proxy.clone().run_hold()),
    ];
    if let Some(listener) = admin_listener {
        tasks.push(tokio::spawn(admin::serve(proxy.clone(), listener)));
    }
    let accept = tokio::spawn(accept(proxy.clone(), listener));
    info!(%addr, seeds = ?proxy.config().seeds, "slotguard listening");
    Ok(Running {
        addr,
        admin_addr,
        proxy,
        accept,
        tasks,
    })
}

/// Connections the accept loop takes between two turns it gives the thread's other tasks.
const ACCEPTS_IN_A_ROW: u32 = 32;

/// Accepts clients, a task each (its TLS handshake included). A burst of connections
/// does not keep the thread from the requests of clients already connected: every
/// [`ACCEPTS_IN_A_ROW`] accepts the loop yields.
async fn accept(proxy: Arc<Proxy>, listener: TcpListener) {
    let mut in_a_row = 0;
    loop {
        in_a_row += 1;
        if in_a_row == ACCEPTS_IN_A_ROW {
            in_a_row = 0;
            tokio::task::yield_now().await;
        }
        match listener.accept().await {
            Ok((mut stream, _)) => {
                // The place is taken here, before any TLS handshake: a flood of
                // connections that never finish one cannot go past `max_clients`.
                let Some(admission) = proxy.admit() else {
                    proxy.metrics.clients_refused.inc();
                    tokio::spawn(async move {
                        let _ = stream
                            .write_all(b"-ERR max number of clients reached\r\n")
                            .await;
                    });
                    continue;
                };
                tokio::spawn(session::run(proxy.clone(), stream, admission));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads the configuration file again and applies it; a bad file changes nothing.
pub fn reload(proxy: &Proxy, path: Option<&Path>, flags: &Overrides) {
    let Some(path) = path else {
        warn!("SIGHUP: there is no configuration file to reload");
        return;
    };
    match Config::load(Some(path), flags) {
        Ok(config) => {
            let restart = proxy.reload(config);
            proxy.metrics.reloads.with_label_values(&["ok"]).inc();
            if restart.is_empty() {
                info!(file = %path.display(), "configuration reloaded");
            } else {
                warn!(file = %path.display(), needs_restart = ?restart, "configuration reloaded; some changes take effect at the next restart");
            }
        }
        Err(e) => {
            proxy.metrics.reloads.with_label_values(&["failed"]).inc();
            error!(file = %path.display(), error = %e, "configuration reload rejected; the previous settings stay");
        }
    }
}
