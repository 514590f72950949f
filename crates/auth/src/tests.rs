use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

use super::*;

const SIGNING: &[u8] = b"0123456789abcdef0123456789abcdef-signing";
const PRIMARY: &[u8] = b"primary-key-AAAAAAAAAAAAAAAAAAAA";
const SECONDARY: &[u8] = b"secondary-key-BBBBBBBBBBBBBBBBBB";

fn bearer(v: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {v}")).unwrap()
}

fn keys() -> AuthPolicy {
    AuthPolicy::keys(Some(PRIMARY), Some(SECONDARY)).unwrap()
}

fn token_policy() -> AuthPolicy {
    AuthPolicy::token(SIGNING).unwrap()
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const NOW: u64 = 1_800_000_000;

fn tok(endpoint: &str, exp: u64) -> String {
    issue_token_at(endpoint, at(NOW - 10), at(exp), SIGNING).unwrap()
}

fn reason(p: &AuthPolicy, h: Option<&HeaderValue>) -> &'static str {
    p.check(h, "ep", at(NOW)).unwrap_err().reason()
}

#[test]
fn keys_accept_primary_and_secondary() {
    let p = keys();
    for k in [PRIMARY, SECONDARY] {
        let h = bearer(std::str::from_utf8(k).unwrap());
        assert_eq!(p.check(Some(&h), "ep", at(NOW)), Ok(()));
    }
    // the scheme is case-insensitive
    let h = HeaderValue::from_bytes(&[b"bEaReR ", PRIMARY].concat()).unwrap();
    assert_eq!(p.check(Some(&h), "ep", at(NOW)), Ok(()));
    // one key alone works too
    let only_secondary = AuthPolicy::keys(None, Some(SECONDARY)).unwrap();
    let h = bearer(std::str::from_utf8(SECONDARY).unwrap());
    assert_eq!(only_secondary.check(Some(&h), "ep", at(NOW)), Ok(()));
}

#[test]
fn missing_header_or_empty_value() {
    assert_eq!(reason(&keys(), None), "missing");
    assert_eq!(
        reason(&keys(), Some(&HeaderValue::from_static("  "))),
        "missing"
    );
    assert_eq!(reason(&token_policy(), None), "missing");
}

#[test]
fn other_schemes_are_bad_scheme() {
    for v in [
        "Basic dXNlcjpwYXNz",
        "primary-key-AAAAAAAAAAAAAAAAAAAA",
        "Token abc",
        "Bearerx abc",
    ] {
        assert_eq!(
            reason(&keys(), Some(&HeaderValue::from_str(v).unwrap())),
            "bad_scheme",
            "{v}"
        );
    }
}

#[test]
fn wrong_key_prefix_and_longer_key_are_invalid() {
    for v in [
        "nope",
        "primary-key-AAAAAAAAAAAAAAAAAAA",
        "primary-key-AAAAAAAAAAAAAAAAAAAAA",
        "secondary-key-BBBBBBBBBBBBBBBBBBx",
    ] {
        assert_eq!(reason(&keys(), Some(&bearer(v))), "invalid_key", "{v}");
    }
}

#[test]
fn bearer_without_credential_is_malformed() {
    for v in ["Bearer", "Bearer    "] {
        assert_eq!(
            reason(&keys(), Some(&HeaderValue::from_str(v).unwrap())),
            "malformed"
        );
    }
}

#[test]
fn default_is_key_mode_refusing_everything() {
    let p = AuthPolicy::default();
    assert_eq!(p.mode(), AuthMode::Key);
    assert!(p.refuses_all());
    assert_eq!(reason(&p, None), "no_keys_configured");
    assert_eq!(reason(&p, Some(&bearer("anything"))), "no_keys_configured");
    // empty and blank keys count as no key
    let p = AuthPolicy::keys(Some(b""), Some(b" \n")).unwrap();
    assert!(p.refuses_all());
    assert_eq!(reason(&p, Some(&bearer("x"))), "no_keys_configured");
}

