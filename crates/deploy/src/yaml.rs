//! YAML output: one Kubernetes object per document, `apiVersion`, `kind`, `metadata` first.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::RenderError;

/// The top-level keys written first, in this order; every other key follows alphabetically.
const OBJECT_LEADING: &[&str] = &["apiVersion", "kind", "metadata"];
/// The same for `metadata`.
const METADATA_LEADING: &[&str] = &["name", "namespace"];

/// A map whose `leading` keys are written first (a Kubernetes object, or its metadata).
struct Ordered<'a> {
    map: &'a serde_json::Map<String, Value>,
    leading: &'static [&'static str],
}

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_map(Some(self.map.len()))?;
        for key in self.leading {
            match self.map.get(*key) {
                Some(Value::Object(meta)) if *key == "metadata" => out.serialize_entry(
                    key,
                    &Ordered {
                        map: meta,
                        leading: METADATA_LEADING,
                    },
                )?,
                Some(v) => out.serialize_entry(key, v)?,
                None => {}
            }
        }
        for (k, v) in self.map {
            if !self.leading.contains(&k.as_str()) {
                out.serialize_entry(k, v)?;
            }
        }
        out.end()
    }
}

/// Writes one object as a YAML document (serde-saphyr; YAML 1.1-ambiguous strings are quoted).
///
/// Multi-line strings (the router's `infergate.yaml`) become literal blocks; long single-line
/// strings (base64 Secret data) stay plain scalars instead of folded blocks.
pub(crate) fn to_yaml(value: &Value) -> Result<String, RenderError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    let out = match value {
        Value::Object(map) => serde_saphyr::to_string_with_options(
            &Ordered {
                map,
                leading: OBJECT_LEADING,
            },
            options,
        ),
        other => serde_saphyr::to_string_with_options(other, options),
    };
    out.map_err(|e| RenderError::Yaml(e.to_string()))
}
