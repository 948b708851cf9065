//! Raw HTTP exchanges with an agent's gateway, for what the MCP SDK client hides (status codes,
//! challenges, session ids).

/// A raw HTTP exchange with the gateway (for what the SDK client hides).
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// `WWW-Authenticate`.
    pub challenge: String,
    /// `Mcp-Session-Id`.
    pub session: Option<String>,
    /// `Retry-After`.
    pub retry_after: Option<String>,
    /// The body, as text.
    pub body: String,
}

/// POSTs `body` to the gateway at `url` with `token` as a bearer token and `headers`.
pub fn post(url: &str, token: Option<&str>, headers: &[(&str, &str)], body: &str) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = agent
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut response = request.send(body).expect("the gateway answers");
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (challenge, session) = (header("www-authenticate").unwrap_or_default(), header("mcp-session-id"));
    let retry_after = header("retry-after");
    Answer {
        status: response.status().as_u16(),
        challenge,
        session,
        retry_after,
        body: response.body_mut().read_to_string().unwrap(),
    }
}