#[test]
fn none_accepts_everything() {
    let p = AuthPolicy::None;
    assert_eq!(p.check(None, "ep", at(NOW)), Ok(()));
    assert_eq!(
        p.check(Some(&HeaderValue::from_static("Basic x")), "ep", at(NOW)),
        Ok(())
    );
    assert!(!p.refuses_all());
}

#[test]
fn valid_token_is_accepted_until_exp() {
    let p = token_policy();
    let t = tok("ep", NOW + 60);
    assert_eq!(p.check(Some(&bearer(&t)), "ep", at(NOW)), Ok(()));
    assert_eq!(p.check(Some(&bearer(&t)), "ep", at(NOW + 59)), Ok(()));
    let e = p.check(Some(&bearer(&t)), "ep", at(NOW + 60)).unwrap_err();
    assert_eq!(e.reason(), "expired");
}

#[test]
fn expired_token() {
    assert_eq!(
        reason(&token_policy(), Some(&bearer(&tok("ep", NOW - 1)))),
        "expired"
    );
}

#[test]
fn token_for_another_endpoint() {
    assert_eq!(
        reason(&token_policy(), Some(&bearer(&tok("other", NOW + 60)))),
        "wrong_audience"
    );
}

#[test]
fn tampered_or_foreign_tokens_fail_the_signature() {
    let t = tok("other", NOW + 60);
    let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
    // swap in the claims of a token for `ep`, keeping the old signature
    parts[1] = tok("ep", NOW + 60).split('.').nth(1).unwrap().to_string();
    let tampered = parts.join(".");
    assert_eq!(
        reason(&token_policy(), Some(&bearer(&tampered))),
        "bad_signature"
    );
    let other_key = issue_token_at("ep", at(NOW), at(NOW + 60), &[7u8; 32]).unwrap();
    assert_eq!(
        reason(&token_policy(), Some(&bearer(&other_key))),
        "bad_signature"
    );
    // alg=none: header {"alg":"none","typ":"JWT"}
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    let r = reason(&token_policy(), Some(&bearer(&none)));
    assert!(r == "bad_signature" || r == "malformed", "{r}");
}

#[test]
fn malformed_tokens() {
    for t in ["abc", "a.b.c", "...."] {
        assert_eq!(
            reason(&token_policy(), Some(&bearer(t))),
            "malformed",
            "{t}"
        );
    }
    // signed correctly but without `aud`
    let no_aud = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json_like_exp_only(NOW + 60),
        &EncodingKey::from_secret(SIGNING).unwrap(),
    )
    .unwrap();
    assert_eq!(reason(&token_policy(), Some(&bearer(&no_aud))), "malformed");
    // a key is no token
    assert_eq!(
        reason(
            &token_policy(),
            Some(&bearer(std::str::from_utf8(PRIMARY).unwrap()))
        ),
        "malformed"
    );
}

#[derive(serde::Serialize)]
struct ExpOnly {
    exp: u64,
}
fn serde_json_like_exp_only(exp: u64) -> ExpOnly {
    ExpOnly { exp }
}

#[test]
fn audience_list_containing_the_endpoint_is_accepted() {
    #[derive(serde::Serialize)]
    struct C {
        aud: Vec<&'static str>,
        exp: u64,
    }
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &C {
            aud: vec!["x", "ep"],
            exp: NOW + 5,
        },
        &EncodingKey::from_secret(SIGNING).unwrap(),
    )
    .unwrap();
    assert_eq!(
        token_policy().check(Some(&bearer(&t)), "ep", at(NOW)),
        Ok(())
    );
}

