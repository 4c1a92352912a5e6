//! What the admin listener shows, taken at one moment: `/status`, `/readyz` and
//! `/migrations` read a [`Snapshot`], never the proxy's own fields, so the proxy's
//! insides can change without the admin knowing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::slot_table::SlotTable;
use super::Proxy;
use crate::config::{Ack, Promote};
use crate::routing::map::SlotMap;
use crate::routing::status::{Authority, Status};
use crate::routing::MoveProgress;

pub struct Snapshot {
    /// The control plane's slot map.
    pub map: Arc<SlotMap>,
    /// The control plane's view of the nodes and its decisions.
    pub status: Arc<Status>,
    /// The table the data plane routes by (generation 0: no map yet).
    pub table: Arc<SlotTable>,
    /// Held requests: per slot (`None`: keyless), how many, and the oldest one's wait.
    pub held: Vec<(Option<u16>, usize, Duration)>,
    /// The last move of slots asked for through the proxy.
    pub moving: Arc<MoveProgress>,
    /// Who repairs and moves slots.
    pub authority: Arc<Authority>,
    pub uptime: Duration,
    /// Client connections open.
    pub clients: i64,
    pub ack: Ack,
    pub promote: Promote,
    pub replicas_kept_from_failover: i64,
}

impl Proxy {
    /// What the admin listener shows, now.
    pub fn snapshot(&self) -> Snapshot {
        let config = self.config();
        Snapshot {
            map: self.routing.map(),
            status: self.routing.status.load_full(),
            table: self.table.load_full(),
            held: self.hold.snapshot(Instant::now()),
            moving: self.routing.moves_progress.load_full(),
            authority: self.routing.authority.load_full(),
            uptime: self.started.elapsed(),
            clients: self.metrics.client_connections.get(),
            ack: config.ack,
            promote: config.promote,
            replicas_kept_from_failover: self.metrics.replicas_kept_from_failover.get(),
        }
    }

    /// The metrics in Prometheus's text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// The bearer token the admin listener asks for (`admin.token`).
    pub fn admin_token(&self) -> Option<String> {
        self.config().admin_token.clone()
    }
}
