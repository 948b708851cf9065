//! Filtering list results (`tools/list`, `prompts/list`, `resources/list`) down to what the
//! caller may use, in JSON answers and in SSE streams. SSE is filtered event by event, so the
//! stream is never held back beyond the event being read.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use warden_core::authorize::Target;
use warden_core::mcp;

use super::reply::{Body, BoxError};

/// Largest SSE event or JSON answer read whole for filtering; a larger one ends the answer
/// (fail closed) rather than reaching the caller unfiltered.
pub const MAX_FILTERED_BYTES: usize = 16 * 1024 * 1024;

/// Whether the caller may use one entry of a list.
pub trait Allows: Send + Sync + 'static {
    /// Decides `method` on `target` for the caller of the request being answered.
    fn allows(&self, method: &str, target: Target<'_>) -> bool;
}

/// The kinds of list answer to filter in one response, and who asks. Any message of the
/// response carrying such a list is filtered, whatever its id: matching ids would let a caller
/// slip past with an id the upstream rewrites (`-0` answered as `0`).
pub struct Lists<A> {
    /// The list kinds.
    pub kinds: Vec<mcp::ListFilter>,
    /// The caller's decisions.
    pub allows: A,
}

impl<A: Allows> Lists<A> {
    /// Removes the entries the caller may not use from `message`, if it answers a list
    /// request. Returns whether it did.
    fn filter_message(&self, message: &mut Value) -> bool {
        if let Value::Array(batch) = message {
            let mut changed = false;
            for m in batch {
                changed |= self.filter_message(m);
            }
            return changed;
        }
        let mut changed = false;
        for &mcp::ListFilter { array, key, decided_by } in &self.kinds {
            let Some(items) = message.get_mut("result").and_then(|r| r.get_mut(array)).and_then(Value::as_array_mut)
            else {
                continue;
            };
            items.retain(|item| {
                let name = item.get(key).and_then(Value::as_str);
                match mcp::target(decided_by, name) {
                    Ok(Some(target)) => self.allows.allows(decided_by, target),
                    _ => false,
                }
            });
            changed = true;
        }
        changed
    }

    /// Filters a whole JSON answer. `None` when it is not JSON (it is then refused).
    pub fn json(&self, bytes: &[u8]) -> Option<Bytes> {
        let mut value: Value = serde_json::from_slice(bytes).ok()?;
        if self.filter_message(&mut value) {
            Some(value.to_string().into())
        } else {
            Some(Bytes::copy_from_slice(bytes))
        }
    }

    /// Filters one SSE event (with its terminating blank line); events that carry no list
    /// answer pass unchanged.
    fn sse_event(&self, event: &[u8]) -> Bytes {
        let unchanged = || Bytes::copy_from_slice(event);
        let Ok(text) = std::str::from_utf8(event) else {
            return unchanged();
        };
        let (mut data, mut has_data, mut fields) = (String::new(), false, Vec::new());
        for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            if field == "data" {
                if has_data {
                    data.push('\n');
                }
                data.push_str(value);
                has_data = true;
            } else {
                fields.push(line);
            }
        }
        let Some(mut value) = has_data.then(|| serde_json::from_str::<Value>(&data).ok()).flatten() else {
            return unchanged();
        };
        if !self.filter_message(&mut value) {
            return unchanged();
        }
        let mut out = String::with_capacity(event.len());
        for f in fields {
            out.push_str(f);
            out.push('\n');
        }
        out.push_str("data: ");
        out.push_str(&value.to_string());
        out.push_str("\n\n");
        out.into()
    }
}

/// Where the first complete SSE event in `buf` ends (after its blank line), if there is one.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        let rest = &buf[i..];
        for terminator in [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"] {
            if rest.starts_with(terminator) {
                return Some(i + terminator.len());
            }
        }
        i += 1;
    }
    None
}

struct SseState<B, A> {
    body: B,
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no event end (rescanning it would be quadratic).
    scanned: usize,
    done: bool,
    lists: Arc<Lists<A>>,
}

