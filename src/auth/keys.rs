//! ES384 key pairs and token signing in lib0's JWK format, for
//! `y-redis keygen` and the example auth backend.

use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P384_SHA384_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// P-384 coordinates and scalar are 48 bytes each.
const COORDINATE_BYTES: usize = 48;

/// A JWK as lib0 exports it (field order included).
#[derive(Serialize, Deserialize)]
struct LibZeroJwk {
    key_ops: Vec<String>,
    ext: bool,
    kty: String,
    x: String,
    y: String,
    crv: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    d: Option<String>,
}

pub struct KeyPair {
    pub public_jwk: String,
    pub private_jwk: String,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn generate_keypair() -> Result<KeyPair, String> {
    let pair = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING)
        .map_err(|_| "key generation failed")?;
    // Uncompressed point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    let (x, y) = point[1..].split_at(COORDINATE_BYTES);
    let scalar = pair
        .private_key()
        .as_be_bytes()
        .map_err(|_| "cannot export the private key")?;
    let jwk = |ops: &str, d: Option<String>| LibZeroJwk {
        key_ops: vec![ops.into()],
        ext: true,
        kty: "EC".into(),
        x: b64(x),
        y: b64(y),
        crv: "P-384".into(),
        d,
    };
    let to_json = |j: LibZeroJwk| serde_json::to_string(&j).map_err(|e| e.to_string());
    Ok(KeyPair {
        public_jwk: to_json(jwk("verify", None))?,
        private_jwk: to_json(jwk("sign", Some(b64(scalar.as_ref()))))?,
    })
}

impl KeyPair {
    /// The pair as `.env` lines, e.g. for `y-redis keygen >> .env`.
    pub fn env_lines(&self) -> String {
        format!(
            "{}\n{}",
            env_line("AUTH_PUBLIC_KEY", &self.public_jwk),
            env_line("AUTH_PRIVATE_KEY", &self.private_jwk)
        )
    }
}

/// `NAME='value'`: inside single quotes docker compose's `.env` parser,
/// dotenvy and a shell `source` all take the text literally, so the JSON's
/// double quotes survive (bare, dotenvy would strip them). A JWK from
/// [`generate_keypair`] never holds a single quote (base64url and fixed
/// names only), which this relies on.
fn env_line(name: &str, value: &str) -> String {
    assert!(!value.contains('\''), "{name} cannot be single-quoted");
    format!("{name}='{value}'")
}

/// Signs tokens with the private key from `AUTH_PRIVATE_KEY`.
pub struct Signer {
    key: EncodingKey,
}

impl Signer {
    pub fn from_private_jwk(jwk: &str) -> Result<Self, String> {
        let jwk: LibZeroJwk =
            serde_json::from_str(jwk).map_err(|e| format!("not a private JWK: {e}"))?;
        let decode = |field: &str, v: &str| {
            URL_SAFE_NO_PAD
                .decode(v)
                .map_err(|e| format!("field {field}: {e}"))
        };
        let d = decode("d", jwk.d.as_deref().ok_or("no private scalar d")?)?;
        let mut point = vec![0x04];
        point.extend(decode("x", &jwk.x)?);
        point.extend(decode("y", &jwk.y)?);
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P384_SHA384_FIXED_SIGNING,
            &d,
            &point,
        )
        .map_err(|e| format!("inconsistent key: {e}"))?;
        let der = pair.to_pkcs8v1().map_err(|_| "cannot encode the key")?;
        Ok(Signer {
            key: EncodingKey::from_ec_der(der.as_ref()),
        })
    }

    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, String> {
        encode(&Header::new(Algorithm::ES384), claims, &self.key).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_single_quote_the_json() {
        let pair = generate_keypair().expect("keygen");
        let lines = pair.env_lines();
        let mut it = lines.lines();
        assert_eq!(
            it.next(),
            Some(format!("AUTH_PUBLIC_KEY='{}'", pair.public_jwk).as_str())
        );
        assert_eq!(
            it.next(),
            Some(format!("AUTH_PRIVATE_KEY='{}'", pair.private_jwk).as_str())
        );
        assert_eq!(it.next(), None);
    }
}
