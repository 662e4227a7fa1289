//! A minimal HTTP/1.1 client: one request per connection, which is all the generator needs
//! (a token, a health check, WHIP and WHEP offers and their `DELETE`s), not an HTTP stack.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::signal::SignalError;

/// How long a request may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Replies larger than this are refused (an SDP answer is a few KiB).
const MAX_REPLY: usize = 256 * 1024;

/// An `http://host:port/path?query` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host_port: String,
    /// The path and query, starting with `/`.
    pub target: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("not an http:// URL: {url}"))?;
        let (host_port, target) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host_port.is_empty() {
            return Err(format!("no host in {url}"));
        }
        Ok(Self { host_port: host_port.to_string(), target: target.to_string() })
    }

    /// A `Location` header's URL: absolute, or a path on this URL's host.
    pub fn join(&self, location: &str) -> Result<Self, String> {
        if location.starts_with('/') {
            Ok(Self { host_port: self.host_port.clone(), target: location.to_string() })
        } else {
            Self::parse(location)
        }
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One request: `headers` are sent as given, `body` with its length.
pub async fn request(
    method: &str,
    url: &Url,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply, SignalError> {
    let host_port = &url.host_port;
    let unreachable = |e| SignalError::Unreachable(host_port.to_string(), e);
    let exchange = async {
        let mut stream = TcpStream::connect(host_port).await.map_err(unreachable)?;
        let mut head =
            format!("{method} {} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n", url.target);
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.map_err(unreachable)?;
        stream.write_all(body.as_bytes()).await.map_err(unreachable)?;
        let mut raw = Vec::new();
        let mut limited = (&mut stream).take(MAX_REPLY as u64 + 1);
        limited.read_to_end(&mut raw).await.map_err(unreachable)?;
        if raw.len() > MAX_REPLY {
            return Err(SignalError::Protocol(format!("a reply from {host_port} over {MAX_REPLY} bytes")));
        }
        parse_reply(&raw)
    };
    tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| SignalError::Timeout(TIMEOUT))?
}

/// `s` as a URL path segment or query value (RFC 3986: unreserved characters as they are).
pub fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn parse_reply(raw: &[u8]) -> Result<Reply, SignalError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| SignalError::Protocol("bad HTTP reply".into()))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SignalError::Protocol("an HTTP reply without a status".into()))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_vec() };
    Ok(Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// A chunked body's bytes (RFC 9112 section 7.1); what cannot be read ends it.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line) = body.windows(2).position(|w| w == b"\r\n") {
        let size =
            std::str::from_utf8(&body[..line]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let rest = &body[line + 2..];
        let Some(n) = size.filter(|n| *n > 0 && rest.len() >= *n) else { break };
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_locations() {
        let u = Url::parse("http://127.0.0.1:7700/whep/a%20b?access_token=x").unwrap();
        assert_eq!(u.host_port, "127.0.0.1:7700");
        assert_eq!(u.target, "/whep/a%20b?access_token=x");
        assert_eq!(Url::parse("http://h:1").unwrap().target, "/");
        assert!(Url::parse("https://h/").is_err());
        assert!(Url::parse("http:///x").is_err());
        let relative = u.join("/whep/r/PA_1").unwrap();
        assert_eq!(
            (relative.host_port.as_str(), relative.target.as_str()),
            ("127.0.0.1:7700", "/whep/r/PA_1")
        );
        let absolute = u.join("http://127.0.0.1:7790/whep/r?access_token=t").unwrap();
        assert_eq!(absolute.host_port, "127.0.0.1:7790");
    }

    #[test]
    fn replies_with_headers_and_chunks() {
        let r = parse_reply(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://e/whep/r\r\n\r\n").unwrap();
        assert_eq!((r.status, r.header("location")), (307, Some("http://e/whep/r")));
        let r = parse_reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, "abcde");
        // A chunk may end inside a character.
        let r = parse_reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n\xe7\r\n2\r\n\x89\xa9\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, "\u{7269}");
        assert!(parse_reply(b"garbage").is_err());
    }
}
