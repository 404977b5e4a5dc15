//! Typed messages of the signaling protocol: JSON-RPC 2.0 over WebSocket
//!
//! The wire contract is `contracts/signaling.md` with its version 2 additions (room tokens,
//! ICE servers and resume in `peer.announce`, error `-32006`); this module is its only encoder
//! and decoder. Version 2 fields are optional on the wire both ways, so version 1 peers and
//! servers interoperate with this code.
//! A [`ClientFrame`] is what a peer sends (always a request with an `id`), a [`ServerFrame`]
//! is what the signaling server sends (a response or a notification).
//!
//! Parsing never panics. A rejected frame yields a [`ParseFailure`] holding the JSON-RPC error
//! to answer with and, whenever the frame carried a valid one, the request id to answer to.
//!
//! Serialization writes `"jsonrpc"` first, then `"id"`, then `"method"`, `"result"` or
//! `"error"`, then `"params"`, with the params fields in the order of the contract.
//! Objects held as [`serde_json::Value`] (metadata, response results) are written in
//! `serde_json`'s map order.

pub mod auth;
pub mod server;

use std::fmt;
use std::sync::Arc;

use serde::de::{DeserializeOwned, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest text frame, in bytes, that the server accepts (64 KiB)
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Longest peer or room id, in bytes
const MAX_ID_LEN: usize = 64;

/// The `jsonrpc` member every frame carries
const JSONRPC_VERSION: &str = "2.0";

/// An id that is not 1-64 characters of `[A-Za-z0-9_.-]`
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("id must be 1-64 characters of [A-Za-z0-9_.-]")]
pub struct IdError;

fn is_valid_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        // Shared, not owned: ids are cloned into every event and map of a busy mesh.
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s` as 1-64 characters of `[A-Za-z0-9_.-]`
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                if !is_valid_id(&s) {
                    return Err(IdError);
                }
                Ok(Self(s.into()))
            }

            /// The id as a string slice
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_newtype!(
    /// Identifier of a peer within a room: 1-64 characters of `[A-Za-z0-9_.-]`
    ///
    /// Ids compare in byte order, which decides the polite peer of a pair (the greater one).
    PeerId
);

id_newtype!(
    /// Identifier of a room: 1-64 characters of `[A-Za-z0-9_.-]`
    RoomId
);

id_newtype!(
    /// Name of one signaling server node sharing rooms with others (`--node-id`):
    /// 1-64 characters of `[A-Za-z0-9_.-]`
    NodeId
);

/// Media and data a peer offers, as announced to the room
///
/// On the wire all three fields are required. The default is a data-only peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capabilities {
    /// The peer sends or receives audio
    pub audio: bool,
    /// The peer sends or receives video
    pub video: bool,
    /// The peer opens data channels
    pub data: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            audio: false,
            video: false,
            data: true,
        }
    }
}

/// A member of a room as other peers see it (`peer.joined`, announce result)
///
/// `metadata` is a JSON object; when parsing, a missing or `null` metadata becomes `{}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's id
    pub peer_id: PeerId,
    /// What the peer announced it can do
    pub capabilities: Capabilities,
    /// Application data the peer announced, an object
    #[serde(default = "empty_object", deserialize_with = "object_or_empty")]
    pub metadata: Value,
}

/// A JSON-RPC request id
///
/// Only integers and strings are ids; a `null` id makes a request invalid.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// An integer id
    Number(i64),
    /// A string id
    String(String),
}

/// A request a peer sends to the signaling server
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// `peer.announce`: join `room`, optionally choosing the peer id
    Announce {
        /// Room to join; the server creates it if needed
        room: RoomId,
        /// Requested peer id; the server assigns a UUID when absent
        peer_id: Option<PeerId>,
        /// What this peer can do; absent means [`Capabilities::default`]
        capabilities: Option<Capabilities>,
        /// Application data for the other peers, an object; absent means `{}`
        metadata: Option<Value>,
        /// A room token (JWT) for a server that requires one (version 2)
        token: Option<String>,
        /// The resume token of a previous announce, to reclaim that place (version 2)
        resume: Option<String>,
    },
    /// `peer.offer`: an SDP offer for peer `to`
    Offer {
        /// Target peer in the same room
        to: PeerId,
        /// The SDP, relayed verbatim
        sdp: String,
    },
    /// `peer.answer`: an SDP answer for peer `to`
    Answer {
        /// Target peer in the same room
        to: PeerId,
        /// The SDP, relayed verbatim
        sdp: String,
    },
    /// `peer.ice_candidate`: a trickled ICE candidate for peer `to`
    IceCandidate {
        /// Target peer in the same room
        to: PeerId,
        /// The candidate line, relayed verbatim; empty means end of candidates
        candidate: String,
        /// Media stream identification tag the candidate belongs to
        sdp_mid: Option<String>,
        /// Index of the m-line the candidate belongs to
        sdp_m_line_index: Option<u32>,
    },
    /// `peer.disconnect`: leave the room; the server answers `{}` and closes the connection
    Disconnect,
}

impl Request {
    /// The JSON-RPC method name, e.g. `"peer.announce"`
    pub fn method(&self) -> &'static str {
        match self {
            Self::Announce { .. } => "peer.announce",
            Self::Offer { .. } => "peer.offer",
            Self::Answer { .. } => "peer.answer",
            Self::IceCandidate { .. } => "peer.ice_candidate",
            Self::Disconnect => "peer.disconnect",
        }
    }
}

/// A notification the signaling server sends to a peer
#[derive(Clone, Debug, PartialEq)]
pub enum Notification {
    /// `peer.joined`: another peer joined the room
    Joined(PeerInfo),
    /// `peer.left`: another peer left the room
    Left {
        /// The peer that left
        peer_id: PeerId,
        /// Why it left
        reason: LeftReason,
    },
    /// `peer.offer`: an SDP offer from peer `from`
    Offer {
        /// The sending peer
        from: PeerId,
        /// The SDP as the sender wrote it
        sdp: String,
    },
    /// `peer.answer`: an SDP answer from peer `from`
    Answer {
        /// The sending peer
        from: PeerId,
        /// The SDP as the sender wrote it
        sdp: String,
    },
    /// `peer.ice_candidate`: a trickled ICE candidate from peer `from`
    IceCandidate {
        /// The sending peer
        from: PeerId,
        /// The candidate line as the sender wrote it; empty means end of candidates
        candidate: String,
        /// Media stream identification tag the candidate belongs to
        sdp_mid: Option<String>,
        /// Index of the m-line the candidate belongs to
        sdp_m_line_index: Option<u32>,
    },
}

impl Notification {
    /// The JSON-RPC method name, e.g. `"peer.joined"`
    pub fn method(&self) -> &'static str {
        match self {
            Self::Joined(_) => "peer.joined",
            Self::Left { .. } => "peer.left",
            Self::Offer { .. } => "peer.offer",
            Self::Answer { .. } => "peer.answer",
            Self::IceCandidate { .. } => "peer.ice_candidate",
        }
    }
}

/// Why a peer left its room (`peer.left`)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeftReason {
    /// The peer sent `peer.disconnect` or closed its connection
    Disconnect,
    /// The peer stopped answering pings
    Timeout,
    /// The server removed the peer
    Kicked,
}

/// An ICE server as the W3C `RTCIceServer` describes it (the type `Config::ice_servers`
/// takes too): on the wire `urls` is an array; a single string is accepted when parsing, as
/// browsers do
pub use crate::ice::IceServer;

