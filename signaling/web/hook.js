// The page's test and debugging hook, `window.huiyi`: what tiles show and decode, the
// subscription sent, the own simulcast layers, and ways to drop a connection as a network
// change would. Nothing of the page depends on it.

import { send, state } from "./state.js";
import { soundBlocked, liveDevices } from "./lobby.js";
import { talkState } from "./talk.js";
import { carriedBy, findTile, remoteTiles, setPage } from "./tiles.js";

async function statsByMid(kind, type) {
  const out = new Map();
  if (!state.pc) return out;
  (await state.pc.getStats()).forEach((s) => {
    if (s.type === type && s.kind === kind && s.mid !== undefined) out.set(s.mid, s);
  });
  return out;
}

// What a participant's tile shows: the slot, what it carries, and the decoder's view of it.
async function tileVideo(participantId, source = "camera") {
  const tile = findTile(participantId, source);
  if (!tile) return null;
  const inbound = tile.mid !== null ? (await statsByMid("video", "inbound-rtp")).get(tile.mid) : undefined;
  const r = tile.el.getBoundingClientRect();
  const carried = tile.mid !== null ? carriedBy(tile.mid) : null;
  return {
    mid: tile.mid,
    trackId: carried ? carried.trackId : null,
    framesDecoded: inbound ? inbound.framesDecoded || 0 : 0,
    frameWidth: inbound ? inbound.frameWidth || 0 : 0,
    frameHeight: inbound ? inbound.frameHeight || 0 : 0,
    bytesReceived: inbound ? inbound.bytesReceived || 0 : 0,
    packetsReceived: inbound ? inbound.packetsReceived || 0 : 0,
    framesReceived: inbound ? inbound.framesReceived || 0 : 0,
    keyFramesDecoded: inbound ? inbound.keyFramesDecoded || 0 : 0,
    pliCount: inbound ? inbound.pliCount || 0 : 0,
    videoWidth: tile.video.videoWidth,
    currentTime: tile.video.currentTime,
    tileWidth: r.width,
    tileHeight: r.height,
    onPage: source === "screen" || tile.onPage !== false,
  };
}

// Audio packets received from a participant, over the audio slots that carry its tracks now.
async function audioFrom(participantId) {
  let packets = 0;
  for (const [mid, s] of await statsByMid("audio", "inbound-rtp")) {
    const carried = carriedBy(mid);
    if (carried && carried.participantId === participantId) packets += s.packetsReceived || 0;
  }
  return packets;
}

window.huiyi = {
  state,
  // Drop the signaling connection without leaving, as a network change would (tests).
  dropSignaling: () => state.ws && state.ws.close(3000, "dropped"),
  // Restart ICE as after a network change (tests); the local ICE username, to see it change.
  restartIce: () => state.pc && state.pc.restartIce(),
  iceUfrag: () => {
    const sdp = state.pc && state.pc.localDescription ? state.pc.localDescription.sdp : "";
    const m = sdp.match(/a=ice-ufrag:(\S+)/);
    return m ? m[1] : null;
  },
  stats: () => state.pc ? state.pc.getStats() : Promise.resolve(new Map()),
  soundBlocked,
  liveDevices,
  talk: talkState,
  // Say something in the chat, raise or lower the hand (tests; the page's controls do the same).
  chat: (text) => send({ type: "chat", text }),
  tileVideo,
  audioFrom,
  // Every remote tile's video, keyed "participantId" or "participantId/screen".
  videos: async () => {
    const out = {};
    for (const t of remoteTiles()) {
      const key = t.participantId + (t.screenTrackId ? "/screen" : "");
      out[key] = await tileVideo(t.participantId, t.screenTrackId ? "screen" : "camera");
    }
    return out;
  },
  page: () => ({ page: state.page + 1, pages: state.pages }),
  setPage: (n) => setPage(n - 1),
  // Fix a tile's size in CSS pixels (null restores the grid's size), as a person resizing a window would.
  forceTileSize: (participantId, width, height, source = "camera") => {
    const tile = findTile(participantId, source);
    if (!tile) return false;
    tile.el.classList.toggle("forced", width != null);
    tile.el.style.width = width != null ? width + "px" : "";
    tile.el.style.height = height != null ? height + "px" : "";
    return true;
  },
  subscribed: () => state.lastSubscribe === null ? null : JSON.parse(state.lastSubscribe),
  // The own simulcast layers: what the encoder sends and what it is allowed to.
  publishing: async () => {
    const out = [];
    if (!state.pc) return out;
    const active = new Map();
    for (const tr of state.pc.getTransceivers()) {
      if (!tr.sender.track || tr.sender.track.kind !== "video" || tr.mid === null) continue;
      for (const e of tr.sender.getParameters().encodings || []) active.set(tr.mid + "/" + (e.rid || ""), e.active);
    }
    (await state.pc.getStats()).forEach((s) => {
      if (s.type !== "outbound-rtp" || s.kind !== "video") return;
      out.push({
        mid: s.mid, rid: s.rid || null, active: active.get(s.mid + "/" + (s.rid || "")),
        bytesSent: s.bytesSent, framesEncoded: s.framesEncoded, frameWidth: s.frameWidth, frameHeight: s.frameHeight,
        qualityLimitationReason: s.qualityLimitationReason, targetBitrate: s.targetBitrate,
        keyFramesEncoded: s.keyFramesEncoded, pliCount: s.pliCount, firCount: s.firCount, ssrc: s.ssrc,
      });
    });
    return out;
  },
};
