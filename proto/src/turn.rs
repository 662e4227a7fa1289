//! TURN credentials by the REST convention (draft-uberti-behave-turn-rest; coturn's
//! `use-auth-secret` with `static-auth-secret`): the username is the expiry as Unix
//! seconds and the identity, `EXPIRY:IDENTITY`; the password is the base64 of the HMAC-SHA1
//! of that username under the secret the TURN server shares. Nothing is stored: the TURN
//! server checks the HMAC and the expiry itself.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;

/// One entry of a client's `iceServers` (WebRTC's RTCIceServer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

/// Credentials for `identity` valid until `expires` (Unix seconds), for `urls`.
pub fn ice_server(secret: &[u8], urls: &[String], identity: &str, expires: u64) -> IceServer {
    let username = format!("{expires}:{identity}");
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    let credential = STANDARD.encode(mac.finalize().into_bytes());
    IceServer { urls: urls.to_vec(), username, credential }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_convention() {
        // Python: base64.b64encode(hmac.new(b"north", b"1700000000:ana", hashlib.sha1).digest())
        let server = ice_server(b"north", &["turn:127.0.0.1:3478".into()], "ana", 1_700_000_000);
        assert_eq!(server.username, "1700000000:ana");
        assert_eq!(server.credential, "/V6vMibmvRAPIMy3tyPu2GxFkDI=");
        assert_eq!(server.urls, vec!["turn:127.0.0.1:3478".to_string()]);
    }
}