/// Result of `peer.announce`
///
/// The fields after `peers` are version 2 additions: absent on the wire when they are
/// empty, `None` or `false`, and absent in the answers of a version 1 server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnounceResult {
    /// The announcing peer's id, as requested or as assigned by the server
    pub peer_id: PeerId,
    /// The room joined
    pub room: RoomId,
    /// The peers already in the room, in join order
    pub peers: Vec<PeerInfo>,
    /// ICE servers to use in addition to the configured ones
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ice_servers: Vec<IceServer>,
    /// The token that reclaims this place after a dropped connection; absent when the
    /// server does not hold places (grace 0)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// How long, in seconds, the server holds the place of a dropped connection
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_grace_s: Option<u64>,
    /// This announce reclaimed a held place: held notifications follow
    #[serde(default, skip_serializing_if = "is_false")]
    pub resumed: bool,
}

impl AnnounceResult {
    /// A result with the version 1 fields only
    pub fn new(peer_id: PeerId, room: RoomId, peers: Vec<PeerInfo>) -> Self {
        Self {
            peer_id,
            room,
            peers,
            ice_servers: Vec::new(),
            resume: None,
            resume_grace_s: None,
            resumed: false,
        }
    }

    /// The `result` member of the announce response
    pub fn to_value(&self) -> Value {
        // Cannot fail: every map key involved is a string.
        serde_json::to_value(self).expect("announce result serializes to JSON")
    }

    /// Reads the `result` member of an announce response
    ///
    /// A malformed result gives an `InvalidParams` error.
    pub fn from_value(v: &Value) -> Result<Self, RpcError> {
        Self::deserialize(v).map_err(|e| {
            RpcError::new(
                ErrorCode::InvalidParams,
                format!("invalid announce result: {e}"),
            )
        })
    }
}

/// The error codes of the contract
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// -32700: the frame is not JSON
    ParseError,
    /// -32600: not a JSON-RPC 2.0 request (also batches and binary frames)
    InvalidRequest,
    /// -32601: unknown method
    MethodNotFound,
    /// -32602: missing field, wrong type or bad id syntax
    InvalidParams,
    /// -32000: any method but `peer.announce` before announcing
    NotAnnounced,
    /// -32001: the room has no free place
    RoomFull,
    /// -32002: the peer id is already taken in this room
    PeerIdTaken,
    /// -32003: `to` is not in the sender's room
    UnknownTarget,
    /// -32004: the frame exceeds the size limit
    MessageTooLarge,
    /// -32005: the connection sends too fast
    RateLimited,
    /// -32006: the room token is missing, invalid, expired or for another room or id
    Unauthorized,
}

impl ErrorCode {
    const ALL: [Self; 11] = [
        Self::ParseError,
        Self::InvalidRequest,
        Self::MethodNotFound,
        Self::InvalidParams,
        Self::NotAnnounced,
        Self::RoomFull,
        Self::PeerIdTaken,
        Self::UnknownTarget,
        Self::MessageTooLarge,
        Self::RateLimited,
        Self::Unauthorized,
    ];

    /// The numeric `error.code`
    pub fn code(self) -> i64 {
        match self {
            Self::ParseError => -32700,
            Self::InvalidRequest => -32600,
            Self::MethodNotFound => -32601,
            Self::InvalidParams => -32602,
            Self::NotAnnounced => -32000,
            Self::RoomFull => -32001,
            Self::PeerIdTaken => -32002,
            Self::UnknownTarget => -32003,
            Self::MessageTooLarge => -32004,
            Self::RateLimited => -32005,
            Self::Unauthorized => -32006,
        }
    }

    /// The contract's code for a numeric `error.code`, if it is one
    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    fn default_message(self) -> &'static str {
        match self {
            Self::ParseError => "parse error",
            Self::InvalidRequest => "invalid request",
            Self::MethodNotFound => "method not found",
            Self::InvalidParams => "invalid params",
            Self::NotAnnounced => "not announced",
            Self::RoomFull => "room full",
            Self::PeerIdTaken => "peer id already taken in this room",
            Self::UnknownTarget => "unknown target peer",
            Self::MessageTooLarge => "message too large",
            Self::RateLimited => "rate limited",
            Self::Unauthorized => "unauthorized",
        }
    }
}

/// A JSON-RPC error object
///
/// `code` is kept as a number so that codes outside the contract survive parsing;
/// [`RpcError::error_code`] maps it back to an [`ErrorCode`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    /// The numeric error code
    pub code: i64,
    /// A short description
    pub message: String,
    /// Optional details; written only when present
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with the given contract code and message, without data
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.code(),
            message: message.into(),
            data: None,
        }
    }

    /// The contract's code for this error, if it is one
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }
}

impl From<ErrorCode> for RpcError {
    fn from(code: ErrorCode) -> Self {
        Self::new(code, code.default_message())
    }
}

/// Why a frame was rejected: the error to send back, and the request id if one could be recovered
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("frame rejected: {error}")]
pub struct ParseFailure {
    /// The frame's request id, when it had a valid one
    pub id: Option<RequestId>,
    /// The error to answer with
    pub error: RpcError,
}

impl ParseFailure {
    fn new(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            error: RpcError::new(code, message),
        }
    }

    /// The error response to send back (`"id": null` when no id was recovered)
    pub fn into_response(self) -> ServerFrame {
        ServerFrame::response_err(self.id, self.error)
    }
}

/// A frame a peer sends: always a request
#[derive(Clone, Debug, PartialEq)]
pub struct ClientFrame {
    /// The request id the response will carry
    pub id: RequestId,
    /// The request
    pub request: Request,
}

impl ClientFrame {
    /// The frame as JSON text
    pub fn to_json(&self) -> String {
        let envelope = RequestEnvelope {
            jsonrpc: JSONRPC_VERSION,
            id: &self.id,
            method: self.request.method(),
            params: RequestParams(&self.request),
        };
        // Cannot fail: every map key involved is a string.
        serde_json::to_string(&envelope).expect("request serializes to JSON")
    }

    /// Parses a text frame, rejecting it if it exceeds [`MAX_FRAME_BYTES`]
    pub fn parse(text: &str) -> Result<Self, ParseFailure> {
        Self::parse_with_limit(text, MAX_FRAME_BYTES)
    }

