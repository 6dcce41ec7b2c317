//! Every raft route of a voter, with its handler on the voter's [`Consensus`]:
//! - [`rpc`]: the three RPCs the other voters call, and their checks;
//! - [`admin`]: forming the group and changing its membership;
//! - [`write`]: `POST /post` on a voter.
//!
//! The node's router merges [`Routes`].

pub mod admin;
pub mod rpc;
pub mod write;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::consensus::engine::{Consensus, MAX_RPC_BODY};

/// A voter's raft routes, by the limits they take (the node's router merges them with
/// its own and applies state, credentials and mutual TLS).
pub struct Routes<S> {
    /// `POST /post` on a voter; `--max-body` applies.
    pub writes: OpenApiRouter<S>,
    /// Forming the group and changing its membership; `--max-body` applies.
    pub admin: OpenApiRouter<S>,
    /// The RPCs between voters, which take bodies up to [`MAX_RPC_BODY`].
    pub rpcs: OpenApiRouter<S>,
}

/// Every raft route, served on `c`, in the state type `S` of the router that merges
/// them.
pub fn routes<S: Clone + Send + Sync + 'static>(c: Consensus, max_body: usize) -> Routes<S> {
    let limit = axum::extract::DefaultBodyLimit::max;
    Routes {
        writes: OpenApiRouter::new()
            .routes(routes!(write::write))
            .layer(limit(max_body))
            .with_state(c.clone()),
        admin: OpenApiRouter::new()
            .routes(routes!(admin::init))
            .routes(routes!(admin::add_learner))
            .routes(routes!(admin::membership))
            .routes(routes!(admin::addresses))
            .layer(limit(max_body))
            .with_state(c.clone()),
        rpcs: OpenApiRouter::new()
            .routes(routes!(rpc::append))
            .routes(routes!(rpc::vote))
            .routes(routes!(rpc::snapshot))
            .routes(routes!(rpc::snapshot_file))
            .layer(limit(MAX_RPC_BODY))
            .with_state(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::types::rpc as paths;
    use std::collections::BTreeSet;

    #[test]
    fn the_rpcs_the_network_calls_are_the_ones_served() {
        let (_, api) = OpenApiRouter::<Consensus>::new()
            .routes(routes!(rpc::append))
            .routes(routes!(rpc::vote))
            .routes(routes!(rpc::snapshot))
            .routes(routes!(rpc::snapshot_file))
            .split_for_parts();
        let served: BTreeSet<&str> = api.paths.paths.keys().map(String::as_str).collect();
        assert_eq!(
            served,
            BTreeSet::from([
                paths::APPEND,
                paths::VOTE,
                paths::SNAPSHOT,
                format!("{}/{{name}}", paths::SNAPSHOT_FILES).as_str()
            ])
        );
    }
}
