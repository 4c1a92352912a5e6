//! Bytes on the wire: client requests, backend replies, and hash slots. Nothing here
//! knows what a command means.

pub mod reply;
pub mod request;
pub mod slot;

pub use reply::{ReplyScanner, Value};
pub use request::{Limits, ProtocolError, Request, Scanner};
pub use slot::{key_slot, SLOTS};
