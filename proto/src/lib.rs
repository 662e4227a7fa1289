//! Huiyi's signaling protocol as data: the WebSocket messages of docs/protocol.md, the
//! claims of an access token (HS256) and the mapping from a tile's size to a simulcast
//! quality. One definition, shared by the server and the load generator; no media code.

pub mod messages;
pub mod quality;
pub mod token;
pub mod turn;
