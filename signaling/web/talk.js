// Talking besides media (docs/protocol.md, Talking): the chat, raised hands, reactions on
// the tiles, the list of people, and for a host the controls beside each person and for
// the whole room (docs/protocol.md, Host controls), with what hosts did told to all.
// The meeting (app.js) gives it how to send and how to find a participant's tile and name.

const $ = (id) => document.getElementById(id);

let ctx = null;             // {send, me(), host(), tileOf(participantId), people() -> [{id, name, me, micOff}]}
const hands = new Set();    // participant ids with a hand up
let lines = [];             // the chat so far: {seq, participantId, name, text, at}
let unread = 0;

export function initTalk(context) {
  ctx = context;
  $("chat-form").onsubmit = (e) => {
    e.preventDefault();
    const input = $("chat-text");
    const text = input.value.trim();
    if (!text) return;
    if (ctx.send({ type: "chat", text })) input.value = "";
  };
  $("raise-hand").onclick = () => {
    const me = ctx.me();
    if (me) ctx.send({ type: "raiseHand", raised: !hands.has(me) });
  };
  for (const b of document.querySelectorAll("#reactions button")) {
    b.onclick = () => ctx.send({ type: "reaction", emoji: b.textContent });
  }
  $("mute-all").onclick = () => ctx.send({ type: "muteAll" });
  $("end-meeting").onclick = () => {
    if (confirm("End the meeting for everyone?")) ctx.send({ type: "endMeeting" });
  };
  $("toggle-side").onclick = () => {
    const side = $("side");
    side.hidden = !side.hidden;
    $("toggle-side").setAttribute("aria-pressed", String(!side.hidden));
    if (!side.hidden) { unread = 0; showUnread(); }
  };
}

// A new meeting: nothing said yet (what the room said before we came follows `joined`
// as the usual messages).
export function resetTalk() {
  lines = [];
  notices.length = 0;
  $("notice").hidden = true;
  hands.clear();
  $("chat-lines").replaceChildren();
  unread = 0;
  showUnread();
  renderHands();
}

export function onChat(line) {
  // A resume sends the last lines again: only new ones are unread.
  if (addLine(line) && $("side").hidden) { unread++; showUnread(); }
}

// After a resume the hands up now follow: those lowered meanwhile must go down.
export function clearHands() {
  hands.clear();
  renderHands();
}

export function onHand(participantId, raised) {
  if (raised) hands.add(participantId); else hands.delete(participantId);
  renderHands();
}

// A reaction floats over the sender's tile for three seconds.
export function onReaction(participantId, emoji) {
  const tile = ctx.tileOf(participantId);
  if (!tile) return;
  const el = document.createElement("span");
  el.className = "reaction";
  el.textContent = emoji;
  tile.el.append(el);
  setTimeout(() => el.remove(), 3000);
}

// The list of people, and each tile's raised hand.
export function renderHands() {
  const me = ctx.me();
  $("raise-hand").textContent = me && hands.has(me) ? "Lower hand" : "Raise hand";
  $("raise-hand").setAttribute("aria-pressed", String(!!(me && hands.has(me))));
  for (const person of ctx.people()) {
    const tile = ctx.tileOf(person.id);
    if (tile) tile.el.classList.toggle("hand", hands.has(person.id));
  }
  renderPeople();
}

export function renderPeople() {
  const list = $("people-list");
  const people = ctx.people();
  const host = ctx.host();
  $("host-tools").hidden = !host;
  list.replaceChildren(...people.map((p) => {
    const li = document.createElement("li");
    li.dataset.participant = p.id;
    li.textContent = (hands.has(p.id) ? "✋ " : "") + p.name + (p.me ? " (you)" : "") + (p.micOff ? " · mic off" : "");
    if (host && !p.me) {
      const mute = button("Mute", "mute " + p.name, () => ctx.send({ type: "muteParticipant", participantId: p.id }));
      mute.className = "mute";
      mute.disabled = !!p.micOff;
      const remove = button("Remove", "remove " + p.name, () => {
        if (confirm(`Remove ${p.name} from the meeting?`)) ctx.send({ type: "removeParticipant", participantId: p.id });
      });
      remove.className = "remove danger";
      li.append(mute, remove);
    }
    return li;
  }));
  $("people-count").textContent = String(people.length);
}

function button(text, label, onclick) {
  const b = document.createElement("button");
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.onclick = onclick;
  return b;
}

// What a host did, said to everyone for a few seconds (and kept in the chat).
const notices = [];
let noticeTimer = null;

export function onHostAction(msg) {
  const me = ctx.me();
  const whom = msg.participantId === me ? "you" : msg.name || "someone";
  const text = {
    mute: `${msg.byName} muted ${whom}`,
    muteAll: `${msg.byName} muted everyone`,
    remove: `${msg.byName} removed ${whom} from the meeting`,
    end: `${msg.byName} ended the meeting`,
  }[msg.action];
  if (!text) return;
  notices.push(text);
  const el = $("notice");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { el.hidden = true; }, 5000);
  const li = document.createElement("li");
  li.className = "notice";
  li.textContent = text;
  $("chat-lines").append(li);
}

function addLine(line) {
  if (lines.some((l) => l.seq === line.seq)) return false;
  lines.push(line);
  const li = document.createElement("li");
  const who = document.createElement("b");
  who.textContent = line.name + " ";
  const when = document.createElement("time");
  when.textContent = new Date(line.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const text = document.createElement("span");
  text.textContent = line.text;
  li.append(who, when, document.createElement("br"), text);
  $("chat-lines").append(li);
  li.scrollIntoView({ block: "end" });
  return true;
}

function showUnread() {
  $("toggle-side").textContent = unread > 0 ? `Chat and people (${unread})` : "Chat and people";
}

// What the page shows of the talk (tests).
export function talkState() {
  return { lines: lines.map((l) => ({ seq: l.seq, name: l.name, text: l.text })), hands: [...hands], notices: [...notices] };
}
