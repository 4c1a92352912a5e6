//! The admin listener: a minimal HTTP/1.1 responder for health checks.
//!
//! `/healthz` answers 200 while the process runs; `/readyz` answers 200 once the slot map
//! covers all 16384 slots, 503 before.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::protocol::SLOTS;
use crate::proxy::Proxy;

/// Largest request head read.
const MAX_HEAD: usize = 8192;

pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(proxy.clone(), stream));
        }
    }
}

async fn answer(proxy: Arc<Proxy>, mut stream: TcpStream) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 && head.len() + n <= MAX_HEAD => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let path = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    let (status, body) = match path {
        b"/healthz" => ("200 OK", "ok\n".to_string()),
        b"/readyz" => {
            let covered = proxy.table.load().covered();
            if covered == SLOTS {
                ("200 OK", "ready\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    format!("slot map covers {covered} of {SLOTS} slots\n"),
                )
            }
        }
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}
