//! Starting the proxy: the client listener, the topology task, the hold queue, and the
//! admin listener, all on the current tokio runtime.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{error, info};

use crate::admin;
use crate::cluster::topology;
use crate::config::Config;
use crate::proxy::{session, Proxy};

/// A running proxy.
pub struct Running {
    /// Where clients connect (the bound address, when port 0 was asked for).
    pub addr: SocketAddr,
    /// Where the admin listener is, when enabled.
    pub admin_addr: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting clients and stops the background tasks.
    pub fn stop(self) {
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
    let (proxy, hints) = Proxy::new(config);
    let mut tasks = vec![
        tokio::spawn(topology::run(proxy.clone(), hints)),
        tokio::spawn(proxy.clone().run_hold()),
        tokio::spawn(accept(proxy.clone(), listener)),
    ];
    if let Some(listener) = admin_listener {
        tasks.push(tokio::spawn(admin::serve(proxy.clone(), listener)));
    }
    info!(%addr, seeds = ?proxy.config.seeds, "slotguard listening");
    Ok(Running {
        addr,
        admin_addr,
        proxy,
        tasks,
    })
}

async fn accept(proxy: Arc<Proxy>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(session::run(proxy.clone(), stream));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                error!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let running = start(config).await?;
    shutdown.await;
    info!("shutting down");
    running.stop();
    Ok(())
}
