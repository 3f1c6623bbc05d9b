//! Token verification against keys and tokens made by npm lib0 (the token
//! code @y/redis uses): `tests/e2e/gen-auth-fixtures.mjs` → `tests/fixtures/auth_lib0.json`.

use serde_json::{json, Value};
use y_redis::auth::{generate_keypair, now_ms, AuthError, Signer, TokenVerifier};

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth_lib0.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture readable"))
        .expect("fixture is JSON")
}

fn token(f: &Value, name: &str) -> String {
    f["tokens"][name].as_str().expect("token").to_owned()
}

#[test]
fn lib0_tokens_verify_with_the_lib0_public_key() {
    let f = fixture();
    let verifier =
        TokenVerifier::from_jwk(f["public_jwk"].as_str().expect("jwk")).expect("lib0 JWK parses");
    let claims = verifier
        .verify(&token(&f, "valid_ms_exp"), now_ms())
        .expect("valid");
    assert_eq!(claims.user_id, "user1");
    assert_eq!(
        claims.expires_at_ms,
        Some(4_102_444_800_000),
        "millisecond exp kept as is"
    );
    let claims = verifier
        .verify(&token(&f, "valid_no_exp"), now_ms())
        .expect("valid");
    assert_eq!(
        (claims.user_id.as_str(), claims.expires_at_ms),
        ("user2", None)
    );
}

#[test]
fn bad_lib0_tokens_are_refused() {
    let f = fixture();
    let verifier =
        TokenVerifier::from_jwk(f["public_jwk"].as_str().expect("jwk")).expect("lib0 JWK parses");
    assert_eq!(
        verifier.verify(&token(&f, "expired_ms_exp"), now_ms()),
        Err(AuthError::Expired)
    );
    for name in ["no_userid", "wrong_key", "tampered_payload"] {
        assert!(
            matches!(
                verifier.verify(&token(&f, name), now_ms()),
                Err(AuthError::InvalidToken(_))
            ),
            "{name} accepted"
        );
    }
    assert!(matches!(
        verifier.verify("not-a-jwt", now_ms()),
        Err(AuthError::InvalidToken(_))
    ));
    // A millisecond exp is never read as seconds (which would be far future).
    let exp_ms = token(&f, "valid_ms_exp");
    assert_eq!(
        verifier.verify(&exp_ms, 4_102_444_800_001),
        Err(AuthError::Expired)
    );
}

#[test]
fn our_keys_sign_tokens_we_verify_with_exp_in_seconds_or_ms() {
    let pair = generate_keypair().expect("keygen");
    let public: Value = serde_json::from_str(&pair.public_jwk).expect("json");
    assert_eq!(public["kty"], "EC");
    assert_eq!(public["crv"], "P-384");
    assert_eq!(public["key_ops"], json!(["verify"]));
    assert!(
        public.get("d").is_none(),
        "public key holds no private scalar"
    );
    let signer = Signer::from_private_jwk(&pair.private_jwk).expect("private JWK parses");
    let verifier = TokenVerifier::from_jwk(&pair.public_jwk).expect("public JWK parses");
    let now = now_ms();
    let secs = signer
        .sign(&json!({ "yuserid": "a", "exp": now / 1000 + 60 }))
        .expect("sign");
    assert_eq!(verifier.verify(&secs, now).expect("valid").user_id, "a");
    let old_secs = signer
        .sign(&json!({ "yuserid": "a", "exp": now / 1000 - 1 }))
        .expect("sign");
    assert_eq!(verifier.verify(&old_secs, now), Err(AuthError::Expired));
    let numeric_user = signer.sign(&json!({ "yuserid": 42 })).expect("sign");
    assert_eq!(
        verifier.verify(&numeric_user, now).expect("valid").user_id,
        "42"
    );
    // A key of another pair does not verify it.
    let other =
        TokenVerifier::from_jwk(&generate_keypair().expect("keygen").public_jwk).expect("jwk");
    assert!(matches!(
        other.verify(&secs, now),
        Err(AuthError::InvalidToken(_))
    ));
}

#[test]
fn lib0_private_key_signs_tokens_lib0_would_accept() {
    let f = fixture();
    let signer = Signer::from_private_jwk(f["private_jwk"].as_str().expect("jwk"))
        .expect("lib0 private JWK parses");
    let verifier = TokenVerifier::from_jwk(f["public_jwk"].as_str().expect("jwk")).expect("jwk");
    let t = signer
        .sign(&json!({ "yuserid": "u", "exp": now_ms() + 60_000 }))
        .expect("sign");
    assert_eq!(verifier.verify(&t, now_ms()).expect("valid").user_id, "u");
}
