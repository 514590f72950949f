//! The open-files limit: raised from the soft to the hard maximum at start, so that
//! `limits.maxConnections` decides how many client connections the router holds, not a
//! default soft limit of 1024.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// File descriptors kept for what is not a client connection: pod connections, listeners,
/// watched files.
const RESERVED: u64 = 1024;

/// `None` (no limit) as the kernel reports it.
fn show(v: Option<u64>) -> String {
    v.map_or("unlimited".into(), |v| v.to_string())
}

/// Raises the soft open-files limit to the hard one and logs both, before and after; warns
/// when `max_connections` (plus [`RESERVED`]) does not fit under the result.
pub fn raise(max_connections: u64) {
    let before = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    if before.current != before.maximum
        && let Err(e) = setrlimit(Resource::Nofile, raised)
    {
        tracing::warn!(
            soft = show(before.current),
            hard = show(before.maximum),
            error = %e,
            "cannot raise the open-files limit to its hard maximum"
        );
    }
    let after = getrlimit(Resource::Nofile);
    tracing::info!(
        soft_before = show(before.current),
        hard_before = show(before.maximum),
        soft = show(after.current),
        hard = show(after.maximum),
        "open-files limit"
    );
    if let Some(soft) = after.current
        && soft < max_connections.saturating_add(RESERVED)
    {
        tracing::warn!(
            soft,
            max_connections,
            reserved = RESERVED,
            "the open-files limit is below limits.maxConnections plus {RESERVED} kept for pod connections and files: accept fails (EMFILE) before the cap applies; raise the hard limit (ulimit -Hn, LimitNOFILE, the container runtime's nofile) or lower limits.maxConnections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_leaves_the_soft_limit_at_the_hard_one() {
        raise(1);
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current, now.maximum);
    }
}