#[test]
fn every_reason_is_distinct_and_label_safe() {
    let mut seen = std::collections::HashSet::new();
    for (i, f) in AuthFailure::ALL.into_iter().enumerate() {
        assert_eq!(f.index(), i);
        let r = f.reason();
        assert!(seen.insert(r), "{r} twice");
        assert!(r.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'));
        assert!(f.www_authenticate().starts_with("Bearer"));
        assert!(!f.to_string().is_empty());
    }
    assert_eq!(seen.len(), 10);
    assert_eq!(
        AuthFailure::InvalidKey.www_authenticate(),
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(AuthFailure::Missing.www_authenticate(), "Bearer");
}

#[test]
fn secrets_never_show_in_debug() {
    let dbg = format!("{:?} {:?}", keys(), token_policy());
    for s in [PRIMARY, SECONDARY, SIGNING] {
        assert!(!dbg.contains(std::str::from_utf8(s).unwrap()), "{dbg}");
    }
    assert!(dbg.contains("[redacted]"), "{dbg}");
}

#[test]
fn equality_compares_keys() {
    assert_eq!(keys(), keys());
    assert_ne!(keys(), AuthPolicy::keys(Some(PRIMARY), None).unwrap());
    assert_eq!(token_policy(), token_policy());
    assert_ne!(token_policy(), AuthPolicy::token(&[1u8; 32]).unwrap());
}

#[test]
fn short_signing_keys_are_refused() {
    assert_eq!(
        AuthPolicy::token(b"short"),
        Err(AuthError::SigningKeyTooShort { len: 5 })
    );
    assert!(issue_token("ep", Duration::from_secs(60), b"short").is_err());
    assert!(AuthPolicy::token(&[0u8; MIN_SIGNING_KEY_BYTES]).is_ok());
}

#[test]
fn issue_token_is_accepted_now() {
    let t = issue_token("ep", Duration::from_secs(3600), SIGNING).unwrap();
    assert_eq!(
        token_policy().check(Some(&bearer(&t)), "ep", SystemTime::now()),
        Ok(())
    );
}

#[test]
fn from_secret_data_maps_entries() {
    let mut d = BTreeMap::new();
    d.insert(SECRET_PRIMARY_KEY.to_string(), PRIMARY.to_vec());
    // `kubectl create secret --from-file` of an `echo`ed key ends in a newline
    d.insert(
        SECRET_SECONDARY_KEY.to_string(),
        [SECONDARY, b"\n"].concat(),
    );
    assert_eq!(AuthPolicy::from_secret_data(AuthMode::Key, &d), Ok(keys()));
    assert_eq!(
        AuthPolicy::from_secret_data(AuthMode::None, &d),
        Ok(AuthPolicy::None)
    );
    assert_eq!(
        AuthPolicy::from_secret_data(AuthMode::Token, &d),
        Err(AuthError::MissingSecretEntry("signingKey"))
    );
    d.insert(SECRET_SIGNING_KEY.to_string(), SIGNING.to_vec());
    assert_eq!(
        AuthPolicy::from_secret_data(AuthMode::Token, &d),
        Ok(token_policy())
    );
    let empty = BTreeMap::new();
    let p = AuthPolicy::from_secret_data(AuthMode::Key, &empty).unwrap();
    assert!(p.refuses_all());
}

#[test]
fn key_of_different_length_is_refused_in_constant_time() {
    // The stored form of a key is its SHA-256 digest: 32 bytes whatever the key's length.
    for k in [&b"k"[..], PRIMARY, &[7u8; 100_000][..]] {
        assert_eq!(KeyDigest::of(k).0.len(), 32);
    }
    // A presented key is hashed too, and the digests compared: the comparison is over two
    // 32-byte values for a prefix, an extension, an empty or a huge guess alike.
    let d = KeyDigest::of(PRIMARY);
    assert!(bool::from(d.matches(PRIMARY)));
    let longer = [PRIMARY, b"x"].concat();
    for guess in [
        &PRIMARY[..PRIMARY.len() - 1],
        &longer[..],
        &b""[..],
        &PRIMARY[..1],
        &[b'A'; 1 << 20][..],
    ] {
        assert!(!bool::from(d.matches(guess)), "{} bytes", guess.len());
        if guess.is_empty() {
            continue; // `Bearer ` alone is malformed, before any comparison
        }
        assert_eq!(
            reason(
                &keys(),
                Some(
                    &HeaderValue::from_bytes(&[b"Bearer ", guess].concat())
                        .unwrap_or(HeaderValue::from_static("Bearer x"))
                )
            ),
            "invalid_key"
        );
    }
    // Equal keys give equal digests; one changed byte anywhere, a different one.
    let mut flipped = PRIMARY.to_vec();
    flipped[PRIMARY.len() / 2] ^= 1;
    assert!(KeyDigest::of(PRIMARY) == KeyDigest::of(PRIMARY));
    assert!(KeyDigest::of(PRIMARY) != KeyDigest::of(&flipped));
}

#[test]
fn short_keys_are_refused_naming_the_key() {
    assert_eq!(
        AuthPolicy::keys(Some(b"short"), Some(SECONDARY)),
        Err(AuthError::KeyTooShort {
            entry: "primaryKey",
            len: 5
        })
    );
    let e = AuthPolicy::keys(Some(PRIMARY), Some(b"  fifteen-chars-x  "))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`secondaryKey`") && e.contains("15 bytes"),
        "{e}"
    );
    assert!(AuthPolicy::keys(Some(&[b'k'; MIN_KEY_BYTES]), None).is_ok());
    let mut d = BTreeMap::new();
    d.insert(SECRET_PRIMARY_KEY.to_string(), b"p1".to_vec());
    assert_eq!(
        AuthPolicy::from_secret_data(AuthMode::Key, &d),
        Err(AuthError::KeyTooShort {
            entry: "primaryKey",
            len: 2
        })
    );
}

/// A token with these claims, signed with `SIGNING`.
fn tok_claims(exp: u64, iat: Option<u64>, nbf: Option<u64>) -> String {
    let claims = Claims {
        aud: Audience::One("ep".into()),
        exp,
        iat,
        nbf,
    };
    let key = EncodingKey::from_secret(SIGNING).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

#[test]
fn token_not_yet_valid_is_refused() {
    let p = token_policy();
    let t = tok_claims(NOW + 600, Some(NOW), Some(NOW + 60));
    assert_eq!(reason(&p, Some(&bearer(&t))), "not_yet_valid");
    let at_nbf = p.check(Some(&bearer(&t)), "ep", at(NOW + 60));
    assert_eq!(at_nbf, Ok(()), "valid from nbf on");
    let t = tok_claims(NOW + 600, None, Some(NOW - 1));
    assert_eq!(p.check(Some(&bearer(&t)), "ep", at(NOW)), Ok(()));
}

#[test]
fn token_with_too_long_lifetime_is_refused() {
    let p = token_policy();
    let day = 86_400;
    let hour = Duration::from_secs(3600);
    let check = |t: &str, max: Duration| {
        p.check_with(Some(&bearer(t)), "ep", at(NOW), max)
            .map_err(AuthFailure::reason)
    };
    // Issued for a year: refused under the default cap of a day, whatever time is left.
    let t = tok_claims(NOW + 365 * day, Some(NOW - 10), None);
    assert_eq!(reason(&p, Some(&bearer(&t))), "lifetime_too_long");
    // exp - iat within the cap, but `iat` made up: exp - now counts too.
    let t = tok_claims(NOW + 2 * day, Some(NOW + 2 * day - 60), None);
    assert_eq!(check(&t, hour), Err("lifetime_too_long"));
    // No iat: exp - now alone.
    let t = tok_claims(NOW + 7200, None, None);
    assert_eq!(check(&t, hour), Err("lifetime_too_long"));
    assert_eq!(check(&t, 2 * hour), Ok(()));
    // An hour's token, checked half-way: fine under an hour's cap.
    let t = tok_claims(NOW + 1800, Some(NOW - 1800), None);
    assert_eq!(check(&t, hour), Ok(()));
    assert_eq!(check(&t, hour / 2), Err("lifetime_too_long"));
    // Exactly the cap is allowed.
    let t = tok_claims(NOW + 3600, Some(NOW), None);
    assert_eq!(check(&t, hour), Ok(()));
}

// === property tests (fuzzing; `PROPTEST_CASES=100000 cargo test -p infergate-auth fuzz`) ===

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// Times around `NOW`, and the extremes.
    fn times() -> impl Strategy<Value = u64> {
        prop_oneof![
            (NOW - 200_000..NOW + 200_000),
            Just(0u64),
            Just(u64::MAX),
            Just(i64::MAX as u64),
            any::<u64>(),
        ]
    }

    /// What `check_with` must answer for these claims, by the rules written out.
    fn expected(
        aud_ok: bool,
        exp: u64,
        iat: Option<u64>,
        nbf: Option<u64>,
        max: u64,
    ) -> Result<(), &'static str> {
        if !aud_ok {
            return Err("wrong_audience");
        }
        if exp <= NOW {
            return Err("expired");
        }
        if nbf.is_some_and(|n| n > NOW) {
            return Err("not_yet_valid");
        }
        let issued = iat.map_or(0, |i| exp.saturating_sub(i));
        if issued > max || exp - NOW > max {
            return Err("lifetime_too_long");
        }
        Ok(())
    }

    proptest! {
        // 256 cases by default (as `./test.sh` runs them); PROPTEST_CASES sets more.
        #[test]
        fn token_claims_are_judged_as_the_rules_say(
            exp in times(),
            iat in proptest::option::of(times()),
            nbf in proptest::option::of(times()),
            aud_ok in any::<bool>(),
            max in prop_oneof![Just(86_400u64), 1u64..400_000, Just(u64::MAX)],
        ) {
            let claims = Claims {
                aud: Audience::One(if aud_ok { "ep" } else { "other" }.into()),
                exp,
                iat,
                nbf,
            };
            let key = EncodingKey::from_secret(SIGNING).unwrap();
            let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
            let got = token_policy()
                .check_with(Some(&bearer(&t)), "ep", at(NOW), Duration::from_secs(max))
                .map_err(AuthFailure::reason);
            prop_assert_eq!(got, expected(aud_ok, exp, iat, nbf, max));
        }

        #[test]
        fn any_bearer_value_is_refused_without_a_panic(v in proptest::collection::vec(any::<u8>(), 0..600)) {
            let Ok(h) = HeaderValue::from_bytes(&v) else { return Ok(()) };
            for p in [keys(), token_policy(), AuthPolicy::default()] {
                let r = p.check(Some(&h), "ep", at(NOW));
                // Only the exact keys pass (the value is never a valid signed token by chance).
                let exact = [PRIMARY, SECONDARY]
                    .iter()
                    .any(|k| v.trim_ascii().eq_ignore_ascii_case(&[b"bearer ", *k].concat()));
                prop_assert!(r.is_err() || exact, "{:?}", String::from_utf8_lossy(&v));
            }
        }

        #[test]
        fn a_token_with_any_byte_changed_never_panics_and_never_passes_as_another(
            pos in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let good = tok("ep", NOW + 60);
            let mut bad = good.clone().into_bytes();
            let i = pos.index(bad.len());
            bad[i] = byte;
            let Ok(h) = HeaderValue::from_bytes(&[b"Bearer ", &bad[..]].concat()) else {
                return Ok(());
            };
            let r = token_policy().check(Some(&h), "ep", at(NOW));
            // A change that decodes to the same bytes (base64's unused low bits) may still pass;
            // for another endpoint or after exp, never.
            let _ = r;
            prop_assert!(token_policy().check(Some(&h), "other", at(NOW)).is_err());
            prop_assert!(token_policy().check(Some(&h), "ep", at(NOW + 60)).is_err());
        }
    }
}
