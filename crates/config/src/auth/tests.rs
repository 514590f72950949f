use crate::{AuthMode, Config, ConfigError, MIN_KEY_BYTES};

fn mk(endpoint_extra: &str) -> Result<Config, ConfigError> {
    let text = format!(
        "allowInsecureConnections: true\nendpoints:\n  - name: e\n    deployments: [{{name: d}}]\n{endpoint_extra}"
    );
    let c = Config::from_yaml(&text, "<test>")?;
    c.validate()?;
    Ok(c)
}

fn err(endpoint_extra: &str) -> String {
    mk(endpoint_extra).unwrap_err().to_string()
}

fn key_file(len: usize) -> tempfile_like::File {
    tempfile_like::File::with_len(len)
}

/// A throwaway file in the target's temp dir (no extra dev-dependency).
mod tempfile_like {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct File(pub PathBuf);
    static N: AtomicU32 = AtomicU32::new(0);

    impl File {
        pub fn with_len(len: usize) -> File {
            let p = std::env::temp_dir().join(format!(
                "infergate-config-key-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&p, vec![b'k'; len]).unwrap();
            File(p)
        }
    }
    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn default_is_key_mode_without_keys_which_is_valid_but_refuses_all() {
    let c = mk("").unwrap();
    let ep = &c.endpoints[0];
    assert_eq!(ep.auth.mode, AuthMode::Key);
    assert!(ep.refuses_all());
    assert!(!ep.swagger_auth);
}

#[test]
fn key_mode_with_keys_and_swagger_auth() {
    let c = mk(
        "    auth: {mode: key, primaryKey: \"pk-1-0123456789abcdef\", secondaryKey: sk-2-0123456789abcdef}\n    swaggerAuth: true\n",
    )
    .unwrap();
    let ep = &c.endpoints[0];
    assert_eq!(
        ep.auth.primary_key.as_ref().unwrap().0,
        "pk-1-0123456789abcdef"
    );
    assert_eq!(
        ep.auth.secondary_key.as_ref().unwrap().0,
        "sk-2-0123456789abcdef"
    );
    assert!(ep.swagger_auth);
    assert!(!ep.refuses_all());
    // one key is enough; `swaggerAuth: True` is the extension's spelling
    let c = mk("    auth: {secondaryKey: sk-0123456789abcdef}\n    swaggerAuth: True\n").unwrap();
    assert!(!c.endpoints[0].refuses_all());
}

#[test]
fn none_must_be_explicit_and_takes_no_keys() {
    let c = mk("    auth: {mode: none}\n").unwrap();
    assert_eq!(c.endpoints[0].auth.mode, AuthMode::None);
    assert!(!c.endpoints[0].refuses_all());
    let e = err("    auth: {mode: none, primaryKey: s3cr3t-value}\n");
    assert!(
        e.contains("endpoints[0].auth.primaryKey") && e.contains("ignored") && e.contains("fix:"),
        "{e}"
    );
    assert!(!e.contains("s3cr3t-value"), "the key leaked: {e}");
    let e = err("    auth: {mode: none}\n    swaggerAuth: true\n");
    assert!(e.contains("endpoints[0].swaggerAuth"), "{e}");
}

#[test]
fn token_mode_needs_a_readable_long_enough_signing_key_file() {
    let f = key_file(32);
    let c = mk(&format!(
        "    auth: {{mode: token, signingKeyFile: \"{}\"}}\n",
        f.0.display()
    ))
    .unwrap();
    assert_eq!(c.endpoints[0].auth.mode, AuthMode::Token);

    let e = err("    auth: {mode: token}\n");
    assert!(
        e.contains("endpoints[0].auth.signingKeyFile")
            && e.contains("(not set)")
            && e.contains("fix:"),
        "{e}"
    );
    let e = err("    auth: {mode: token, signingKeyFile: /no/such/key}\n");
    assert!(
        e.contains("/no/such/key") && e.contains("cannot read"),
        "{e}"
    );
    let short = key_file(31);
    let e = err(&format!(
        "    auth: {{mode: token, signingKeyFile: \"{}\"}}\n",
        short.0.display()
    ));
    assert!(e.contains("31 bytes") && e.contains("at least 32"), "{e}");
}

#[test]
fn keys_are_not_allowed_in_token_mode_nor_key_files_in_key_mode() {
    let f = key_file(40);
    let e = err(&format!(
        "    auth: {{mode: token, signingKeyFile: \"{}\", primaryKey: s3cr3t-value}}\n",
        f.0.display()
    ));
    assert!(
        e.contains("endpoints[0].auth.primaryKey") && e.contains("token mode"),
        "{e}"
    );
    assert!(!e.contains("s3cr3t-value"), "the key leaked: {e}");
    let e = err(&format!(
        "    auth: {{primaryKey: a, signingKeyFile: \"{}\"}}\n",
        f.0.display()
    ));
    assert!(
        e.contains("endpoints[0].auth.signingKeyFile") && e.contains("key mode"),
        "{e}"
    );
}

#[test]
fn keys_must_be_visible_ascii_and_are_never_echoed() {
    for bad in ["\"\"", "\"has space\"", "\"tab\\tkey\"", "\"ключ\""] {
        let e = err(&format!("    auth: {{primaryKey: {bad}}}\n"));
        assert!(
            e.contains("endpoints[0].auth.primaryKey") && e.contains("(hidden)"),
            "{bad}: {e}"
        );
        assert!(!e.contains("has space"), "{e}");
    }
}

#[test]
fn unknown_mode_and_unknown_auth_keys_are_parse_errors() {
    let e = err("    auth: {mode: keys}\n");
    assert!(e.contains("keys"), "{e}");
    assert!(e.contains("key, token, none"), "{e}");
    let e = err("    auth: {primarykey: x}\n");
    assert!(e.contains("primarykey"), "{e}");
}

#[test]
fn keys_never_appear_in_debug_output() {
    let c =
        mk("    auth: {primaryKey: s3cr3t-value-0123, secondaryKey: other-s3cr3t-0123}\n").unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("s3cr3t"), "{dbg}");
    assert!(dbg.contains("[redacted]"), "{dbg}");
}

#[test]
fn modes_are_written_one_way_in_yaml_and_in_code() {
    for m in AuthMode::ALL {
        assert_eq!(AuthMode::from_name(m.as_str()), Some(m));
        let yaml = serde_saphyr::to_string(&m).unwrap();
        assert_eq!(yaml.trim(), m.as_str());
        assert_eq!(serde_saphyr::from_str::<AuthMode>(m.as_str()).unwrap(), m);
    }
    assert_eq!(AuthMode::from_name("Key"), None);
    assert_eq!(AuthMode::default(), AuthMode::Key);
}

#[test]
fn short_key_is_refused_at_config() {
    for (name, yaml) in [
        ("primaryKey", "    auth: {primaryKey: only-15-chars-x}\n"),
        (
            "secondaryKey",
            "    auth: {primaryKey: long-enough-0123456789, secondaryKey: x-short-key}\n",
        ),
    ] {
        let e = err(yaml);
        assert!(
            e.contains(&format!("endpoints[0].auth.{name}"))
                && e.contains(&format!("shorter than {MIN_KEY_BYTES} characters"))
                && e.contains("fix:"),
            "{e}"
        );
        // The error says how long the key is, never what it is.
        assert!(!e.contains("only-15") && !e.contains("x-short-key"), "{e}");
    }
    // Exactly the minimum is enough.
    mk(&format!(
        "    auth: {{primaryKey: {}}}\n",
        "k".repeat(MIN_KEY_BYTES)
    ))
    .unwrap();
}
