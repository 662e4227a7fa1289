//! Talking in a room besides its media: chat, raised hands and reactions (docs/protocol.md,
//! Talking). Each room keeps its last chat lines for those who join later, who has a hand
//! up, and one bus that every connection of the room listens to, so that everyone sees
//! the same order.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;

use crate::protocol::{ChatLine, MAX_CHAT_CHARS, REACTIONS, ServerMessage};

/// Chat lines a room keeps for those who join later.
pub const KEPT_LINES: usize = 50;
/// Messages a connection that falls behind may have waiting before it misses some.
const BUS_DEPTH: usize = 256;
/// Chat lines, hands and reactions one connection may send in [`TALK_WINDOW`].
pub const TALK_PER_WINDOW: u32 = 10;
pub const TALK_WINDOW: Duration = Duration::from_secs(10);

/// What a participant said to the room.
pub enum Said {
    Chat(String),
    Hand(bool),
    Reaction(String),
}

/// A room's talk: its last lines, raised hands and bus.
pub struct Talk {
    lines: VecDeque<ChatLine>,
    next_seq: u64,
    hands: BTreeSet<String>,
    bus: broadcast::Sender<ServerMessage>,
}

impl Default for Talk {
    fn default() -> Self {
        Self {
            lines: VecDeque::new(),
            next_seq: 1,
            hands: BTreeSet::new(),
            bus: broadcast::channel(BUS_DEPTH).0,
        }
    }
}

/// What a participant joining now gets: the bus from here on, and what came before.
pub struct Heard {
    pub bus: broadcast::Receiver<ServerMessage>,
    pub lines: Vec<ChatLine>,
    pub hands: Vec<String>,
}

impl Talk {
    /// Listen from now on; the lines and hands so far come with it (taken together, so
    /// nothing is missed or seen twice).
    pub fn listen(&self) -> Heard {
        Heard {
            bus: self.bus.subscribe(),
            lines: self.lines.iter().cloned().collect(),
            hands: self.hands.iter().cloned().collect(),
        }
    }

    /// Tell the room what `participant_id` said (already checked).
    pub fn say(&mut self, participant_id: &str, name: &str, said: Said) {
        let message = match said {
            Said::Chat(text) => {
                let at = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let line = ChatLine {
                    seq: self.next_seq,
                    participant_id: participant_id.into(),
                    name: name.into(),
                    text,
                    at,
                };
                self.next_seq += 1;
                if self.lines.len() == KEPT_LINES {
                    self.lines.pop_front();
                }
                self.lines.push_back(line.clone());
                ServerMessage::Chat(line)
            }
            Said::Hand(raised) => {
                let changed = if raised {
                    self.hands.insert(participant_id.to_string())
                } else {
                    self.hands.remove(participant_id)
                };
                if !changed {
                    return;
                }
                ServerMessage::HandRaised { participant_id: participant_id.into(), raised }
            }
            Said::Reaction(emoji) => ServerMessage::Reaction { participant_id: participant_id.into(), emoji },
        };
        // Nobody listening is no error: the room may be between connections.
        let _ = self.bus.send(message);
    }

    /// Tell the room something besides talk (what a host did).
    pub fn announce(&self, message: ServerMessage) {
        let _ = self.bus.send(message);
    }

    /// A participant left: its hand goes down with it (the others were told it left).
    pub fn gone(&mut self, participant_id: &str) {
        self.hands.remove(participant_id);
    }
}

/// A chat line as it will be kept: trimmed, not empty, at most [`MAX_CHAT_CHARS`]
/// characters and no control characters but newlines and tabs.
pub fn checked_chat(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("an empty chat line".into());
    }
    let chars = text.chars().count();
    if chars > MAX_CHAT_CHARS {
        return Err(format!("chat lines are limited to {MAX_CHAT_CHARS} characters; this has {chars}"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err("a chat line with control characters".into());
    }
    Ok(text.to_string())
}

pub fn checked_reaction(emoji: &str) -> Result<String, String> {
    if REACTIONS.contains(&emoji) {
        Ok(emoji.to_string())
    } else {
        Err(format!("reactions are one of {}", REACTIONS.join(" ")))
    }
}

/// One connection's allowance of talk messages.
pub struct TalkLimit {
    window_start: Instant,
    count: u32,
}

impl Default for TalkLimit {
    fn default() -> Self {
        Self { window_start: Instant::now(), count: 0 }
    }
}

impl TalkLimit {
    /// Whether one more talk message may go now.
    pub fn allow(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window_start) >= TALK_WINDOW {
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        self.count <= TALK_PER_WINDOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_listener_gets_the_last_lines_then_what_follows_in_order() {
        let mut talk = Talk::default();
        for i in 0..60 {
            talk.say("PA_a", "Ana", Said::Chat(format!("line {i}")));
        }
        talk.say("PA_b", "Bo", Said::Hand(true));
        let mut heard = talk.listen();
        assert_eq!(heard.lines.len(), KEPT_LINES);
        assert_eq!(heard.lines[0].text, "line 10", "the oldest kept");
        assert!(heard.lines.windows(2).all(|w| w[1].seq == w[0].seq + 1), "numbered in order");
        assert_eq!(heard.hands, vec!["PA_b".to_string()]);
        talk.say("PA_b", "Bo", Said::Chat("after".into()));
        talk.say("PA_b", "Bo", Said::Hand(true));
        talk.say("PA_b", "Bo", Said::Hand(false));
        let first = heard.bus.try_recv().expect("the next line");
        assert!(matches!(first, ServerMessage::Chat(ref l) if l.seq == 61 && l.text == "after"));
        let second = heard.bus.try_recv().expect("the hand going down (raising it twice told once)");
        assert!(matches!(second, ServerMessage::HandRaised { raised: false, .. }));
        assert!(heard.bus.try_recv().is_err());
    }

    #[test]
    fn chat_lines_and_reactions_are_checked() {
        assert_eq!(checked_chat("  hello \n").as_deref(), Ok("hello"));
        assert!(checked_chat("   ").is_err());
        assert!(checked_chat(&"x".repeat(MAX_CHAT_CHARS + 1)).is_err());
        assert!(checked_chat(&"é".repeat(MAX_CHAT_CHARS)).is_ok(), "characters, not bytes");
        assert!(checked_chat("bell\u{7}").is_err());
        assert!(checked_reaction("👍").is_ok());
        assert!(checked_reaction("<script>").is_err());
    }

    #[test]
    fn talk_is_limited_per_window() {
        let mut limit = TalkLimit::default();
        let now = Instant::now();
        assert!((0..TALK_PER_WINDOW).all(|_| limit.allow(now)));
        assert!(!limit.allow(now));
        assert!(limit.allow(now + TALK_WINDOW));
    }
}
