//! Kubernetes label selectors (the `labelSelector` query parameter) and the field selectors
//! every kind supports (`fieldSelector` on `metadata.name` and `metadata.namespace`).

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Req {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector, and field requirements: every requirement must hold. The empty
/// selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Req>, Vec<FieldReq>);

/// One requirement of a field selector: (path, equal?, value).
type FieldReq = (&'static str, bool, String);

impl Selector {
    /// A label selector (as [`Selector::parse`]) and a field selector (`metadata.name=x`,
    /// `metadata.name==x`, `metadata.namespace!=y`, comma-separated); other fields are refused,
    /// as the API server refuses them for most kinds ("field label not supported").
    pub fn parse_with_fields(labels: &str, fields: &str) -> Result<Selector, String> {
        let mut sel = Selector::parse(labels)?;
        for part in fields.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector: {part:?}"));
            };
            let path = match k.trim() {
                "metadata.name" => "name",
                "metadata.namespace" => "namespace",
                other => return Err(format!("field label not supported: {other}")),
            };
            sel.1.push((path, eq, v.trim().to_string()));
        }
        Ok(sel)
    }

    /// Parses `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, comma-separated.
    pub fn parse(s: &str) -> Result<Selector, String> {
        Selector::labels_only(s)
    }

    fn labels_only(s: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                Req::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Req::NotIn(k.trim().into(), vec![v.trim().into()])
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Req::In(k.trim().into(), vec![v.trim().into()])
            } else if let Some((k, vs)) = set_op(part, " notin ") {
                Req::NotIn(k, vs)
            } else if let Some((k, vs)) = set_op(part, " in ") {
                Req::In(k, vs)
            } else if part.contains(char::is_whitespace) || part.contains(['(', ')']) {
                return Err(format!("unable to parse requirement: {part:?}"));
            } else {
                Req::Exists(part.to_string())
            };
            reqs.push(req);
        }
        Ok(Selector(reqs, Vec::new()))
    }

    /// Whether the object's `metadata.labels` (and fields) satisfy the selector.
    pub fn matches(&self, obj: &Value) -> bool {
        let fields_ok = self.1.iter().all(|(path, eq, v)| {
            (obj["metadata"][*path].as_str().unwrap_or("") == v.as_str()) == *eq
        });
        if !fields_ok {
            return false;
        }
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
            Req::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Req::NotIn(k, vs) => get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn set_op(part: &str, op: &str) -> Option<(String, Vec<String>)> {
    let (k, rest) = part.split_once(op)?;
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some((
        k.trim().to_string(),
        inner.split(',').map(|v| v.trim().to_string()).collect(),
    ))
}