/// Streams `body` through, filtering list answers event by event.
pub fn sse<B, A>(lists: Arc<Lists<A>>, body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
    A: Allows,
{
    let state = SseState { body, buf: Vec::new(), scanned: 0, done: false, lists };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            // A terminator may straddle the previous scan's end: step back over its length.
            let from = st.scanned.saturating_sub(3).min(st.buf.len());
            if let Some(end) = event_end(&st.buf[from..]).map(|e| e + from) {
                let event: Vec<u8> = st.buf.drain(..end).collect();
                st.scanned = 0;
                return Some((Ok(Frame::data(st.lists.sse_event(&event))), st));
            }
            st.scanned = st.buf.len();
            if st.done {
                if st.buf.is_empty() {
                    return None;
                }
                // An unterminated last event is filtered like any other.
                let rest = std::mem::take(&mut st.buf);
                st.scanned = 0;
                return Some((Ok(Frame::data(st.lists.sse_event(&rest))), st));
            }
            match st.body.frame().await {
                None => st.done = true,
                Some(Err(e)) => {
                    st.done = true;
                    st.buf.clear();
                    return Some((Err(e.into()), st));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if st.buf.len() + data.len() > MAX_FILTERED_BYTES {
                            st.done = true;
                            st.buf.clear();
                            let e: BoxError = format!("an SSE event exceeds {MAX_FILTERED_BYTES} bytes").into();
                            return Some((Err(e), st));
                        }
                        st.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use serde_json::json;

    struct OnlyEcho;
    impl Allows for OnlyEcho {
        fn allows(&self, method: &str, target: Target<'_>) -> bool {
            method == "tools/call" && target == Target::Tool("echo")
        }
    }

    fn lists() -> Arc<Lists<OnlyEcho>> {
        Arc::new(Lists { kinds: vec![mcp::list_filter("tools/list").unwrap()], allows: OnlyEcho })
    }

    const LIST: &str =
        r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo"},{"name":"delete"},{"nameless":1}]}}"#;

    #[test]
    fn json_answers_keep_only_allowed_entries() {
        let out: Value = serde_json::from_slice(&lists().json(LIST.as_bytes()).unwrap()).unwrap();
        assert_eq!(out["result"]["tools"], json!([{"name": "echo"}]));
        // Whatever the id says: a list in the answer is filtered.
        let other = LIST.replace("\"id\":2", "\"id\":0");
        let out: Value = serde_json::from_slice(&lists().json(other.as_bytes()).unwrap()).unwrap();
        assert_eq!(out["result"]["tools"], json!([{"name": "echo"}]));
        let plain = r#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#;
        assert_eq!(lists().json(plain.as_bytes()).unwrap(), plain.as_bytes());
        assert!(lists().json(b"<html>").is_none());
    }

    #[tokio::test]
    async fn sse_answers_are_filtered_event_by_event() {
        let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#;
        let stream =
            format!("event: message\r\ndata: {progress}\r\n\r\n: comment\n\nid: 9\nevent: message\ndata: {LIST}\n\n");
        let body = sse(lists(), Full::new(Bytes::from(stream)));
        let out = body.collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with(&format!("event: message\r\ndata: {progress}\r\n\r\n: comment\n\n")), "{text}");
        let last = text.rsplit("\n\n").nth(1).unwrap();
        assert!(last.starts_with("id: 9\nevent: message\ndata: "), "{last}");
        let data: Value = serde_json::from_str(last.rsplit_once("data: ").unwrap().1).unwrap();
        assert_eq!(data["result"]["tools"], json!([{"name": "echo"}]));
    }

    #[tokio::test]
    async fn an_event_split_across_reads_and_data_lines_is_still_filtered() {
        // Split between JSON tokens: SSE joins data lines with a newline, which JSON allows there.
        let (head, tail) = LIST.split_at(LIST.find("{\"tools\"").unwrap());
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from(format!("data: {head}")))),
            Ok(Frame::data(Bytes::from(format!("\ndata: {tail}")))),
            Ok(Frame::data(Bytes::from_static(b"\n"))),
        ];
        // No terminating blank line: the last event is filtered at the end of the stream.
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let out = sse(lists(), body).collect().await.unwrap().to_bytes();
        let data: Value =
            serde_json::from_str(std::str::from_utf8(&out).unwrap().trim().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["result"]["tools"], json!([{"name": "echo"}]));
    }
}
