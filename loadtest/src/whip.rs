//! The HTTP side of a broadcast's clients: a WHIP publisher (RFC 9725) or a WHEP player
//! `POST`s its offer with a bearer token, follows a `307` to another node (an origin sends
//! its players to an edge), and ends its session with a `DELETE` on the `Location`.

use proto::messages::ClientMessage;
use tokio::sync::mpsc;

use crate::http::{self, Reply, Url};
use crate::signal::SignalError;

/// Redirects followed at most (an origin sends a player to an edge: one).
const MAX_REDIRECTS: usize = 3;

/// A started session: where to `DELETE` it.
#[derive(Debug)]
pub struct Session {
    pub resource: Url,
    token: String,
}

/// `POST` an SDP offer to `endpoint`; the answer and the session.
pub async fn offer(endpoint: Url, token: &str, sdp: &str) -> Result<(String, Session), SignalError> {
    let mut url = endpoint;
    let origin = url.host_port.clone();
    for _ in 0..=MAX_REDIRECTS {
        let bearer = format!("Bearer {token}");
        let header = url.host_port == origin;
        let mut headers = vec![("Content-Type", "application/sdp")];
        // As a browser does, the token is not sent on to another node: the redirect
        // carries it in its URL.
        if header {
            headers.push(("Authorization", bearer.as_str()));
        }
        let reply = http::request("POST", &url, &headers, sdp).await?;
        match reply.status {
            201 => {
                let location = location(&reply)?;
                let resource = url.join(location).map_err(SignalError::Protocol)?;
                return Ok((reply.body, Session { resource, token: token.to_string() }));
            }
            307 | 308 => url = url.join(location(&reply)?).map_err(SignalError::Protocol)?,
            // The node at its load budget (ADR 0020): a refusal, not a failure.
            503 if reply.header("retry-after").is_some() => {
                let why = reply.body.trim().chars().take(200).collect::<String>();
                return Err(SignalError::NodeFull(why));
            }
            status => {
                let why = reply.body.trim().chars().take(200).collect::<String>();
                return Err(SignalError::JoinRefused(format!(
                    "POST {} answered {status}: {why}",
                    url.target
                )));
            }
        }
    }
    Err(SignalError::Protocol(format!("more than {MAX_REDIRECTS} redirects")))
}

fn location(reply: &Reply) -> Result<&str, SignalError> {
    reply
        .header("location")
        .ok_or_else(|| SignalError::Protocol(format!("HTTP {} without a Location", reply.status)))
}

impl Session {
    /// End the session (best effort: the node also ends it when the media stops). The
    /// token goes in the header, as a player page sends it (docs/protocol.md).
    pub async fn end(&self) {
        let bearer = format!("Bearer {}", self.token);
        let _ = http::request("DELETE", &self.resource, &[("Authorization", bearer.as_str())], "").await;
    }
}

/// Carry a client's negotiation: its first offer goes to `endpoint`, and `answered` gets
/// the answer (or the refusal); the session is ended when the client leaves or the
/// generator lets go of it.
pub fn run(
    endpoint: Url,
    token: String,
    mut outgoing: mpsc::UnboundedReceiver<ClientMessage>,
    answered: impl FnOnce(Result<String, SignalError>) + Send + 'static,
) {
    tokio::spawn(async move {
        let sdp = loop {
            match outgoing.recv().await {
                Some(ClientMessage::Offer { sdp, .. }) => break sdp,
                Some(_) => continue,
                None => return,
            }
        };
        let session = match offer(endpoint, &token, &sdp).await {
            Ok((answer, session)) => {
                answered(Ok(answer));
                session
            }
            Err(e) => return answered(Err(e)),
        };
        // Nothing else is negotiated over HTTP: wait for the leave (or the end of the run).
        while let Some(m) = outgoing.recv().await {
            if matches!(m, ClientMessage::Leave) {
                break;
            }
        }
        session.end().await;
    });
}
