//! Pod placement settings: `nodeSelector.<label key>=<value>` (the AzureML extension's key) and
//! `tolerations=<compact list>`, applied to the router Deployment's pod template.

use serde_json::{Value, json};

use crate::RenderError;

/// The prefix of the AzureML extension's node selector keys: `nodeSelector.<label key>=<value>`.
pub const NODE_SELECTOR_PREFIX: &str = "nodeSelector.";

/// The taint effects a toleration may name.
pub const EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

const TOLERATIONS_FIX: &str = "write tolerations=KEY[=VALUE][:EFFECT],... e.g. \
     tolerations=sku=gpu:NoSchedule,dedicated:NoExecute (operator Equal with a VALUE, Exists \
     without; EFFECT is NoSchedule, PreferNoSchedule or NoExecute, or left out for every effect)";

/// One toleration of the router pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toleration {
    /// The taint key.
    pub key: String,
    /// `Some`: operator `Equal` with this value; `None`: operator `Exists`.
    pub value: Option<String>,
    /// The taint effect, or `None` for every effect.
    pub effect: Option<String>,
}

impl Toleration {
    /// The Kubernetes `Toleration` object.
    pub fn to_json(&self) -> Value {
        let mut t = json!({ "key": self.key });
        match &self.value {
            Some(v) => {
                t["operator"] = json!("Equal");
                t["value"] = json!(v);
            }
            None => t["operator"] = json!("Exists"),
        }
        if let Some(e) = &self.effect {
            t["effect"] = json!(e);
        }
        t
    }
}

/// Checks one `nodeSelector.<label key>=<value>` setting (`key` is the whole setting key).
pub fn node_selector_entry(key: &str, value: &str) -> Result<(String, String), RenderError> {
    let label = &key[NODE_SELECTOR_PREFIX.len()..];
    if label.is_empty() {
        return Err(RenderError::invalid(
            key,
            value,
            "the node label key after `nodeSelector.` is empty",
            "write nodeSelector.<node label key>=<value>, e.g. nodeSelector.agentpool=gpu",
        ));
    }
    if let Err(why) = label_key(label) {
        return Err(RenderError::invalid(
            key,
            value,
            format!("`{label}` is not a Kubernetes label key: {why}"),
            "use a label key of the nodes, e.g. nodeSelector.agentpool=gpu or \
             nodeSelector.kubernetes.azure.com/accelerator=nvidia",
        ));
    }
    if let Err(why) = label_value(value) {
        return Err(RenderError::invalid(
            key,
            value,
            format!("not a Kubernetes label value: {why}"),
            format!(
                "use the value of the node label {label}: at most 63 letters, digits, '-', '_' \
                 and '.', beginning and ending with a letter or digit"
            ),
        ));
    }
    Ok((label.to_string(), value.to_string()))
}

/// Parses `tolerations=KEY[=VALUE][:EFFECT],...`.
pub fn tolerations(value: &str) -> Result<Vec<Toleration>, RenderError> {
    let bad =
        |problem: String| RenderError::invalid("tolerations", value, problem, TOLERATIONS_FIX);
    if value.trim().is_empty() {
        return Err(bad("the list is empty".into()));
    }
    let mut out: Vec<Toleration> = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(bad("an entry between commas is empty".into()));
        }
        let (rest, effect) = match item.rsplit_once(':') {
            Some((rest, effect)) => {
                let Some(&e) = EFFECTS.iter().find(|e| **e == effect) else {
                    return Err(bad(format!(
                        "`{item}`: `{effect}` is not a taint effect (NoSchedule, \
                         PreferNoSchedule or NoExecute; they are case-sensitive)"
                    )));
                };
                (rest, Some(e.to_string()))
            }
            None => (item, None),
        };
        let (key, val) = match rest.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (rest, None),
        };
        if key.is_empty() {
            return Err(bad(format!("`{item}`: the taint key is empty")));
        }
        if let Err(why) = label_key(key) {
            return Err(bad(format!("`{item}`: `{key}` is not a taint key: {why}")));
        }
        if let Some(v) = val
            && let Err(why) = label_value(v)
        {
            return Err(bad(format!("`{item}`: `{v}` is not a taint value: {why}")));
        }
        let t = Toleration {
            key: key.to_string(),
            value: val.map(str::to_string),
            effect,
        };
        if out.contains(&t) {
            return Err(bad(format!("`{item}` is given twice")));
        }
        out.push(t);
    }
    Ok(out)
}

/// A Kubernetes qualified name (label key): `[prefix/]name`, the prefix a DNS subdomain of at
/// most 253 characters, the name at most 63 alphanumerics, '-', '_' and '.', alphanumeric at
/// both ends.
pub fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 {
            return Err("the prefix before '/' must be 1-253 characters".into());
        }
        let ok = p.split('.').all(infergate_config::is_dns_label);
        if !ok {
            return Err(format!(
                "the prefix `{p}` is not a DNS subdomain (lowercase letters, digits, '-' and '.')"
            ));
        }
    }
    if name.is_empty() {
        return Err("the name (after any prefix/) is empty".into());
    }
    name_part(name)
}

/// A Kubernetes label value: empty, or at most 63 alphanumerics, '-', '_' and '.', alphanumeric
/// at both ends.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    name_part(value)
}

fn name_part(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    if b.len() > 63 {
        return Err(format!("{} characters, at most 63 are allowed", b.len()));
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err("only letters, digits, '-', '_' and '.' are allowed".into());
    }
    if !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return Err("it must begin and end with a letter or digit".into());
    }
    Ok(())
}
