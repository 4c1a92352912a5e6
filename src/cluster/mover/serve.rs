//! Moves of slots asked for through the proxy (`SLOTGUARD MIGRATE`, `REBALANCE`,
//! `DRAIN`): one at a time, answered with the plan, progress published.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster::authority::Cluster;
use crate::cluster::diagnose::discover;
use crate::cluster::heal::addresses;
use crate::cluster::journal::Journal;
use crate::cluster::repair::{self};
use crate::cluster::Error;
use crate::protocol::reply;
use crate::routing::{MoveRequest, Routing};

use super::{describe, owned, plan, run_moves, Options, Progress};

/// Serves the moves of slots asked for through the proxy, one at a time: each is planned
/// from the cluster as it is, answered with its plan, run, and its progress published for
/// `SLOTGUARD MIGRATIONS` and `/migrations`. `SLOTGUARD CANCEL` stops it at the next step
/// boundary. Its journal is its own, in memory: the authority must not take the move for
/// a repair of its own cut short and run it too. A move the proxy's restart cuts short
/// stays open (both ends live and agreeing), and the same request resumes it.
pub async fn serve(routing: Arc<Routing>) {
    let Some(mut requests) = routing.take_moves() else {
        return;
    };
    let mut running: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(request) = requests.recv().await {
        if running.as_ref().is_some_and(|r| !r.is_finished()) {
            let _ = request.reply.send(reply::error(
                "ERR slotguard: slots are being moved already (SLOTGUARD MIGRATIONS shows it, SLOTGUARD CANCEL stops it)",
            ));
            continue;
        }
        // With several proxies, only the authority moves slots (its repairs and a move
        // must not interleave on one slot).
        let authority = routing.authority.load();
        if !authority.this_proxy {
            let holder = authority
                .holder
                .as_deref()
                .unwrap_or("no proxy (etcd does not answer)");
            let _ = request.reply.send(reply::error(&format!(
                "ERR slotguard: this proxy is not the authority; {holder} holds its lease: ask it"
            )));
            continue;
        }
        let routing = routing.clone();
        running = Some(tokio::spawn(
            async move { run_for(&routing, request).await },
        ));
    }
}

/// One move asked for through the proxy.
async fn run_for(routing: &Routing, request: MoveRequest) {
    let config = routing.config().as_ref().clone();
    let planned = async {
        let views = discover(&config).await?;
        let cluster = Cluster::new(&views);
        let moves = plan(&cluster, request.order)?;
        let text = describe(&owned(&cluster), &moves, &addresses(&views));
        Ok::<_, Error>((moves, text))
    };
    let (moves, text) = match planned.await {
        Ok(planned) => planned,
        Err(e) => {
            let _ = request
                .reply
                .send(reply::error(&format!("ERR slotguard: {e}")));
            return;
        }
    };
    routing.moves_stop.store(false, Ordering::Relaxed);
    let progress = Arc::new(Progress::new(moves.len(), false));
    let publish = |state: &str, message: &str| {
        let now = progress.published(state, &text, message);
        routing.moves_progress.store(Arc::new(now));
    };
    publish("running", "");
    let _ = request.reply.send(reply::bulk_reply(text.as_bytes()));
    let journal = Mutex::new(Journal::open(None).expect("an in-memory journal"));
    let options = Options {
        batch: repair::BATCH,
        pipeline: repair::PIPELINE,
        max_keys_per_sec: None,
        legacy: false,
    };
    let stop = &routing.moves_stop;
    let moving = run_moves(&config, &moves, &options, stop, &journal, &progress);
    tokio::pin!(moving);
    let result = loop {
        tokio::select! {
            result = &mut moving => break result,
            _ = tokio::time::sleep(Duration::from_millis(200)) => publish("running", ""),
        }
    };
    match result {
        Ok(_) => publish("done", ""),
        Err(e @ Error::Stopped) => publish("stopped", &e.to_string()),
        Err(e) => publish("failed", &e.to_string()),
    }
}
