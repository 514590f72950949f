use std::sync::Arc;

use infergate_config::Defaults;

use crate::{DeploymentSpec, EndpointSpec, PodSpec, Router};

fn mk_spec(name: &str, pods: &[u16]) -> EndpointSpec {
    EndpointSpec {
        name: name.into(),
        deployments: vec![DeploymentSpec {
            name: "d".into(),
            pods: pods
                .iter()
                .map(|p| PodSpec::from(std::net::SocketAddr::from(([10, 0, 0, 1], *p))))
                .collect(),
            scoring_path: "/score".into(),
            swagger_path: "/swagger.json".into(),
            settings: Defaults::default(),
            weight: 100,
            autoscale: None,
            transport: Default::default(),
        }],
        auth: infergate_auth::AuthPolicy::None,
        swagger_auth: false,
        pass_authorization: false,
        mirror: None,
    }
}

#[tokio::test]
async fn publishing_shares_unchanged_endpoints_and_keeps_changed_ones_state() {
    let r = Router::new(&infergate_metrics::Registry::new());
    let specs: Vec<EndpointSpec> = (0..100)
        .map(|i| mk_spec(&format!("e{i}"), &[5000, 5001]))
        .collect();
    r.publish_specs(&specs);
    let t1 = r.table();
    let mut next = specs.clone();
    next[7] = mk_spec("e7", &[5000, 5002]);
    r.publish_specs(&next);
    let t2 = r.table();
    for i in (0..100).filter(|&i| i != 7) {
        let name = format!("e{i}");
        assert!(
            Arc::ptr_eq(
                t1.endpoint_shared(&name).unwrap(),
                t2.endpoint_shared(&name).unwrap()
            ),
            "{name} unchanged: shared, not rebuilt"
        );
    }
    let (old7, new7) = (
        t1.endpoint_shared("e7").unwrap(),
        t2.endpoint_shared("e7").unwrap(),
    );
    assert!(!Arc::ptr_eq(old7, new7), "the changed endpoint is rebuilt");
    assert!(
        Arc::ptr_eq(&old7.deployments[0].balancer, &new7.deployments[0].balancer),
        "its deployment state (pool, in-flight counts) carries over"
    );
    let pods: Vec<u16> = new7.deployments[0]
        .balancer
        .pool
        .pods()
        .iter()
        .map(|p| p.addr().port())
        .collect();
    assert_eq!(pods, vec![5000, 5002]);
}