    /// Parses a text frame, rejecting it if it exceeds `max_bytes`
    ///
    /// The length is checked before anything else, so an oversized frame gets no id.
    pub fn parse_with_limit(text: &str, max_bytes: usize) -> Result<Self, ParseFailure> {
        if text.len() > max_bytes {
            return Err(ParseFailure::new(
                None,
                ErrorCode::MessageTooLarge,
                format!("message too large: {} > {max_bytes} bytes", text.len()),
            ));
        }
        let mut envelope = Envelope::open(text)?;
        let method = envelope.take_method()?;
        let id = match &envelope.id {
            IdField::Valid(id) => id.clone(),
            IdField::Absent => {
                return Err(envelope.fail(
                    ErrorCode::InvalidRequest,
                    "notifications are not accepted: a request needs an id",
                ))
            }
            IdField::Null | IdField::Invalid => {
                return Err(envelope.fail(
                    ErrorCode::InvalidRequest,
                    "id must be a string or an integer",
                ))
            }
        };
        let params = envelope.take_params()?;
        let request = match method.as_str() {
            "peer.announce" => decode(params).map(|p: AnnounceParams| Request::Announce {
                room: p.room,
                peer_id: p.peer_id,
                capabilities: p.capabilities,
                metadata: p.metadata,
                token: p.token,
                resume: p.resume,
            }),
            "peer.offer" => decode(params).map(|p: ToSdp| Request::Offer {
                to: p.to,
                sdp: p.sdp,
            }),
            "peer.answer" => decode(params).map(|p: ToSdp| Request::Answer {
                to: p.to,
                sdp: p.sdp,
            }),
            "peer.ice_candidate" => decode(params).map(|p: ToCandidate| Request::IceCandidate {
                to: p.to,
                candidate: p.candidate,
                sdp_mid: p.sdp_mid,
                sdp_m_line_index: p.sdp_m_line_index,
            }),
            "peer.disconnect" => Ok(Request::Disconnect),
            _ => {
                return Err(envelope.fail(
                    ErrorCode::MethodNotFound,
                    format!("method not found: {method}"),
                ))
            }
        }
        .map_err(|e| envelope.fail(ErrorCode::InvalidParams, format!("invalid params: {e}")))?;
        Ok(Self { id, request })
    }
}

/// A frame the signaling server sends: a response or a notification
#[derive(Clone, Debug, PartialEq)]
pub enum ServerFrame {
    /// The answer to one request
    Response {
        /// The request's id; `None` (`"id": null`) only for errors about frames without a valid id
        id: Option<RequestId>,
        /// The `result` member, or the `error` member
        result: Result<Value, RpcError>,
    },
    /// A notification (no id)
    Notification(Notification),
}

impl ServerFrame {
    /// A successful response
    pub fn response_ok(id: RequestId, result: Value) -> Self {
        Self::Response {
            id: Some(id),
            result: Ok(result),
        }
    }

    /// An error response; `id` is `None` when the request's id could not be recovered
    pub fn response_err(id: Option<RequestId>, error: RpcError) -> Self {
        Self::Response {
            id,
            result: Err(error),
        }
    }

    /// The frame as JSON text
    pub fn to_json(&self) -> String {
        let text = match self {
            Self::Response { id, result } => {
                let (result, error) = match result {
                    Ok(value) => (Some(value), None),
                    Err(error) => (None, Some(error)),
                };
                serde_json::to_string(&ResponseEnvelope {
                    jsonrpc: JSONRPC_VERSION,
                    id: id.as_ref(),
                    result,
                    error,
                })
            }
            Self::Notification(notification) => serde_json::to_string(&NotificationEnvelope {
                jsonrpc: JSONRPC_VERSION,
                method: notification.method(),
                params: NotificationParams(notification),
            }),
        };
        // Cannot fail: every map key involved is a string.
        text.expect("server frame serializes to JSON")
    }

    /// Parses a text frame from the server
    ///
    /// Unlike [`ClientFrame::parse`] there is no size limit: an announce result lists up to a
    /// room's worth of metadata and may exceed [`MAX_FRAME_BYTES`].
    pub fn parse(text: &str) -> Result<Self, ParseFailure> {
        let mut envelope = Envelope::open(text)?;
        let id = match &envelope.id {
            IdField::Absent => return Self::parse_notification(envelope),
            IdField::Valid(id) => Some(id.clone()),
            IdField::Null => None,
            IdField::Invalid => {
                return Err(envelope.fail(
                    ErrorCode::InvalidRequest,
                    "id must be a string, an integer or null",
                ))
            }
        };
        let result = match (envelope.obj.remove("result"), envelope.obj.remove("error")) {
            (Some(_), None) if id.is_none() => {
                return Err(envelope.fail(
                    ErrorCode::InvalidRequest,
                    "a successful response needs an id",
                ))
            }
            (Some(value), None) => Ok(value),
            (None, Some(error)) => Err(RpcError::deserialize(error).map_err(|e| {
                envelope.fail(
                    ErrorCode::InvalidRequest,
                    format!("invalid error object: {e}"),
                )
            })?),
            _ => {
                return Err(envelope.fail(
                    ErrorCode::InvalidRequest,
                    "a response has exactly one of result and error",
                ))
            }
        };
        Ok(Self::Response { id, result })
    }

    fn parse_notification(mut envelope: Envelope) -> Result<Self, ParseFailure> {
        let method = envelope.take_method()?;
        let params = envelope.take_params()?;
        let notification = match method.as_str() {
            "peer.joined" => decode(params).map(Notification::Joined),
            "peer.left" => decode(params).map(|p: LeftParams| Notification::Left {
                peer_id: p.peer_id,
                reason: p.reason,
            }),
            "peer.offer" => decode(params).map(|p: FromSdp| Notification::Offer {
                from: p.from,
                sdp: p.sdp,
            }),
            "peer.answer" => decode(params).map(|p: FromSdp| Notification::Answer {
                from: p.from,
                sdp: p.sdp,
            }),
            "peer.ice_candidate" => {
                decode(params).map(|p: FromCandidate| Notification::IceCandidate {
                    from: p.from,
                    candidate: p.candidate,
                    sdp_mid: p.sdp_mid,
                    sdp_m_line_index: p.sdp_m_line_index,
                })
            }
            _ => {
                return Err(envelope.fail(
                    ErrorCode::MethodNotFound,
                    format!("method not found: {method}"),
                ))
            }
        }
        .map_err(|e| envelope.fail(ErrorCode::InvalidParams, format!("invalid params: {e}")))?;
        Ok(Self::Notification(notification))
    }
}

/// The `id` member of a frame, before deciding whether it is acceptable
enum IdField {
    Absent,
    Null,
    Valid(RequestId),
    Invalid,
}

/// A JSON object with `"jsonrpc": "2.0"`, taken apart but not yet interpreted
struct Envelope {
    obj: Map<String, Value>,
    id: IdField,
}

impl Envelope {
    /// Parses `text` as one JSON-RPC 2.0 object
    fn open(text: &str) -> Result<Self, ParseFailure> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            ParseFailure::new(None, ErrorCode::ParseError, format!("parse error: {e}"))
        })?;
        let obj = match value {
            Value::Object(obj) => obj,
            Value::Array(_) => {
                return Err(ParseFailure::new(
                    None,
                    ErrorCode::InvalidRequest,
                    "batches are not supported",
                ))
            }
            _ => {
                return Err(ParseFailure::new(
                    None,
                    ErrorCode::InvalidRequest,
                    "a frame must be a JSON object",
                ))
            }
        };
        let id = match obj.get("id") {
            None => IdField::Absent,
            Some(Value::Null) => IdField::Null,
            Some(Value::String(s)) => IdField::Valid(RequestId::String(s.clone())),
            Some(Value::Number(n)) => n
                .as_i64()
                .map_or(IdField::Invalid, |n| IdField::Valid(RequestId::Number(n))),
            Some(_) => IdField::Invalid,
        };
        let envelope = Self { obj, id };
        if envelope.obj.get("jsonrpc").and_then(Value::as_str) != Some(JSONRPC_VERSION) {
            return Err(envelope.fail(ErrorCode::InvalidRequest, "jsonrpc must be \"2.0\""));
        }
        Ok(envelope)
    }

    /// A failure carrying this frame's id, if it has a valid one
    fn fail(&self, code: ErrorCode, message: impl Into<String>) -> ParseFailure {
        let id = match &self.id {
            IdField::Valid(id) => Some(id.clone()),
            _ => None,
        };
        ParseFailure::new(id, code, message)
    }

    fn take_method(&mut self) -> Result<String, ParseFailure> {
        match self.obj.remove("method") {
            Some(Value::String(method)) => Ok(method),
            _ => Err(self.fail(ErrorCode::InvalidRequest, "method must be a string")),
        }
    }

    /// The `params` object; an absent `params` reads as `{}`
    fn take_params(&mut self) -> Result<Value, ParseFailure> {
        match self.obj.remove("params") {
            None => Ok(empty_object()),
            Some(params @ Value::Object(_)) => Ok(params),
            Some(_) => Err(self.fail(ErrorCode::InvalidParams, "params must be an object")),
        }
    }
}

