//! The small slice of HTTP/1.1 the server speaks: reading an upgrade request's head and writing
//! short JSON refusals. Parsing is bounded (size and header count) and never panics on garbage.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request head accepted; browsers send well under 2 KiB.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 48;

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: Option<String>,
    /// The minor HTTP version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    headers: Vec<(String, String)>,
    /// Bytes read past the head (a client may pipeline its first frame); handed to the WebSocket.
    pub rest: Vec<u8>,
}

impl RequestHead {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// How many times a header appears.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count()
    }

    /// Whether a comma-separated header contains `token` (case-insensitive), e.g.
    /// `Connection: keep-alive, Upgrade`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

#[derive(Debug)]
pub enum HeadError {
    /// The peer closed or reset before sending a full head: nothing to answer.
    Closed,
    Malformed,
    TooLarge,
}

/// Reads one request head. Bounded by [`MAX_HEAD_BYTES`].
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<RequestHead, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = match target.split_once('?') {
                    Some((p, q)) => (p.to_string(), Some(q.to_string())),
                    None => (target.to_string(), None),
                };
                let headers = req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                return Ok(RequestHead {
                    method: req.method.unwrap_or("").to_string(),
                    version: req.version.unwrap_or(0),
                    path,
                    query,
                    headers,
                    rest: buf[len..].to_vec(),
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => continue,
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError::TooLarge)
            }
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

/// A complete `Connection: close` response with a JSON body `{"error":message,"code":code}`.
pub fn json_response(
    status: u16,
    code: &str,
    message: &str,
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    let body = format!(
        r#"{{"error":{},"code":{}}}"#,
        serde_json::Value::from(message),
        serde_json::Value::from(code)
    );
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    for (name, value) in extra_headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// A complete `Connection: close` response with any body; `head_only` leaves the body out (for
/// `HEAD` requests) but keeps its `Content-Length`.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    extra_headers: &[(&str, &str)],
    head_only: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    )
    .into_bytes();
    for (name, value) in extra_headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// The `101 Switching Protocols` answer to a valid upgrade, echoing the chosen subprotocol.
pub fn switching_protocols(accept_key: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n"
    );
    if let Some(protocol) = protocol {
        out.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| {
            percent_encoding::percent_decode_str(&value.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_a_head_and_keeps_the_rest() {
        let raw = b"GET /ws?token=a%20b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\r\nEXTRA";
        let head = read_head(&mut &raw[..]).await.unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/ws");
        assert_eq!(head.query.as_deref(), Some("token=a%20b"));
        assert!(head.header_has_token("connection", "upgrade"));
        assert_eq!(head.header("HOST"), Some("x"));
        assert_eq!(head.rest, b"EXTRA");
    }

    #[tokio::test]
    async fn refuses_garbage_and_oversized_heads() {
        assert!(matches!(
            read_head(&mut &b"\x16\x03\x01garbage\r\n\r\n"[..]).await,
            Err(HeadError::Malformed)
        ));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert!(matches!(read_head(&mut big.as_bytes()).await, Err(HeadError::TooLarge)));
        assert!(matches!(read_head(&mut &b"GET / HT"[..]).await, Err(HeadError::Closed)));
    }

    #[test]
    fn json_responses_are_well_formed() {
        let r = String::from_utf8(json_response(401, "TOKEN_MISSING", "say \"hi\"", &[])).unwrap();
        assert!(r.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        let body = r.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], "TOKEN_MISSING");
        assert!(r.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
