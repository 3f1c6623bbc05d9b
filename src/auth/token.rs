//! Finding and verifying the JWT of a connection.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::AuthError;

/// `exp` values above this are milliseconds (lib0 writes them so); below,
/// seconds. 10^11 seconds is the year 5138, 10^11 ms was 1973.
const EXP_MILLIS_THRESHOLD: f64 = 1e11;

/// The token of a request: the `yauth-<jwt>` subprotocol, else `?yauth=`.
pub fn token_from_request(subprotocols: Option<&str>, query: &str) -> Option<String> {
    let from_protocol = subprotocols.and_then(|header| {
        header
            .split(',')
            .map(str::trim)
            .find_map(|p| p.strip_prefix("yauth-"))
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    });
    from_protocol.or_else(|| {
        url_query_pairs(query)
            .find(|(k, _)| k == "yauth")
            .map(|(_, v)| v)
            .filter(|t| !t.is_empty())
    })
}

fn url_query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k), form_decode(v))
    })
}

/// Decodes a query component (`+` is a space, `%XX` a byte).
fn form_decode(s: &str) -> String {
    let replaced = s.replace('+', " ");
    crate::streams::decode_uri_component(&replaced).unwrap_or(replaced)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user_id: String,
    /// Expiry in milliseconds since the epoch, if the token has one.
    pub expires_at_ms: Option<u64>,
}

#[derive(Deserialize)]
struct RawClaims {
    yuserid: Option<Value>,
    exp: Option<f64>,
}

/// Verifies ES384 tokens against the public key from `AUTH_PUBLIC_KEY`.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    /// `jwk` as lib0's `0ecdsa-generate-keypair` prints it.
    pub fn from_jwk(jwk: &str) -> Result<Self, String> {
        let jwk: Jwk = serde_json::from_str(jwk).map_err(|e| format!("not a JWK: {e}"))?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable JWK: {e}"))?;
        let mut validation = Validation::new(Algorithm::ES384);
        // `exp` is checked below, in seconds or milliseconds.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        Ok(TokenVerifier { key, validation })
    }

    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Claims, AuthError> {
        let data = decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        let user_id = match data.claims.yuserid {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(AuthError::InvalidToken("claim yuserid is missing".into())),
        };
        let expires_at_ms = data.claims.exp.map(|exp| {
            let ms = if exp > EXP_MILLIS_THRESHOLD {
                exp
            } else {
                exp * 1000.0
            };
            ms.max(0.0) as u64
        });
        if expires_at_ms.is_some_and(|exp| exp <= now_ms) {
            return Err(AuthError::Expired);
        }
        Ok(Claims {
            user_id,
            expires_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comes_from_subprotocol_or_query() {
        assert_eq!(
            token_from_request(Some("yauth-abc.def.ghi"), ""),
            Some("abc.def.ghi".into())
        );
        assert_eq!(
            token_from_request(Some("other, yauth-abc.def"), "yauth=zzz"),
            Some("abc.def".into())
        );
        assert_eq!(
            token_from_request(None, "x=1&yauth=a%2Eb.c"),
            Some("a.b.c".into())
        );
        assert_eq!(token_from_request(Some("other"), "yauth="), None);
        assert_eq!(token_from_request(None, ""), None);
    }
}
