// A live class over WHIP and WHEP (docs/protocol.md). /live/<room> watches: it asks
// /whep/<room> for the room's media and plays it, trying again while nothing is live.
// /live/<room>/go is the teacher's page: camera and microphone (or the screen, with
// ?screen=1) published to /whip/<room>, ended with "End the class".
// A token comes from the link's fragment (#token=...), else from the dev endpoint.
// Both pages follow /live/<room>/events (server-sent events from the node that serves the
// media): whether the class is live and how many watch. A viewer sent on to an edge whose
// events stream breaks (the edge died) asks the origin again at once, and plays from
// another edge.
"use strict";

const $ = (id) => document.getElementById(id);
const parts = location.pathname.split("/").filter(Boolean); // ["live", room, "go"?]
const room = decodeURIComponent(parts[1] || "");
const teaching = parts[2] === "go";
const params = new URLSearchParams(location.search);
const linkToken = (() => {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token) history.replaceState(null, "", location.pathname + location.search);
  return token;
})();

// What the test harness and a curious person can read.
window.huiyiLive = {
  state: "starting", role: teaching ? "teacher" : "viewer", errors: [], session: null, viewers: null, live: null,
};

function setState(state, text) {
  window.huiyiLive.state = state;
  $("status").textContent = text || state;
  $("status").className = "conn " + (state === "live" ? "connected" : state === "error" ? "failed" : "idle");
}

function fail(message) {
  window.huiyiLive.errors.push(message);
  $("error").textContent = message;
  setState("error", "error");
}

async function token() {
  if (linkToken) return linkToken;
  const identity = (teaching ? "teacher-" : "viewer-") + Math.random().toString(36).slice(2, 8);
  const res = await fetch("/v1/dev/token?" + new URLSearchParams({ room, identity, name: identity }));
  if (!res.ok) throw new Error("no token: this server needs one in the link (#token=...)");
  return (await res.json()).token;
}

// POST an offer to a WHIP or WHEP endpoint; returns the session's URL, or a number of
// seconds to wait (409 while nothing is live).
async function negotiate(pc, endpoint, bearer) {
  await pc.setLocalDescription(await pc.createOffer());
  const res = await fetch(endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/sdp", Authorization: "Bearer " + bearer },
    body: pc.localDescription.sdp,
  });
  if (res.status === 409) return Number(res.headers.get("Retry-After") || "5");
  if (res.status !== 201) {
    const error = new Error(`${endpoint}: ${res.status} ${(await res.text()).trim()}`);
    error.status = res.status;
    throw error;
  }
  await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
  // Relative to where the answer came from: an origin may have sent us on to an edge.
  return new URL(res.headers.get("Location"), res.url).href;
}

let session = null;
let bearer = null;

// The class's state from the node at `base` (the media session's URL): calls `onState`
// with {live, viewers}, `onBroken` once if the stream fails. Returns a closer.
function follow(base, onState, onBroken) {
  const url = new URL(`/live/${encodeURIComponent(room)}/events`, base);
  url.searchParams.set("access_token", bearer);
  const events = new EventSource(url.href);
  let broken = false;
  events.addEventListener("state", (e) => {
    const s = JSON.parse(e.data);
    if (s.moving) {
      // The node is shutting down: move before its media stops.
      broken = true;
      events.close();
      onState(s);
      return;
    }
    window.huiyiLive.viewers = s.viewers;
    window.huiyiLive.live = s.live;
    $("viewers").textContent = s.viewers === 1 ? "1 watching" : `${s.viewers} watching`;
    onState(s);
  });
  events.onerror = () => {
    if (broken) return;
    broken = true;
    events.close();
    onBroken();
  };
  return () => events.close();
}

function endSession() {
  if (session && bearer) {
    fetch(session, { method: "DELETE", headers: { Authorization: "Bearer " + bearer }, keepalive: true });
  }
  session = null;
}
addEventListener("pagehide", endSession);

