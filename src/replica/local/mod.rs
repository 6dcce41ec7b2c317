//! A local replica: serves reads over HTTP straight from the leader's memory-mapped
//! snapshots, through an embedded [`Reader`] (`crate::reader`: the same mapping and
//! following that any application on the host can use in-process).
//!
//! No HTTP and no deserialization on the replication path: the leader publishes
//! `delta.memdb` (the words changed since the base) every interval and, after a
//! compaction, a new `snapshot.memdb` (the base), and says so on its Unix socket; the
//! reader maps the new files, validates them once, and swaps the state so in-flight
//! reads finish on the old mappings. It never writes into the leader's directory.
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::LocalReplicaConfig;
use crate::reader::{Follow, Options, Reader};
use crate::storage::mapped::MappedState;

/// A snapshot the leader announced but that is not mapped this long after is stale, and
/// a loader busy this long with one file is stuck: `/health` then answers 503.
const STALE_AFTER: Duration = Duration::from_secs(5);

struct Shared {
    /// Maps and follows; follows from [`LocalReplica::follow`] on.
    reader: Reader,
    config: LocalReplicaConfig,
}

/// A cheap-clone handle to a local replica.
#[derive(Clone)]
pub struct LocalReplica {
    shared: Arc<Shared>,
}

impl LocalReplica {
    pub fn new(config: LocalReplicaConfig) -> Self {
        let options = Options {
            data_dir: config.data_dir.clone(),
            socket: config.socket.clone(),
            poll_interval: config.poll_interval,
            max_snapshot_bytes: config.max_snapshot_bytes,
        };
        let reader = Reader::unchecked(options, Follow::ByHand)
            .expect("a reader that follows by hand starts no thread");
        LocalReplica {
            shared: Arc::new(Shared { reader, config }),
        }
    }

    /// The state reads are served from now, if any.
    pub fn current(&self) -> Option<Arc<MappedState>> {
        self.shared.reader.state()
    }

    /// Starts following the leader's snapshots: maps the current one now, then
    /// reloads on notifications, file events and polls until `cancel`. `run` calls
    /// it; tests that drive the router in-process call it themselves.
    pub fn follow(
        &self,
        cancel: &CancellationToken,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let reader = self.shared.reader.clone();
        reader.follow()?;
        let cancel = cancel.clone();
        Ok(tokio::spawn(async move {
            cancel.cancelled().await;
            // Joins the reader's threads: a validation under way gives up first.
            let _ = tokio::task::spawn_blocking(move || reader.stop()).await;
        }))
    }

    fn seq_now(&self) -> u64 {
        self.shared.reader.seq()
    }
}
