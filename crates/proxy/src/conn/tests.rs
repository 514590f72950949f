//! The pure parts of the edge: protocol sniffing, the head check, the deadlines.

use super::*;

#[test]
fn sniff_waits_for_the_whole_preface_and_picks_h1_on_the_first_difference() {
    assert_eq!(sniff(b""), None);
    assert_eq!(sniff(b"PRI * HTTP/2"), None);
    assert_eq!(sniff(H2_PREFACE), Some(Proto::H2));
    assert_eq!(sniff(b"POST /score HTTP/1.1\r\n"), Some(Proto::H1));
    assert_eq!(sniff(b"PRI * HTTP/1.1"), Some(Proto::H1));
    assert_eq!(sniff(b"G"), Some(Proto::H1));
}

fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::builder().method("POST").uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

#[test]
fn head_check_counts_fields_and_bytes_as_http11_writes_them() {
    let limits = HeadLimits {
        bytes: 100,
        fields: 2,
    };
    // "POST /score HTTP/1.1\r\n" (22) + "a: b\r\n" (6) + "\r\n" (2) = 30
    assert!(limits.check(&parts("/score", &[("a", "b")])).is_ok());
    let exact = HeadLimits {
        bytes: 30,
        ..limits
    };
    assert!(exact.check(&parts("/score", &[("a", "b")])).is_ok());
    let under = HeadLimits {
        bytes: 29,
        ..limits
    };
    assert!(matches!(
        under.check(&parts("/score", &[("a", "b")])),
        Err(ProxyError::HeadTooLarge { limit: 29, .. })
    ));
    // Repeated names count once per value.
    assert!(matches!(
        limits.check(&parts("/", &[("a", "1"), ("a", "2"), ("b", "3")])),
        Err(ProxyError::HeadTooLarge { limit: 2, .. })
    ));
    // An absolute URI (HTTP/2's :scheme and :authority) counts in full.
    let p = parts("https://router.test/score", &[]);
    let origin = parts("/score", &[]);
    let diff = "https://router.test".len();
    let size = |p: &Parts| {
        (1..200).find(|&b| {
            HeadLimits {
                bytes: b,
                fields: 9,
            }
            .check(p)
            .is_ok()
        })
    };
    assert_eq!(size(&p).unwrap() - size(&origin).unwrap(), diff);
}

#[test]
fn parsers_let_heads_up_to_twice_the_limit_through_to_the_router() {
    let limits = HeadLimits::from_limits(&Limits::default());
    assert_eq!(
        limits,
        HeadLimits {
            bytes: 65_536,
            fields: 100
        }
    );
    let (h1, h2) = limits.parser_ceiling();
    assert_eq!(h1, 131_072);
    assert_eq!(h2, 131_072 + 3_200);
}

const HEADER: Duration = Duration::from_millis(300);
const IDLE: Duration = Duration::from_millis(1000);

#[tokio::test(start_paused = true)]
async fn deadlines_follow_the_connection_through_its_requests() {
    let start = Instant::now();
    let s = ConnState::new(start);
    // Before the first request: the header deadline from the accept, bytes or not.
    assert_eq!(
        s.due(HEADER, IDLE, None),
        Due::At(start + HEADER, Expiry::Head)
    );
    s.bytes_arrived();
    assert_eq!(
        s.due(HEADER, IDLE, None),
        Due::At(start + HEADER, Expiry::Head)
    );
    // A request in flight: no deadline, whatever its length.
    tokio::time::advance(Duration::from_millis(100)).await;
    s.request_started();
    assert_eq!(s.due(HEADER, IDLE, None), Due::Busy);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(s.due(HEADER, IDLE, None), Due::Busy);
    s.request_done();
    let idle_from = Instant::now();
    assert_eq!(
        s.due(HEADER, IDLE, None),
        Due::At(idle_from + IDLE, Expiry::Idle)
    );
    // The next request's first byte: its head has the header timeout from then.
    tokio::time::advance(Duration::from_millis(700)).await;
    s.bytes_arrived();
    let head_from = Instant::now();
    assert_eq!(
        s.due(HEADER, IDLE, None),
        Due::At(head_from + HEADER, Expiry::Head)
    );
    // More bytes do not move it.
    tokio::time::advance(Duration::from_millis(100)).await;
    s.bytes_arrived();
    assert_eq!(
        s.due(HEADER, IDLE, None),
        Due::At(head_from + HEADER, Expiry::Head)
    );
    // Two requests at once (HTTP/2): idle only once both are done.
    s.request_started();
    s.request_started();
    s.request_done();
    assert_eq!(s.due(HEADER, IDLE, None), Due::Busy);
    s.request_done();
    assert_eq!(
        s.due(HEADER, IDLE, None),
        Due::At(Instant::now() + IDLE, Expiry::Idle)
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_future_fires_on_time_and_waits_out_requests() {
    let s = Arc::new(ConnState::new(Instant::now()));
    // No request: the header deadline.
    let fired = deadline(&s, HEADER, IDLE, None).await;
    assert_eq!(fired, Expiry::Head);
    // A request that outlasts several idle periods, then idleness.
    s.request_started();
    let s2 = s.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(3500)).await;
        s2.request_done();
    });
    let before = Instant::now();
    let fired = deadline(&s, HEADER, IDLE, None).await;
    assert_eq!(fired, Expiry::Idle);
    assert_eq!(Instant::now() - before, Duration::from_millis(3500) + IDLE);
}

