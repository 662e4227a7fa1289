//! Access tokens as a join message carries them, verified with a fixed secret.
//!
//! Input is the token text, or, after a 0xff byte (never in a text frame), the recipe of
//! a token to mint and then alter. Properties: no panic; verify accepts only a token whose
//! signing input was signed with the secret (checked with an HMAC computed here), and only
//! claims that are in force (`exp` after now, `nbf` not after now, identity and room set);
//! a minted token verifies to its claims; a minted token with any one byte changed, or a
//! token minted with another secret, is refused.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use proto::token::{Claims, Grants, TokenError, mint, verify};
use sha2::Sha256;

/// The secret the seed tokens in corpus/token_verify were minted with.
const SECRET: &[u8] = b"huiyi-fuzz-secret";
/// "Now" for every verification: 2023-11-14. The seeds expire in 2033.
const NOW: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0xff, recipe)) => minted(recipe),
        _ => {
            if let Ok(token) = std::str::from_utf8(data) {
                as_sent(token);
            }
        }
    }
});

fn as_sent(token: &str) {
    let Ok(claims) = verify(SECRET, token, NOW) else { return };
    let (signing_input, signature) = token.rsplit_once('.').expect("an accepted token has three parts");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
    mac.update(signing_input.as_bytes());
    let expected = mac.finalize().into_bytes();
    let signature = URL_SAFE_NO_PAD.decode(signature).expect("an accepted signature is base64url");
    assert_eq!(
        signature.as_slice(),
        expected.as_slice(),
        "accepted a token not signed with the secret: {token}"
    );
    in_force(&claims);
}

fn in_force(claims: &Claims) {
    assert!(claims.exp > NOW, "accepted an expired token");
    assert!(claims.nbf.is_none_or(|nbf| nbf <= NOW), "accepted a token not yet valid");
    assert!(!claims.sub.is_empty() && !claims.room.is_empty(), "accepted a token without identity or room");
}

/// Recipe: flags, exp and nbf offsets, where and what to alter, then sub, room and name
/// separated by 0x00.
fn minted(recipe: &[u8]) {
    if recipe.len() < 9 {
        return;
    }
    let flags = recipe[0];
    let exp = NOW.wrapping_add_signed(i64::from(i16::from_be_bytes([recipe[1], recipe[2]])) * 60);
    let nbf = NOW.wrapping_add_signed(i64::from(i16::from_be_bytes([recipe[3], recipe[4]])) * 60);
    let at = usize::from(u16::from_be_bytes([recipe[5], recipe[6]]));
    let with = recipe[7];
    let mut fields = recipe[8..].split(|b| *b == 0).map(String::from_utf8_lossy);
    let claims = Claims {
        sub: fields.next().unwrap_or_default().into_owned(),
        room: fields.next().unwrap_or_default().into_owned(),
        name: fields.next().map(|n| n.into_owned()),
        exp: if flags & 0x40 != 0 { u64::MAX } else { exp },
        nbf: (flags & 0x01 != 0).then_some(nbf),
        grants: Grants {
            can_publish: flags & 2 != 0,
            can_subscribe: flags & 4 != 0,
            room_admin: flags & 8 != 0,
        },
    };
    let token = mint(SECRET, &claims);

    let verified = verify(SECRET, &token, NOW);
    let expected = if token.len() > 4096 {
        Err(TokenError::Malformed)
    } else if claims.exp <= NOW {
        Err(TokenError::Expired)
    } else if claims.nbf.is_some_and(|nbf| nbf > NOW) {
        Err(TokenError::NotYetValid)
    } else if claims.sub.is_empty() || claims.room.is_empty() {
        Err(TokenError::MissingClaims)
    } else {
        Ok(claims.clone())
    };
    assert_eq!(verified, expected, "minted {token}");

    if flags & 0x10 != 0 {
        assert!(verify(b"another secret", &token, NOW).is_err(), "accepted with another secret: {token}");
    }
    if flags & 0x20 != 0 {
        let mut altered = token.clone().into_bytes();
        let at = at % altered.len();
        if altered[at] == with {
            return;
        }
        altered[at] = with;
        if let Ok(altered) = String::from_utf8(altered) {
            assert!(verify(SECRET, &altered, NOW).is_err(), "accepted {altered}, minted as {token}");
        }
    }
}
