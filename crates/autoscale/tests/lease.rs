//! Leader election against the fake API server, with the real kube client.

use std::time::Duration;

use infergate_autoscale::lease::{Leadership, LeaseConfig, spawn};
use infergate_testkit::{FakeApiServer, RecordedRequest, autoscale_kinds};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);
const LEASE: Duration = Duration::from_millis(1500);
const RETRY: Duration = Duration::from_millis(300);
const DEADLINE: Duration = Duration::from_millis(1000);

fn client(api: &FakeApiServer) -> kube::Client {
    kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap()
}

fn elector(api: &FakeApiServer, id: &str) -> Leadership {
    let mut cfg = LeaseConfig::new("ml", id);
    cfg.lease_duration = LEASE;
    cfg.retry_period = RETRY;
    cfg.renew_deadline = DEADLINE;
    spawn(client(api), cfg)
}

/// Waits (up to `within`) until exactly one of `ls` is leader; returns its index.
async fn one_leader(ls: &[Leadership], within: Duration) -> usize {
    let end = Instant::now() + within;
    loop {
        let leaders: Vec<usize> = (0..ls.len()).filter(|&i| ls[i].is_leader()).collect();
        assert!(leaders.len() <= 1, "two leaders: {leaders:?}");
        if let [i] = leaders[..] {
            return i;
        }
        assert!(Instant::now() < end, "no leader within {within:?}");
        tokio::time::sleep(10 * MS).await;
    }
}

/// Successful Lease writes from the log: (answered at, holder).
fn lease_writes(reqs: &[RecordedRequest]) -> Vec<(std::time::Instant, String)> {
    reqs.iter()
        .filter(|r| r.path.contains("/leases"))
        .filter(|r| {
            (r.method == "PUT" && r.status == 200) || (r.method == "POST" && r.status == 201)
        })
        .map(|r| {
            let h = r
                .body
                .as_ref()
                .and_then(|b| b["spec"]["holderIdentity"].as_str());
            (r.at, h.unwrap_or("").to_string())
        })
        .collect()
}

/// From the write log: a new holder's first write comes at least a renew deadline after the
/// previous holder's last write (by then that one's leadership had ended), unless the
/// previous one released the lease. Returns the number of handovers.
fn assert_no_overlap(reqs: &[RecordedRequest]) -> usize {
    let writes = lease_writes(reqs);
    let mut handovers = 0;
    for w in writes.windows(2) {
        let (p, n) = (&w[0], &w[1]);
        if !p.1.is_empty() && !n.1.is_empty() && p.1 != n.1 {
            handovers += 1;
            assert!(
                n.0 >= p.0 + DEADLINE,
                "{} wrote {:?} after {}'s last renew: leaderships overlap",
                n.1,
                n.0 - p.0,
                p.1
            );
        }
    }
    handovers
}

#[tokio::test]
async fn exactly_one_of_three_leads() {
    let api = FakeApiServer::start_with(autoscale_kinds()).await;
    let ls: Vec<Leadership> = ["a", "b", "c"].iter().map(|id| elector(&api, id)).collect();
    let i = one_leader(&ls, 3 * LEASE).await;
    // It stays the only leader while renewing.
    let end = Instant::now() + 4 * RETRY;
    while Instant::now() < end {
        assert_eq!(one_leader(&ls, Duration::ZERO).await, i);
        tokio::time::sleep(20 * MS).await;
    }
    let lease = api
        .get("Lease", "ml", "infergate-autoscaler")
        .expect("the lease");
    assert_eq!(lease["spec"]["holderIdentity"], ls[i].identity());
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2);
    assert_eq!(assert_no_overlap(&api.requests()), 0);
}

#[tokio::test]
async fn a_killed_leader_is_replaced_once_the_lease_expires() {
    let api = FakeApiServer::start_with(autoscale_kinds()).await;
    let ls = vec![elector(&api, "a"), elector(&api, "b")];
    let i = one_leader(&ls, 3 * LEASE).await;
    ls[i].abort();
    let killed = Instant::now();
    let other = ls[1 - i].clone();
    // leaseDurationSeconds is 2 (1500 ms rounded up), measured from the last renew seen.
    let written = Duration::from_secs(2);
    one_leader(std::slice::from_ref(&other), written + RETRY + 500 * MS).await;
    let took = killed.elapsed();
    assert!(took <= written + RETRY + 300 * MS, "took {took:?}");
    assert!(
        !ls[i].is_leader(),
        "the killed one's leadership lapsed by itself"
    );
    assert_eq!(assert_no_overlap(&api.requests()), 1);
}

#[tokio::test]
async fn release_hands_over_within_a_retry_period() {
    let api = FakeApiServer::start_with(autoscale_kinds()).await;
    let ls = vec![elector(&api, "a"), elector(&api, "b")];
    let i = one_leader(&ls, 3 * LEASE).await;
    let mut next = ls[1 - i].clone();
    ls[i].release().await;
    assert!(!ls[i].is_leader());
    let released = Instant::now();
    let got =
        tokio::time::timeout(RETRY + 300 * MS, async { while !next.changed().await {} }).await;
    assert!(got.is_ok(), "no takeover within a retry period");
    assert!(next.is_leader());
    assert!(released.elapsed() <= RETRY + 300 * MS);
    let lease = api.get("Lease", "ml", "infergate-autoscaler").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], next.identity());
    assert_no_overlap(&api.requests());
}

#[tokio::test]
async fn an_outage_ends_leadership_before_the_lease_could_expire() {
    let api = FakeApiServer::start_with(autoscale_kinds()).await;
    let ls = vec![elector(&api, "a"), elector(&api, "b")];
    let i = one_leader(&ls, 3 * LEASE).await;
    tokio::time::sleep(2 * RETRY).await;
    api.set_down(true);
    let down = std::time::Instant::now();
    let mut leader = ls[i].clone();
    // Its last successful renew, from the log.
    let (last_renew, holder) = lease_writes(&api.requests()).last().cloned().unwrap();
    assert_eq!(holder, ls[i].identity());
    assert!(last_renew <= down);
    while ls[i].is_leader() {
        tokio::time::sleep(5 * MS).await;
    }
    let lapsed = std::time::Instant::now();
    assert!(
        lapsed < last_renew + LEASE,
        "still leader {:?} after its last renew",
        lapsed - last_renew
    );
    assert!(lapsed <= last_renew + DEADLINE + 50 * MS);
    // The task publishes the lapse too.
    let published = tokio::time::timeout(RETRY, async { while leader.changed().await {} }).await;
    assert!(published.is_ok());
    assert!(!ls[1 - i].is_leader());
    // Back once the lease has expired for everyone: someone leads again, no overlap.
    tokio::time::sleep((LEASE + 600 * MS).saturating_sub(down.elapsed())).await;
    api.set_down(false);
    one_leader(&ls, LEASE + 2 * RETRY).await;
    assert_no_overlap(&api.requests());
}
