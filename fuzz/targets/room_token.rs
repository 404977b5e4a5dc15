//! Room token verification on arbitrary tokens: never panics, and accepts nothing that was
//! not signed with the secret (the input cannot know it)

use std::time::Duration;

use meshrtc::signal::auth::{mint_room_token, verify_room_token, RoomClaims, Secret, TokenError};
use meshrtc::signal::RoomId;

pub fn run(data: &[u8]) {
    let secret = Secret::new("fuzz-secret-never-in-the-input").unwrap();
    let text = String::from_utf8_lossy(data);
    match verify_room_token(&secret, &text, Duration::from_secs(1_000)) {
        Ok(claims) => panic!("accepted a forged token {text:?}: {claims:?}"),
        Err(TokenError::Signature | TokenError::Malformed(_) | TokenError::Algorithm) => {}
        Err(e) => panic!("claims read before the signature was checked: {e}"),
    }
    // A token for the input as room name (when it is one) verifies, and changed bytes do not.
    if let Ok(room) = RoomId::new(text.chars().take(64).collect::<String>()) {
        let claims = RoomClaims {
            room,
            sub: None,
            exp: 2_000,
            nbf: None,
        };
        let token = mint_room_token(&secret, &claims);
        assert_eq!(
            verify_room_token(&secret, &token, Duration::from_secs(1_000)),
            Ok(claims)
        );
        if let Some(&b) = data.first() {
            let mut bytes = token.into_bytes();
            let at = usize::from(b) % bytes.len();
            bytes[at] ^= 1;
            if let Ok(changed) = String::from_utf8(bytes) {
                assert!(verify_room_token(&secret, &changed, Duration::from_secs(1_000)).is_err());
            }
        }
    }
}