// Bytes of media received so far on a peer connection.
async function received(pc) {
  let bytes = 0;
  (await pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp") bytes += r.bytesReceived || 0;
  });
  return bytes;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The node's TURN servers with this token's credentials ([] when it has none, or on any
// failure: the connection is then tried without them).
async function iceServers() {
  try {
    const res = await fetch("/v1/ice-servers", { headers: { Authorization: `Bearer ${bearer}` } });
    return res.ok ? (await res.json()).iceServers || [] : [];
  } catch {
    return [];
  }
}

async function watch() {
  bearer = await token();
  const ice = await iceServers();
  let failures = 0;
  for (;;) {
    const pc = new RTCPeerConnection({ iceServers: ice });
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    const stream = new MediaStream();
    pc.ontrack = (e) => {
      stream.addTrack(e.track);
      $("video").srcObject = stream;
    };
    let answer;
    try {
      // The player's size in device pixels picks the simulcast layer it is sent.
      const video = $("video");
      const scale = window.devicePixelRatio || 1;
      const size = new URLSearchParams({
        width: Math.round((video.clientWidth || 1280) * scale),
        height: Math.round((video.clientHeight || 720) * scale),
      });
      answer = await negotiate(pc, `/whep/${encodeURIComponent(room)}?${size}`, bearer);
    } catch (e) {
      pc.close();
      window.huiyiLive.errors.push(e.message);
      // Refused for what we sent (a bad or expired token): asking again will not help.
      if (e.status >= 400 && e.status < 500 && e.status !== 429) throw e;
      // The node we were sent to is gone (or the network is): ask again, backing off.
      failures += 1;
      setState("waiting", "reconnecting");
      await sleep(Math.min(8000, 250 * 2 ** failures) * (0.5 + Math.random() / 2));
      continue;
    }
    failures = 0;
    if (typeof answer === "number") {
      pc.close();
      setState("waiting", "the class has not started");
      await sleep(answer * 1000);
      continue;
    }
    session = answer;
    window.huiyiLive.session = answer;
    setState("connecting");
    let stopFollowing = () => {};
    const ended = new Promise((resolve) => {
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "connected") setState("live", "live");
        if (["failed", "closed", "disconnected"].includes(pc.connectionState)) resolve("lost");
      };
      let wasLive = false;
      const onState = (s) => {
        if (s.moving) resolve("lost");
        if (s.live) wasLive = true;
        else if (wasLive) resolve("ended");
      };
      // The events stream broke: the node that serves us died, unless media still comes
      // (a proxy that cut the stream); then follow it again a little later.
      const onBroken = async () => {
        const before = await received(pc);
        await sleep(1000);
        if (pc.connectionState === "closed") return;
        if ((await received(pc)) > before) {
          await sleep(3000);
          if (pc.connectionState !== "closed") stopFollowing = follow(answer, onState, onBroken);
        } else {
          resolve("lost");
        }
      };
      stopFollowing = follow(answer, onState, onBroken);
    });
    const why = await ended;
    stopFollowing();
    pc.close();
    endSession();
    if (why === "ended") {
      setState("ended", "the class has ended");
      await sleep(5000);
    } else {
      setState("waiting", "reconnecting");
      await sleep(200);
    }
  }
}

async function teach() {
  $("start").hidden = false;
  const start = async () => {
    $("start").hidden = true;
    try {
      bearer = await token();
      const media = params.get("screen") === "1"
        ? await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false })
        : await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 }, audio: true });
      $("video").srcObject = media;
      $("video").muted = true;
      const pc = new RTCPeerConnection({ iceServers: await iceServers() });
      for (const track of media.getTracks()) pc.addTransceiver(track, { direction: "sendonly" });
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "connected") setState("live", "live");
        if (pc.connectionState === "failed") fail("the connection to the server failed");
      };
      session = await negotiate(pc, `/whip/${encodeURIComponent(room)}`, bearer);
      window.huiyiLive.session = session;
      const stopFollowing = follow(session, () => {}, () => {});
      setState("connecting");
      $("stop").hidden = false;
      $("stop").onclick = () => {
        stopFollowing();
        endSession();
        pc.close();
        for (const track of media.getTracks()) track.stop();
        $("stop").hidden = true;
        setState("ended", "the class has ended");
      };
    } catch (e) {
      fail(e.message);
      $("start").hidden = false;
    }
  };
  $("start").onclick = start;
  if (params.get("autostart") === "1") start();
}

$("room-title").textContent = room + (teaching ? " (teaching)" : "");
(teaching ? teach() : watch()).catch((e) => fail(e.message));