fn decode<T: DeserializeOwned>(params: Value) -> Result<T, serde_json::Error> {
    T::deserialize(params)
}

/// A JSON `{}`
pub(crate) fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// Deserializes metadata that must be an object; `null` reads as `{}`
fn object_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    Ok(optional_object(d)?.unwrap_or_else(empty_object))
}

/// Deserializes optional metadata that must be an object; `null` reads as absent
fn optional_object<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(obj @ Value::Object(_)) => Ok(Some(obj)),
        Some(_) => Err(serde::de::Error::custom("metadata must be an object")),
    }
}

/// Deserializes `urls`: an array of strings, or one string
pub(crate) fn string_or_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(url) => vec![url],
        OneOrMany::Many(urls) => urls,
    })
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Deserializes a member that, when present, is kept even if it is `null`
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct AnnounceParams {
    room: RoomId,
    #[serde(default)]
    peer_id: Option<PeerId>,
    #[serde(default)]
    capabilities: Option<Capabilities>,
    #[serde(default, deserialize_with = "optional_object")]
    metadata: Option<Value>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    resume: Option<String>,
}

#[derive(Deserialize)]
struct ToSdp {
    to: PeerId,
    sdp: String,
}

#[derive(Deserialize)]
struct ToCandidate {
    to: PeerId,
    candidate: String,
    #[serde(default)]
    sdp_mid: Option<String>,
    #[serde(default)]
    sdp_m_line_index: Option<u32>,
}

#[derive(Deserialize)]
struct FromSdp {
    from: PeerId,
    sdp: String,
}

#[derive(Deserialize)]
struct FromCandidate {
    from: PeerId,
    candidate: String,
    #[serde(default)]
    sdp_mid: Option<String>,
    #[serde(default)]
    sdp_m_line_index: Option<u32>,
}

#[derive(Deserialize)]
struct LeftParams {
    peer_id: PeerId,
    reason: LeftReason,
}

#[derive(Serialize)]
struct RequestEnvelope<'a> {
    jsonrpc: &'static str,
    id: &'a RequestId,
    method: &'static str,
    params: RequestParams<'a>,
}

#[derive(Serialize)]
struct ResponseEnvelope<'a> {
    jsonrpc: &'static str,
    id: Option<&'a RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RpcError>,
}

#[derive(Serialize)]
struct NotificationEnvelope<'a> {
    jsonrpc: &'static str,
    method: &'static str,
    params: NotificationParams<'a>,
}

/// Writes a request's `params` in the contract's field order
struct RequestParams<'a>(&'a Request);

impl Serialize for RequestParams<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self.0 {
            Request::Announce {
                room,
                peer_id,
                capabilities,
                metadata,
                token,
                resume,
            } => {
                map.serialize_entry("room", room)?;
                if let Some(peer_id) = peer_id {
                    map.serialize_entry("peer_id", peer_id)?;
                }
                if let Some(capabilities) = capabilities {
                    map.serialize_entry("capabilities", capabilities)?;
                }
                if let Some(metadata) = metadata {
                    map.serialize_entry("metadata", metadata)?;
                }
                if let Some(token) = token {
                    map.serialize_entry("token", token)?;
                }
                if let Some(resume) = resume {
                    map.serialize_entry("resume", resume)?;
                }
            }
            Request::Offer { to, sdp } | Request::Answer { to, sdp } => {
                map.serialize_entry("to", to)?;
                map.serialize_entry("sdp", sdp)?;
            }
            Request::IceCandidate {
                to,
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => {
                map.serialize_entry("to", to)?;
                map.serialize_entry("candidate", candidate)?;
                map.serialize_entry("sdp_mid", sdp_mid)?;
                map.serialize_entry("sdp_m_line_index", sdp_m_line_index)?;
            }
            Request::Disconnect => {}
        }
        map.end()
    }
}

/// Writes a notification's `params` in the contract's field order
struct NotificationParams<'a>(&'a Notification);

