//! Server-Sent Events framing: the fixed events every chatgate stream uses.

/// The first bytes of every stream: EventSource clients reconnect after one second (the
/// browser default is three), carrying the last `id:` they saw as `Last-Event-ID`.
pub const RETRY: &[u8] = b"retry: 1000\n\n";
/// The end of the stream, after the last data frame.
pub const DONE: &[u8] = b"data: [DONE]\n\n";
pub const CLOSE: &[u8] = b"event: close\ndata: close\n\n";
/// A comment: ignored by clients, it keeps proxies from closing a quiet connection.
pub const HEARTBEAT: &[u8] = b": keep-alive\n\n";
