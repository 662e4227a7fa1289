//! Access tokens: JWTs signed with HS256 carrying the room, the identity, an expiry
//! and what the holder may do. Minted by `huiyi token`, the dev endpoint and the load
//! generator; verified by the server.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The longest token we try to parse; anything longer is refused unread.
const MAX_TOKEN_LEN: usize = 4096;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Grants {
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub room_admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The participant identity.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub room: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub grants: Grants,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported algorithm (only HS256)")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token has an empty identity or room")]
    MissingClaims,
}

impl TokenError {
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Algorithm => "algorithm",
            TokenError::Signature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::MissingClaims => "missing_claims",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn mac(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length")
}

pub fn mint(secret: &[u8], claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let mut m = mac(secret);
    m.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

pub fn verify(secret: &[u8], token: &str, now: u64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: Header = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
    let mut m = mac(secret);
    let signing_input = token.rfind('.').map(|i| &token[..i]).ok_or(TokenError::Malformed)?;
    m.update(signing_input.as_bytes());
    m.verify_slice(&signature).map_err(|_| TokenError::Signature)?;
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or(TokenError::Malformed)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now) {
        return Err(TokenError::NotYetValid);
    }
    if claims.sub.is_empty() || claims.room.is_empty() {
        return Err(TokenError::MissingClaims);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "ana".into(),
            name: Some("Ana".into()),
            room: "r1".into(),
            exp,
            nbf: None,
            grants: Grants { can_publish: true, can_subscribe: true, room_admin: false },
        }
    }

    #[test]
    fn round_trip() {
        let t = mint(b"secret", &claims(2000));
        assert_eq!(verify(b"secret", &t, 1000), Ok(claims(2000)));
    }

    #[test]
    fn refuses_wrong_key_expiry_and_tampering() {
        let t = mint(b"secret", &claims(2000));
        assert_eq!(verify(b"other", &t, 1000), Err(TokenError::Signature));
        assert_eq!(verify(b"secret", &t, 2000), Err(TokenError::Expired));
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(9999)).unwrap());
        parts[1] = &forged;
        assert_eq!(verify(b"secret", &parts.join("."), 1000), Err(TokenError::Signature));
        assert_eq!(verify(b"secret", "a.b", 1000), Err(TokenError::Malformed));
        assert_eq!(verify(b"secret", "", 1000), Err(TokenError::Malformed));
        assert_eq!(verify(b"secret", "!!.??.**", 1000), Err(TokenError::Malformed));
    }

    #[test]
    fn refuses_alg_none() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(2000)).unwrap());
        assert_eq!(verify(b"secret", &format!("{header}.{payload}."), 1000), Err(TokenError::Algorithm));
    }
}
