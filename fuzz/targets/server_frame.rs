//! `ServerFrame::parse` (what clients run on what a server sends) and the announce result
//! reader on arbitrary text: never panics; parsed frames round-trip

use meshrtc::signal::{AnnounceResult, ServerFrame};

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match ServerFrame::parse(&text) {
        Ok(frame) => {
            let again = frame.to_json();
            assert_eq!(ServerFrame::parse(&again).as_ref(), Ok(&frame), "{again}");
            if let ServerFrame::Response {
                result: Ok(value), ..
            } = &frame
            {
                if let Ok(result) = AnnounceResult::from_value(value) {
                    assert_eq!(AnnounceResult::from_value(&result.to_value()), Ok(result));
                }
            }
        }
        Err(failure) => {
            let _ = failure.into_response().to_json();
        }
    }
}
