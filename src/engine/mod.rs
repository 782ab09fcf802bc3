//! Engines: the event loops that move bytes and time for the shards.
//!
//! An engine accepts connections on its shard's listener, reads into the codec's buffer, writes
//! what the codec produced, runs the timers the codec asks for, and sends the shard's metrics to
//! the monitor. Everything above the socket is the app's, through [`crate::http::Service`].
//!
//! What every engine must also do for the monitor (the glommio engine is the reference):
//! - obey [`crate::shard::Control::is_active`] every tick (close the listener, let connections
//!   finish and park; bind again when reactivated) and
//!   [`crate::shard::Control::refuse_new_connections`] at accept (503 + `Retry-After`);
//! - hand the slot a duplicate of its listener's descriptor ([`ShardSlot::set_listener`]), run
//!   its shard on a thread whose end is reported through a channel to
//!   [`crate::shard::await_exit`], and end a generation that [`ShardSlot::is_superseded`]
//!   reports replaced (the monitor replaces a shard that stops sending heartbeats).
//!
//! # Layout
//! - [`glommio`]: io_uring via glommio, one `LocalExecutor` per pinned shard thread.
//! - [`preflight`]: start-up checks of what an engine needs from the kernel.

pub mod glommio;
pub mod preflight;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam::channel::Sender;

use crate::config::Config;
use crate::metrics::ShardReport;
use crate::monitor::Published;
use crate::shard::{Control, ShardSlot};

/// A TCP socket bound to `addr` in the port's SO_REUSEPORT group (not yet listening): every
/// shard's listener, and the port reservation that holds the port while none listens.
pub fn reuseport_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
    Ok(socket)
}

/// Everything one run of a shard needs, whatever the engine.
#[derive(Clone)]
pub struct ShardContext {
    pub slot: Arc<ShardSlot>,
    pub generation: u64,
    pub config: Arc<Config>,
    pub listen_addr: SocketAddr,
    pub control: Arc<Control>,
    pub reports: Sender<ShardReport>,
    pub published: Arc<ArcSwap<Published>>,
    /// The database tier, when configured; each shard takes its own client from it.
    pub database: Option<Arc<crate::db::Database>>,
}

impl ShardContext {
    /// The shard's application, built once per shard run (the factory every engine calls).
    pub fn new_app(&self) -> crate::app::ShardApp {
        crate::app::ShardApp::new(
            self.slot.id,
            self.published.clone(),
            self.config.server.debug_routes,
        )
        .with_database(self.database.as_ref().map(|db| db.client()))
    }
}