impl Serialize for NotificationParams<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self.0 {
            Notification::Joined(info) => {
                map.serialize_entry("peer_id", &info.peer_id)?;
                map.serialize_entry("capabilities", &info.capabilities)?;
                map.serialize_entry("metadata", &info.metadata)?;
            }
            Notification::Left { peer_id, reason } => {
                map.serialize_entry("peer_id", peer_id)?;
                map.serialize_entry("reason", reason)?;
            }
            Notification::Offer { from, sdp } | Notification::Answer { from, sdp } => {
                map.serialize_entry("from", from)?;
                map.serialize_entry("sdp", sdp)?;
            }
            Notification::IceCandidate {
                from,
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => {
                map.serialize_entry("from", from)?;
                map.serialize_entry("candidate", candidate)?;
                map.serialize_entry("sdp_mid", sdp_mid)?;
                map.serialize_entry("sdp_m_line_index", sdp_m_line_index)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
    use serde_json::json;

    use super::*;

    const ID_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-";

    // The example exchange of the contract, line by line.
    const EX_ANNOUNCE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"demo","peer_id":"bob","capabilities":{"audio":true,"video":false,"data":true}}}"#;
    const EX_ANNOUNCE_RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"peer_id":"bob","room":"demo","peers":[{"peer_id":"alice","capabilities":{"audio":true,"video":true,"data":true},"metadata":{}}]}}"#;
    const EX_OFFER: &str =
        r#"{"jsonrpc":"2.0","id":2,"method":"peer.offer","params":{"to":"alice","sdp":"v=0..."}}"#;
    const EX_OFFER_RESULT: &str = r#"{"jsonrpc":"2.0","id":2,"result":{}}"#;
    const EX_OFFER_RELAYED: &str =
        r#"{"jsonrpc":"2.0","method":"peer.offer","params":{"from":"bob","sdp":"v=0..."}}"#;

    fn pid(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    fn client_err(text: &str) -> ParseFailure {
        ClientFrame::parse(text).unwrap_err()
    }

    fn server_err(text: &str) -> ParseFailure {
        ServerFrame::parse(text).unwrap_err()
    }

    fn assert_failure(f: &ParseFailure, code: ErrorCode, id: Option<RequestId>) {
        assert_eq!(f.error.error_code(), Some(code), "{f:?}");
        assert_eq!(f.id, id, "{f:?}");
    }

    #[test]
    fn contract_example_parses() {
        let announce = ClientFrame::parse(EX_ANNOUNCE).unwrap();
        assert_eq!(
            announce,
            ClientFrame {
                id: RequestId::Number(1),
                request: Request::Announce {
                    room: RoomId::new("demo").unwrap(),
                    peer_id: Some(pid("bob")),
                    capabilities: Some(Capabilities {
                        audio: true,
                        video: false,
                        data: true
                    }),
                    metadata: None,
                    token: None,
                    resume: None,
                },
            }
        );
        assert_eq!(announce.to_json(), EX_ANNOUNCE);

        let ServerFrame::Response {
            id: Some(RequestId::Number(1)),
            result: Ok(result),
        } = ServerFrame::parse(EX_ANNOUNCE_RESULT).unwrap()
        else {
            panic!("not a successful response to id 1");
        };
        let result = AnnounceResult::from_value(&result).unwrap();
        let expected = AnnounceResult::new(
            pid("bob"),
            RoomId::new("demo").unwrap(),
            vec![PeerInfo {
                peer_id: pid("alice"),
                capabilities: Capabilities {
                    audio: true,
                    video: true,
                    data: true,
                },
                metadata: json!({}),
            }],
        );
        assert_eq!(result, expected);
        // Key order inside `result` is serde_json's map order; compare as JSON values.
        let written = ServerFrame::response_ok(RequestId::Number(1), expected.to_value());
        let written: Value = serde_json::from_str(&written.to_json()).unwrap();
        assert_eq!(
            written,
            serde_json::from_str::<Value>(EX_ANNOUNCE_RESULT).unwrap()
        );

        let offer = ClientFrame::parse(EX_OFFER).unwrap();
        assert_eq!(
            offer.request,
            Request::Offer {
                to: pid("alice"),
                sdp: "v=0...".into()
            }
        );
        assert_eq!(offer.to_json(), EX_OFFER);

        let ok = ServerFrame::parse(EX_OFFER_RESULT).unwrap();
        assert_eq!(
            ok,
            ServerFrame::response_ok(RequestId::Number(2), json!({}))
        );
        assert_eq!(ok.to_json(), EX_OFFER_RESULT);

        let relayed = ServerFrame::parse(EX_OFFER_RELAYED).unwrap();
        assert_eq!(
            relayed,
            ServerFrame::Notification(Notification::Offer {
                from: pid("bob"),
                sdp: "v=0...".into()
            })
        );
        assert_eq!(relayed.to_json(), EX_OFFER_RELAYED);
    }

    #[test]
    fn every_request_and_notification_serializes_as_in_the_contract() {
        let frame = |request| {
            ClientFrame {
                id: RequestId::String("a".into()),
                request,
            }
            .to_json()
        };
        assert_eq!(
            frame(Request::IceCandidate {
                to: pid("x"),
                candidate: String::new(),
                sdp_mid: None,
                sdp_m_line_index: None
            }),
            r#"{"jsonrpc":"2.0","id":"a","method":"peer.ice_candidate","params":{"to":"x","candidate":"","sdp_mid":null,"sdp_m_line_index":null}}"#
        );
        assert_eq!(
            frame(Request::Disconnect),
            r#"{"jsonrpc":"2.0","id":"a","method":"peer.disconnect","params":{}}"#
        );
        assert_eq!(
            frame(Request::Answer {
                to: pid("x"),
                sdp: "s".into()
            }),
            r#"{"jsonrpc":"2.0","id":"a","method":"peer.answer","params":{"to":"x","sdp":"s"}}"#
        );
        assert_eq!(
            frame(Request::Announce {
                room: RoomId::new("r").unwrap(),
                peer_id: None,
                capabilities: None,
                metadata: Some(json!({"k": 1})),
                token: None,
                resume: None,
            }),
            r#"{"jsonrpc":"2.0","id":"a","method":"peer.announce","params":{"room":"r","metadata":{"k":1}}}"#
        );

        let note = |n| ServerFrame::Notification(n).to_json();
        assert_eq!(
            note(Notification::Joined(PeerInfo {
                peer_id: pid("p"),
                capabilities: Capabilities::default(),
                metadata: json!({})
            })),
            r#"{"jsonrpc":"2.0","method":"peer.joined","params":{"peer_id":"p","capabilities":{"audio":false,"video":false,"data":true},"metadata":{}}}"#
        );
        assert_eq!(
            note(Notification::Left {
                peer_id: pid("p"),
                reason: LeftReason::Timeout
            }),
            r#"{"jsonrpc":"2.0","method":"peer.left","params":{"peer_id":"p","reason":"timeout"}}"#
        );
        assert_eq!(
            note(Notification::IceCandidate {
                from: pid("p"),
                candidate: "candidate:1".into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0)
            }),
            r#"{"jsonrpc":"2.0","method":"peer.ice_candidate","params":{"from":"p","candidate":"candidate:1","sdp_mid":"0","sdp_m_line_index":0}}"#
        );
        assert_eq!(
            note(Notification::Answer {
                from: pid("p"),
                sdp: "s".into()
            }),
            r#"{"jsonrpc":"2.0","method":"peer.answer","params":{"from":"p","sdp":"s"}}"#
        );
        assert_eq!(
            ServerFrame::response_err(None, ErrorCode::ParseError.into()).to_json(),
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}"#
        );
    }

    #[test]
    fn ids_are_validated() {
        assert!(PeerId::new("a").is_ok());
        assert!(PeerId::new("Az09_.-").is_ok());
        assert!(PeerId::new("x".repeat(64)).is_ok());
        assert_eq!(PeerId::new("x".repeat(65)), Err(IdError));
        assert_eq!(PeerId::new(""), Err(IdError));
        assert_eq!(RoomId::new("a b"), Err(IdError));
        assert_eq!(RoomId::new("é"), Err(IdError));
        assert_eq!(pid("bob").to_string(), "bob");
        assert_eq!(pid("bob").as_str(), "bob");
        assert!(serde_json::from_str::<PeerId>(r#""a/b""#).is_err());
        assert_eq!(
            serde_json::from_str::<RoomId>(r#""ok""#).unwrap().as_str(),
            "ok"
        );
        assert!(pid("alice") < pid("bob"));
        assert!(pid("B") < pid("a"), "byte order");
    }

    #[test]
    fn version_2_announce_fields() {
        let text = r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"r","peer_id":"bob","token":"a.b.c","resume":"t0k"}}"#;
        let frame = ClientFrame::parse(text).unwrap();
        assert_eq!(
            frame.request,
            Request::Announce {
                room: RoomId::new("r").unwrap(),
                peer_id: Some(pid("bob")),
                capabilities: None,
                metadata: None,
                token: Some("a.b.c".into()),
                resume: Some("t0k".into()),
            }
        );
        assert_eq!(frame.to_json(), text, "params in the contract's order");
        // Version 1 frames read the new fields as absent, and `null` is absent too.
        let v1 = ClientFrame::parse(
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"r","token":null}}"#,
        )
        .unwrap();
        assert!(matches!(
            v1.request,
            Request::Announce {
                token: None,
                resume: None,
                ..
            }
        ));
        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"r","token":5}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"r","resume":{}}}"#,
        ] {
            assert_failure(
                &client_err(bad),
                ErrorCode::InvalidParams,
                Some(RequestId::Number(1)),
            );
        }
    }

    #[test]
    fn version_2_announce_result_fields() {
        let value = json!({
            "peer_id": "bob",
            "room": "r",
            "peers": [],
            "ice_servers": [
                {"urls": ["stun:127.0.0.1:3478"]},
                {"urls": "turn:127.0.0.1:3478?transport=udp", "username": "1700000000:bob", "credential": "c"}
            ],
            "resume": "tok",
            "resume_grace_s": 20,
            "resumed": true
        });
        let result = AnnounceResult::from_value(&value).unwrap();
        assert_eq!(
            result.ice_servers,
            vec![
                IceServer::new("stun:127.0.0.1:3478"),
                IceServer {
                    urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
                    username: Some("1700000000:bob".into()),
                    credential: Some("c".into()),
                }
            ]
        );
        assert_eq!(result.resume.as_deref(), Some("tok"));
        assert_eq!(result.resume_grace_s, Some(20));
        assert!(result.resumed);
        // `urls` is written as an array, absent credentials are left out.
        let mut expected = value.clone();
        expected["ice_servers"][1]["urls"] = json!(["turn:127.0.0.1:3478?transport=udp"]);
        assert_eq!(result.to_value(), expected);

        // A version 1 result: the additions are empty, and stay off the wire.
        let v1 = json!({"peer_id": "bob", "room": "r", "peers": []});
        let result = AnnounceResult::from_value(&v1).unwrap();
        assert_eq!(
            result,
            AnnounceResult::new(pid("bob"), RoomId::new("r").unwrap(), Vec::new())
        );
        assert_eq!(result.to_value(), v1);

        for bad in [
            json!({"peer_id": "a", "room": "r", "peers": [], "ice_servers": [{"username": "u"}]}),
            json!({"peer_id": "a", "room": "r", "peers": [], "ice_servers": [{"urls": [1]}]}),
            json!({"peer_id": "a", "room": "r", "peers": [], "ice_servers": {}}),
            json!({"peer_id": "a", "room": "r", "peers": [], "resume_grace_s": -1}),
            json!({"peer_id": "a", "room": "r", "peers": [], "resumed": "yes"}),
        ] {
            let err = AnnounceResult::from_value(&bad).unwrap_err();
            assert_eq!(err.error_code(), Some(ErrorCode::InvalidParams), "{bad}");
        }
    }

    #[test]
    fn error_codes_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(code.code()), Some(code));
            assert_eq!(RpcError::from(code).error_code(), Some(code));
        }
        assert_eq!(ErrorCode::from_code(-1), None);
        assert_eq!(ErrorCode::RateLimited.code(), -32005);
        assert_eq!(ErrorCode::NotAnnounced.code(), -32000);
        assert_eq!(ErrorCode::Unauthorized.code(), -32006);
        assert_eq!(
            ServerFrame::response_err(Some(RequestId::Number(4)), ErrorCode::Unauthorized.into())
                .to_json(),
            r#"{"jsonrpc":"2.0","id":4,"error":{"code":-32006,"message":"unauthorized"}}"#
        );
    }

    #[test]
    fn capabilities_default_to_data_only() {
        assert_eq!(
            Capabilities::default(),
            Capabilities {
                audio: false,
                video: false,
                data: true
            }
        );
    }

    #[test]
    fn client_frame_rejections() {
        use ErrorCode::*;
        let n1 = Some(RequestId::Number(1));

        let big = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"peer.offer","params":{{"to":"a","sdp":"{}"}}}}"#,
            "x".repeat(MAX_FRAME_BYTES)
        );
        assert_failure(&client_err(&big), MessageTooLarge, None);
        assert!(ClientFrame::parse_with_limit(&big, 2 * MAX_FRAME_BYTES).is_ok());
        assert_failure(
            &ClientFrame::parse_with_limit(EX_OFFER, 10).unwrap_err(),
            MessageTooLarge,
            None,
        );

        assert_failure(&client_err(""), ParseError, None);
        assert_failure(&client_err("{"), ParseError, None);
        assert_failure(&client_err("hello"), ParseError, None);
        assert_failure(&client_err(&format!("[{EX_OFFER}]")), InvalidRequest, None);
        assert_failure(&client_err("[]"), InvalidRequest, None);
        for scalar in ["1", "\"x\"", "null", "true"] {
            assert_failure(&client_err(scalar), InvalidRequest, None);
        }
        // A bad envelope still carries the id back when it is valid.
        assert_failure(
            &client_err(r#"{"id":1,"method":"peer.disconnect"}"#),
            InvalidRequest,
            n1.clone(),
        );
        assert_failure(
            &client_err(r#"{"jsonrpc":"1.0","id":"q","method":"peer.disconnect"}"#),
            InvalidRequest,
            Some(RequestId::String("q".into())),
        );
        assert_failure(
            &client_err(r#"{"jsonrpc":2.0,"id":1,"method":"peer.disconnect"}"#),
            InvalidRequest,
            n1.clone(),
        );
        assert_failure(
            &client_err(r#"{"jsonrpc":"2.0","id":1}"#),
            InvalidRequest,
            n1.clone(),
        );
        assert_failure(
            &client_err(r#"{"jsonrpc":"2.0","id":1,"method":7}"#),
            InvalidRequest,
            n1.clone(),
        );
        for bad_id in ["null", "1.5", "true", "{}", "[1]", "18446744073709551615"] {
            let text = format!(r#"{{"jsonrpc":"2.0","id":{bad_id},"method":"peer.disconnect"}}"#);
            assert_failure(&client_err(&text), InvalidRequest, None);
        }
        assert_failure(
            &client_err(r#"{"jsonrpc":"2.0","method":"peer.disconnect"}"#),
            InvalidRequest,
            None,
        );
        assert_failure(
            &client_err(r#"{"jsonrpc":"2.0","id":1,"method":"peer.joined","params":{}}"#),
            MethodNotFound,
            n1.clone(),
        );
        assert_failure(
            &client_err(r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#),
            MethodNotFound,
            n1.clone(),
        );

        let bad_params = [
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":[]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":null}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":""}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"a b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":5}}"#,
            r##"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"r","peer_id":"#"}}"##,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"r","capabilities":{"audio":true}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"r","capabilities":{"audio":1,"video":true,"data":true}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"r","metadata":[]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"r","metadata":"m"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.offer","params":{"to":"a"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.offer","params":{"sdp":"s"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.answer","params":{"to":"a","sdp":1}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.answer","params":{"to":"a b","sdp":"s"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.ice_candidate","params":{"to":"a"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.ice_candidate","params":{"to":"a","candidate":"c","sdp_m_line_index":-1}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.ice_candidate","params":{"to":"a","candidate":"c","sdp_m_line_index":4294967296}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.ice_candidate","params":{"to":"a","candidate":"c","sdp_mid":0}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"peer.disconnect","params":[]}"#,
        ];
        for text in bad_params {
            assert_failure(&client_err(text), InvalidParams, n1.clone());
        }
    }

    #[test]
    fn client_frame_leniencies() {
        let parse = |text| ClientFrame::parse(text).unwrap().request;
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":1,"method":"peer.disconnect"}"#),
            Request::Disconnect
        );
        assert_eq!(
            parse(r#"{"params":{"x":1},"method":"peer.disconnect","id":1,"jsonrpc":"2.0"}"#),
            Request::Disconnect
        );
        assert_eq!(
            parse(
                r#"{"jsonrpc":"2.0","id":1,"method":"peer.offer","params":{"to":"a","sdp":"s","extra":[1]}}"#
            ),
            Request::Offer {
                to: pid("a"),
                sdp: "s".into()
            }
        );
        assert_eq!(
            parse(
                r#"{"jsonrpc":"2.0","id":1,"method":"peer.ice_candidate","params":{"to":"a","candidate":""}}"#
            ),
            Request::IceCandidate {
                to: pid("a"),
                candidate: String::new(),
                sdp_mid: None,
                sdp_m_line_index: None
            }
        );
        assert_eq!(
            parse(
                r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"r","peer_id":null,"metadata":null}}"#
            ),
            Request::Announce {
                room: RoomId::new("r").unwrap(),
                peer_id: None,
                capabilities: None,
                metadata: None,
                token: None,
                resume: None,
            }
        );
        let frame = ClientFrame::parse(
            r#" {"jsonrpc":"2.0","id":"x-1","method":"peer.answer","params":{"to":"a","sdp":"v=0\r\n"}} "#,
        )
        .unwrap();
        assert_eq!(frame.id, RequestId::String("x-1".into()));
        assert_eq!(
            frame.request,
            Request::Answer {
                to: pid("a"),
                sdp: "v=0\r\n".into()
            }
        );
    }

    #[test]
    fn server_frame_parsing() {
        use ErrorCode::*;
        let parse = |text| ServerFrame::parse(text).unwrap();
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}"#),
            ServerFrame::response_err(None, ParseError.into())
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":"s","error":{"code":7,"message":"m","data":null}}"#),
            ServerFrame::response_err(
                Some(RequestId::String("s".into())),
                RpcError {
                    code: 7,
                    message: "m".into(),
                    data: Some(Value::Null)
                }
            )
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":3,"result":null}"#),
            ServerFrame::response_ok(RequestId::Number(3), Value::Null)
        );
        assert_eq!(
            parse(
                r#"{"jsonrpc":"2.0","method":"peer.left","params":{"peer_id":"p","reason":"kicked"}}"#
            ),
            ServerFrame::Notification(Notification::Left {
                peer_id: pid("p"),
                reason: LeftReason::Kicked
            })
        );
        assert_eq!(
            parse(
                r#"{"jsonrpc":"2.0","method":"peer.joined","params":{"peer_id":"p","capabilities":{"audio":true,"video":false,"data":false}}}"#
            ),
            ServerFrame::Notification(Notification::Joined(PeerInfo {
                peer_id: pid("p"),
                capabilities: Capabilities {
                    audio: true,
                    video: false,
                    data: false
                },
                metadata: json!({})
            }))
        );

        let n1 = Some(RequestId::Number(1));
        assert_failure(&server_err("{]"), ParseError, None);
        assert_failure(&server_err("[]"), InvalidRequest, None);
        assert_failure(&server_err("2"), InvalidRequest, None);
        assert_failure(
            &server_err(r#"{"id":1,"result":{}}"#),
            InvalidRequest,
            n1.clone(),
        );
        assert_failure(
            &server_err(r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":""}}"#),
            InvalidRequest,
            n1.clone(),
        );
        assert_failure(
            &server_err(r#"{"jsonrpc":"2.0","id":1}"#),
            InvalidRequest,
            n1.clone(),
        );
        assert_failure(
            &server_err(r#"{"jsonrpc":"2.0","id":null,"result":{}}"#),
            InvalidRequest,
            None,
        );
        assert_failure(
            &server_err(r#"{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":""}}"#),
            InvalidRequest,
            n1.clone(),
        );
        assert_failure(
            &server_err(r#"{"jsonrpc":"2.0","id":[],"result":{}}"#),
            InvalidRequest,
            None,
        );
        assert_failure(&server_err(r#"{"jsonrpc":"2.0"}"#), InvalidRequest, None);
        assert_failure(
            &server_err(r#"{"jsonrpc":"2.0","method":"peer.kicked","params":{}}"#),
            MethodNotFound,
            None,
        );
        assert_failure(
            &server_err(
                r#"{"jsonrpc":"2.0","method":"peer.left","params":{"peer_id":"p","reason":"bored"}}"#,
            ),
            InvalidParams,
            None,
        );
        assert_failure(
            &server_err(
                r#"{"jsonrpc":"2.0","method":"peer.joined","params":{"peer_id":"p","capabilities":{"audio":true,"video":true,"data":true},"metadata":3}}"#,
            ),
            InvalidParams,
            None,
        );
        assert_failure(
            &server_err(r#"{"jsonrpc":"2.0","method":"peer.offer","params":{"from":"","sdp":""}}"#),
            InvalidParams,
            None,
        );
    }

    #[test]
    fn announce_result_rejects_malformed_values() {
        let err = AnnounceResult::from_value(&json!({"peer_id": "a", "room": "r"})).unwrap_err();
        assert_eq!(err.error_code(), Some(ErrorCode::InvalidParams));
        assert!(AnnounceResult::from_value(&json!([])).is_err());
        assert!(
            AnnounceResult::from_value(&json!({"peer_id": "a", "room": "r", "peers": []})).is_ok()
        );
    }

    #[test]
    fn deeply_nested_input_is_rejected_without_overflow() {
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{{"room":"r","metadata":{{"a":{}1{}}}}}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_failure(&client_err(&deep), ErrorCode::ParseError, None);
        assert!(ServerFrame::parse(&"[".repeat(60_000)).is_err());
    }

    fn gen_id(g: &mut Gen) -> String {
        let len = 1 + usize::arbitrary(g) % MAX_ID_LEN;
        (0..len)
            .map(|_| char::from(*g.choose(ID_CHARS).unwrap()))
            .collect()
    }

    fn gen_value(g: &mut Gen, depth: usize) -> Value {
        let kinds = if depth == 0 { 6 } else { 8 };
        match u8::arbitrary(g) % kinds {
            0 => Value::Null,
            1 => Value::Bool(bool::arbitrary(g)),
            2 => Value::from(i64::arbitrary(g)),
            3 => Value::from(u64::arbitrary(g)),
            // Binary fractions with short decimals survive a text round trip exactly.
            4 => Value::from(f64::from(i16::arbitrary(g)) / 8.0),
            5 => Value::String(String::arbitrary(g)),
            6 => Value::Array(
                (0..usize::arbitrary(g) % 4)
                    .map(|_| gen_value(g, depth - 1))
                    .collect(),
            ),
            _ => gen_object(g, depth - 1),
        }
    }

    fn gen_object(g: &mut Gen, depth: usize) -> Value {
        Value::Object(
            (0..usize::arbitrary(g) % 4)
                .map(|_| (String::arbitrary(g), gen_value(g, depth)))
                .collect(),
        )
    }

    impl Arbitrary for PeerId {
        fn arbitrary(g: &mut Gen) -> Self {
            Self::new(gen_id(g)).unwrap()
        }
    }

    impl Arbitrary for RoomId {
        fn arbitrary(g: &mut Gen) -> Self {
            Self::new(gen_id(g)).unwrap()
        }
    }

    impl Arbitrary for Capabilities {
        fn arbitrary(g: &mut Gen) -> Self {
            Self {
                audio: bool::arbitrary(g),
                video: bool::arbitrary(g),
                data: bool::arbitrary(g),
            }
        }
    }

    impl Arbitrary for PeerInfo {
        fn arbitrary(g: &mut Gen) -> Self {
            Self {
                peer_id: PeerId::arbitrary(g),
                capabilities: Capabilities::arbitrary(g),
                metadata: gen_object(g, 2),
            }
        }
    }

    impl Arbitrary for IceServer {
        fn arbitrary(g: &mut Gen) -> Self {
            Self {
                urls: Vec::arbitrary(g),
                username: Option::arbitrary(g),
                credential: Option::arbitrary(g),
            }
        }
    }

    impl Arbitrary for AnnounceResult {
        fn arbitrary(g: &mut Gen) -> Self {
            Self {
                peer_id: PeerId::arbitrary(g),
                room: RoomId::arbitrary(g),
                peers: Vec::arbitrary(g),
                ice_servers: Vec::arbitrary(g),
                resume: Option::arbitrary(g),
                resume_grace_s: Option::arbitrary(g),
                resumed: bool::arbitrary(g),
            }
        }
    }

    impl Arbitrary for RequestId {
        fn arbitrary(g: &mut Gen) -> Self {
            if bool::arbitrary(g) {
                Self::Number(i64::arbitrary(g))
            } else {
                Self::String(String::arbitrary(g))
            }
        }
    }

    impl Arbitrary for LeftReason {
        fn arbitrary(g: &mut Gen) -> Self {
            *g.choose(&[Self::Disconnect, Self::Timeout, Self::Kicked])
                .unwrap()
        }
    }

    impl Arbitrary for Request {
        fn arbitrary(g: &mut Gen) -> Self {
            match u8::arbitrary(g) % 5 {
                0 => Self::Announce {
                    room: RoomId::arbitrary(g),
                    peer_id: Option::arbitrary(g),
                    capabilities: Option::arbitrary(g),
                    metadata: bool::arbitrary(g).then(|| gen_object(g, 2)),
                    token: Option::arbitrary(g),
                    resume: Option::arbitrary(g),
                },
                1 => Self::Offer {
                    to: PeerId::arbitrary(g),
                    sdp: String::arbitrary(g),
                },
                2 => Self::Answer {
                    to: PeerId::arbitrary(g),
                    sdp: String::arbitrary(g),
                },
                3 => Self::IceCandidate {
                    to: PeerId::arbitrary(g),
                    candidate: String::arbitrary(g),
                    sdp_mid: Option::arbitrary(g),
                    sdp_m_line_index: Option::arbitrary(g),
                },
                _ => Self::Disconnect,
            }
        }
    }

    impl Arbitrary for Notification {
        fn arbitrary(g: &mut Gen) -> Self {
            match u8::arbitrary(g) % 5 {
                0 => Self::Joined(PeerInfo::arbitrary(g)),
                1 => Self::Left {
                    peer_id: PeerId::arbitrary(g),
                    reason: LeftReason::arbitrary(g),
                },
                2 => Self::Offer {
                    from: PeerId::arbitrary(g),
                    sdp: String::arbitrary(g),
                },
                3 => Self::Answer {
                    from: PeerId::arbitrary(g),
                    sdp: String::arbitrary(g),
                },
                _ => Self::IceCandidate {
                    from: PeerId::arbitrary(g),
                    candidate: String::arbitrary(g),
                    sdp_mid: Option::arbitrary(g),
                    sdp_m_line_index: Option::arbitrary(g),
                },
            }
        }
    }

    impl Arbitrary for RpcError {
        fn arbitrary(g: &mut Gen) -> Self {
            Self {
                code: i64::arbitrary(g),
                message: String::arbitrary(g),
                data: bool::arbitrary(g).then(|| gen_value(g, 2)),
            }
        }
    }

    impl Arbitrary for ClientFrame {
        fn arbitrary(g: &mut Gen) -> Self {
            Self {
                id: RequestId::arbitrary(g),
                request: Request::arbitrary(g),
            }
        }
    }

    impl Arbitrary for ServerFrame {
        fn arbitrary(g: &mut Gen) -> Self {
            match u8::arbitrary(g) % 3 {
                0 => Self::response_ok(RequestId::arbitrary(g), gen_value(g, 3)),
                1 => Self::response_err(Option::arbitrary(g), RpcError::arbitrary(g)),
                _ => Self::Notification(Notification::arbitrary(g)),
            }
        }
    }

    const JUNK: &[u8] = b"{}[]\",:0\\ ";

    /// Applies byte edits (flip, delete, insert, truncate) to `text`
    fn mutate(text: &str, edits: &[(u16, u8)]) -> String {
        let mut bytes = text.as_bytes().to_vec();
        for &(at, byte) in edits {
            if bytes.is_empty() {
                break;
            }
            let at = usize::from(at) % bytes.len();
            match byte % 4 {
                0 => bytes[at] ^= byte | 1,
                1 => {
                    bytes.remove(at);
                }
                2 => bytes.insert(at, JUNK[usize::from(byte) % JUNK.len()]),
                _ => bytes.truncate(at),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn check(tests: u64) -> QuickCheck {
        QuickCheck::new().tests(tests)
    }

    #[test]
    fn prop_client_frames_round_trip() {
        fn prop(frame: ClientFrame) -> TestResult {
            let text = frame.to_json();
            if text.len() > MAX_FRAME_BYTES {
                return TestResult::discard();
            }
            TestResult::from_bool(ClientFrame::parse(&text) == Ok(frame))
        }
        check(2000).quickcheck(prop as fn(ClientFrame) -> TestResult);
    }

    #[test]
    fn prop_server_frames_round_trip() {
        fn prop(frame: ServerFrame) -> bool {
            ServerFrame::parse(&frame.to_json()) == Ok(frame)
        }
        check(2000).quickcheck(prop as fn(ServerFrame) -> bool);
    }

    #[test]
    fn prop_announce_results_round_trip() {
        fn prop(result: AnnounceResult) -> bool {
            let through_text = ServerFrame::response_ok(RequestId::Number(1), result.to_value());
            let Ok(ServerFrame::Response {
                result: Ok(value), ..
            }) = ServerFrame::parse(&through_text.to_json())
            else {
                return false;
            };
            AnnounceResult::from_value(&result.to_value()) == Ok(result.clone())
                && AnnounceResult::from_value(&value) == Ok(result)
        }
        check(500).quickcheck(prop as fn(AnnounceResult) -> bool);
    }

    #[test]
    fn prop_mutated_announce_results_never_panic() {
        fn prop(result: AnnounceResult, edits: Vec<(u16, u8)>) -> bool {
            let text = serde_json::to_string(&result).unwrap();
            if let Ok(value) = serde_json::from_str::<Value>(&mutate(&text, &edits)) {
                let _ = AnnounceResult::from_value(&value);
            }
            true
        }
        check(1000).quickcheck(prop as fn(AnnounceResult, Vec<(u16, u8)>) -> bool);
    }

    #[test]
    fn prop_arbitrary_text_never_panics() {
        fn prop(text: String, bytes: Vec<u8>) -> bool {
            let lossy = String::from_utf8_lossy(&bytes);
            for t in [text.as_str(), &lossy] {
                let _ = ClientFrame::parse(t);
                let _ = ServerFrame::parse(t);
            }
            true
        }
        check(2000).quickcheck(prop as fn(String, Vec<u8>) -> bool);
    }

    #[test]
    fn prop_mutated_frames_never_panic() {
        fn prop(client: ClientFrame, server: ServerFrame, edits: Vec<(u16, u8)>) -> bool {
            for text in [client.to_json(), server.to_json()] {
                let mutated = mutate(&text, &edits);
                // A failure must still be answerable.
                if let Err(failure) = ClientFrame::parse(&mutated) {
                    let _ = failure.into_response().to_json();
                }
                if let Err(failure) = ServerFrame::parse(&mutated) {
                    let _ = failure.into_response().to_json();
                }
            }
            true
        }
        check(2000).quickcheck(prop as fn(ClientFrame, ServerFrame, Vec<(u16, u8)>) -> bool);
    }
}