#[test]
fn admission_caps_connections_overall_and_per_address() {
    let registry = Registry::new();
    let limits = Limits {
        max_connections: 3,
        max_connections_per_client: 2,
        ..Limits::default()
    };
    let adm = Arc::new(Admission::new(&limits, &registry));
    let gauge = registry.gauge(crate::metrics::CONNECTIONS_OPEN, &[("listener", "http")]);
    let a: IpAddr = "10.0.0.1".parse().unwrap();
    let b: IpAddr = "10.0.0.2".parse().unwrap();
    let a1 = adm.admit(a, &gauge).unwrap();
    let _a2 = adm.admit(a, &gauge).unwrap();
    assert_eq!(adm.admit(a, &gauge).err(), Some(Refusal::PerClient));
    // An IPv4-mapped IPv6 address is the same client.
    let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    assert_eq!(adm.admit(mapped, &gauge).err(), Some(Refusal::PerClient));
    let _b1 = adm.admit(b, &gauge).unwrap();
    assert_eq!(adm.admit(b, &gauge).err(), Some(Refusal::Global));
    drop(a1);
    let _b2 = adm.admit(b, &gauge).unwrap();
    assert_eq!(adm.open.load(Ordering::Relaxed), 3);
    let text = registry.render();
    assert!(
        text.contains("infergate_connections_refused_total{reason=\"per_client_limit\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("infergate_connections_refused_total{reason=\"global_limit\"} 1"),
        "{text}"
    );
}

#[test]
fn a_per_address_cap_at_or_over_the_global_one_is_off() {
    let registry = Registry::new();
    let limits = Limits {
        max_connections: 2,
        max_connections_per_client: 2,
        ..Limits::default()
    };
    let adm = Arc::new(Admission::new(&limits, &registry));
    assert_eq!(adm.per_client, 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_parks_before_its_idle_timeout_only() {
    const PARK: Duration = Duration::from_millis(250);
    let s = Arc::new(ConnState::new(Instant::now()));
    // Before the first request the header deadline rules, park or not.
    assert_eq!(
        s.due(HEADER, IDLE, Some(PARK)),
        Due::At(s.start + HEADER, Expiry::Head)
    );
    s.request_started();
    assert_eq!(s.due(HEADER, IDLE, Some(PARK)), Due::Busy);
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.request_done();
    let idle_from = Instant::now();
    assert_eq!(
        s.due(HEADER, IDLE, Some(PARK)),
        Due::At(idle_from + PARK, Expiry::Park)
    );
    assert_eq!(deadline(&s, HEADER, IDLE, Some(PARK)).await, Expiry::Park);
    assert_eq!(Instant::now() - idle_from, PARK);
    // A park delay not shorter than the idle timeout never parks.
    assert_eq!(deadline(&s, HEADER, IDLE, Some(IDLE)).await, Expiry::Idle);
    assert_eq!(Instant::now() - idle_from, IDLE);
    // The next head's first byte: the header deadline, not the park.
    s.bytes_arrived();
    assert_eq!(
        s.due(HEADER, IDLE, Some(PARK)),
        Due::At(Instant::now() + HEADER, Expiry::Head)
    );
}
