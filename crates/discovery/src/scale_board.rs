//! The autoscaler's part of InferenceEndpoint status: what the replica holding the autoscaler
//! Lease last decided, per endpoint, for the status writer to merge into the status it writes
//! (one writer per object, so the autoscaler's fields and discovery's never overwrite each
//! other).

use std::collections::BTreeMap;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::crd::{DeploymentScale, EndpointCondition, InferenceEndpointStatus};
use crate::index::ObjectKey;

/// The condition type the autoscaler owns.
pub const SCALING: &str = "Scaling";

/// The autoscaler's view of one InferenceEndpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointScale {
    /// Per deployment name.
    pub deployments: BTreeMap<String, DeploymentScale>,
    /// The `Scaling` condition: (ok, reason, message).
    pub condition: Option<(bool, String, String)>,
}

/// The autoscaler's views, shared between the autoscaler (writes) and the status writer
/// (reads, and is woken on each change).
#[derive(Debug)]
pub struct ScaleBoard {
    entries: Mutex<BTreeMap<ObjectKey, EndpointScale>>,
    version: watch::Sender<u64>,
}

impl Default for ScaleBoard {
    fn default() -> Self {
        ScaleBoard {
            entries: Mutex::new(BTreeMap::new()),
            version: watch::channel(0).0,
        }
    }
}

impl ScaleBoard {
    /// Sets an endpoint's view; wakes the status writer when it changed.
    pub fn set(&self, key: ObjectKey, view: EndpointScale) {
        let mut e = self.entries.lock();
        if e.get(&key) != Some(&view) {
            e.insert(key, view);
            drop(e);
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// Forgets every view (this replica stopped being the autoscaler).
    pub fn clear(&self) {
        let mut e = self.entries.lock();
        if !e.is_empty() {
            e.clear();
            drop(e);
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// One endpoint's view.
    pub fn get(&self, key: &ObjectKey) -> Option<EndpointScale> {
        self.entries.lock().get(key).cloned()
    }

    /// Every view.
    pub fn all(&self) -> BTreeMap<ObjectKey, EndpointScale> {
        self.entries.lock().clone()
    }

    /// A receiver that sees each change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// Puts the autoscaler's fields into `status`: from `view` when this replica is the
/// autoscaler, else carried over from `observed` (what the object shows), so that a write by
/// a replica that is not the autoscaler keeps them. A `Scaling` condition already in `status`
/// (invalid `scaleSettings`, found by discovery) wins.
pub fn merge_scale(
    status: &mut InferenceEndpointStatus,
    observed: Option<&InferenceEndpointStatus>,
    view: Option<&EndpointScale>,
) {
    for d in &mut status.deployments {
        d.scale = match view {
            Some(v) => v.deployments.get(&d.name).cloned(),
            None => observed
                .and_then(|o| o.deployments.iter().find(|x| x.name == d.name))
                .and_then(|x| x.scale.clone()),
        };
    }
    if status.conditions.iter().any(|c| c.type_ == SCALING) {
        return;
    }
    let cond = match view {
        Some(v) => v
            .condition
            .as_ref()
            .map(|(ok, reason, message)| EndpointCondition {
                type_: SCALING.into(),
                status: if *ok { "True" } else { "False" }.into(),
                reason: reason.clone(),
                message: message.clone(),
                last_transition_time: None,
                observed_generation: status.observed_generation,
            }),
        None => observed
            .and_then(|o| o.conditions.iter().find(|c| c.type_ == SCALING))
            .cloned(),
    };
    status.conditions.extend(cond);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DeploymentStatus;

    fn status(scale: Option<u32>) -> InferenceEndpointStatus {
        InferenceEndpointStatus {
            observed_generation: Some(1),
            deployments: vec![DeploymentStatus {
                name: "blue".into(),
                ready_pods: 1,
                terminating_pods: 0,
                scale: scale.map(|n| DeploymentScale {
                    target: "Deployment/b".into(),
                    current: n,
                    desired: n,
                    last_decision: "steady".into(),
                    last_scale_time: None,
                }),
            }],
            conditions: vec![],
        }
    }

    #[test]
    fn the_autoscaler_view_wins_and_others_carry_the_observed_one_over() {
        let observed = {
            let mut s = status(Some(2));
            s.conditions.push(EndpointCondition {
                type_: SCALING.into(),
                status: "True".into(),
                reason: "Autoscaling".into(),
                message: "m".into(),
                ..Default::default()
            });
            s
        };
        // Not the autoscaler: carried over.
        let mut s = status(None);
        merge_scale(&mut s, Some(&observed), None);
        assert_eq!(s.deployments[0].scale.as_ref().unwrap().current, 2);
        assert_eq!(s.conditions[0].reason, "Autoscaling");
        // The autoscaler: its view.
        let mut view = EndpointScale::default();
        view.deployments.insert(
            "blue".into(),
            status(Some(5)).deployments[0].scale.clone().unwrap(),
        );
        view.condition = Some((false, "HPAConflict".into(), "an HPA".into()));
        let mut s = status(None);
        merge_scale(&mut s, Some(&observed), Some(&view));
        assert_eq!(s.deployments[0].scale.as_ref().unwrap().current, 5);
        assert_eq!(
            (
                s.conditions[0].status.as_str(),
                s.conditions[0].reason.as_str()
            ),
            ("False", "HPAConflict")
        );
    }

    #[test]
    fn discoverys_invalid_settings_condition_wins() {
        let mut s = status(None);
        s.conditions.push(EndpointCondition {
            type_: SCALING.into(),
            status: "False".into(),
            reason: "InvalidScaleSettings".into(),
            ..Default::default()
        });
        let view = EndpointScale {
            condition: Some((true, "Autoscaling".into(), "x".into())),
            ..Default::default()
        };
        merge_scale(&mut s, None, Some(&view));
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.conditions[0].reason, "InvalidScaleSettings");
    }

    #[test]
    fn the_board_wakes_on_change_only() {
        let b = ScaleBoard::default();
        let mut rx = b.subscribe();
        let k = ObjectKey::new("ml", "e");
        b.set(k.clone(), EndpointScale::default());
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        b.set(k.clone(), EndpointScale::default());
        assert!(!rx.has_changed().unwrap());
        b.clear();
        assert!(rx.has_changed().unwrap());
        assert!(b.get(&k).is_none());
    }
}
