//! `ClientFrame::parse` on arbitrary text: never panics; what parses serializes and parses
//! back to the same frame; what fails is answerable

use meshrtc::signal::{ClientFrame, MAX_FRAME_BYTES};

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match ClientFrame::parse(&text) {
        Ok(frame) => {
            let again = frame.to_json();
            if again.len() <= MAX_FRAME_BYTES {
                assert_eq!(ClientFrame::parse(&again).as_ref(), Ok(&frame), "{again}");
            }
        }
        Err(failure) => {
            let answer = failure.into_response().to_json();
            assert!(serde_json::from_str::<serde_json::Value>(&answer).is_ok());
        }
    }
}
