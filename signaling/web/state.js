// The meeting page's shared state and its one way to the server (the signaling socket).
// Every other module of the page reads and changes `state`; see app.js for the whole.

export const $ = (id) => document.getElementById(id);
export const params = new URLSearchParams(location.search);

// 5x5: beyond that, tiles are too small to be worth a video each; on a phone, 2x2.
export const PHONE = window.matchMedia("(max-width: 600px)");
export const pageSize = () => (PHONE.matches ? 4 : 25);

export const state = {
  ws: null,
  pc: null,
  me: null,
  local: null,             // MediaStream from camera and mic
  screen: null,            // MediaStream from getDisplayMedia
  localTile: null,
  participants: new Map(), // id -> {info, tile, order}
  joinCounter: 0,
  tracks: new Map(),       // remote track id -> {participantId, kind, source, muted}
  screenTiles: new Map(),  // remote screen track id -> tile
  receivers: new Map(),    // mid -> {kind, track, stream, audio}
  slots: new Map(),        // mid -> {participantId, trackId} or null: from `slots`, authoritative
  msids: new Map(),        // mid -> {participantId, trackId}: the remote SDP's a=msid, until `slots` names the mid
  ownTracks: new Map(),    // mid -> published track id
  ownKinds: new Map(),     // mid -> "audio" or "video": the microphone's and the camera's senders
  pendingLayers: new Map(), // own track id -> rids, for a `layers` that arrived before the answer naming the track
  layersHistory: [],       // the last few `layers` received, for debugging: {at, trackId, active}
  layersQueue: Promise.resolve(),
  activeSpeaker: null,
  view: "grid",            // "grid", or "speaker": one large tile over a strip of the others
  pinned: null,            // the participant id pinned as the large tile (speaker view), or null
  host: false,             // this participant may use the host controls (`joined.host`)
  page: 0,
  pages: 1,
  subscribeTimer: null,
  lastSubscribe: null,     // JSON of the last `tracks` sent
  resizeObserver: null,
  makingOffer: false,
  left: false,
  token: null,
  resume: null,            // from `joined`: sent in `join` to take this participant back after a drop
  resumeUntil: null,       // while reconnecting: when to give up (the server's grace is 10 s)
  outbox: [],              // messages made while reconnecting, sent once back
  resumes: 0,              // signaling connections resumed (for tests and debugging)
  rejoined: false,         // this page load came back as the participant of the one before (a reload)
  iceRestartTimer: null,
  departures: 0,           // participantLeft messages received (for tests)
  ended: null,             // how the last meeting ended: {kind, code, text}, or null
};

export function setConn(text, cls) {
  const el = $("conn");
  el.textContent = text;
  el.className = "conn " + cls;
}

export function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(msg));
    return true;
  }
  // Reconnecting: an offer, answer or candidate made meanwhile goes once we are back.
  if (state.resumeUntil !== null && msg.type !== "join" && msg.type !== "ping") {
    state.outbox.push(msg);
    return true;
  }
  return false;
}
