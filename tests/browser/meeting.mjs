// Opens N pages of the Huiyi web client in one headless Chromium, each joining the same
// room with the fake camera and microphone, and checks what a person would see: every
// page plays the other N-1 participants' video and receives their audio.
// Usage: node meeting.mjs <base-url> <room> [pages=3] [timeout-seconds=60] [hold-seconds=0] [checks]
// checks is a comma-separated list. With "share", the first page then shares its screen:
// every other page must play it in a screen tile, and the tile must go away when sharing
// stops; and muting the first page's microphone must show on the others. With "hide",
// the second page's tab is hidden: it must stop receiving video (it subscribes to none),
// and receive and decode video again once shown. With "resume", the first page's
// signaling connection is dropped: it must resume, the others must see no leave, and media
// must flow on. With "reload", the first page reloads: it must come back as the same
// participant, the others must see no leave, and media must flow again. With "icerestart",
// the first page restarts ICE: new credentials both ways, media flowing on. With "red",
// the last page is a browser without RED (RFC 2198 redundant audio: its codec lists lack
// audio/red) and the others take it as Chromium does (RED first, so they send it): every
// remote audio stream on every page decodes with little concealed, the server passing
// RED between the first pages and unwrapping it for the last (its counters tell).
// Video arrives on slots (docs/protocol.md, Receiving: slots): the page maps each slot's
// mid to the tile of the participant it carries, so "playing" is judged per tile.
// With hold-seconds, the pages stay in the meeting that long after they all play media
// (for measuring the server under a real meeting).
import { launch } from "./chromium.mjs";

const [base, room, pagesArg = "3", timeoutArg = "60", holdArg = "0", checksArg = ""] = process.argv.slice(2);
const checks = new Set(checksArg.split(",").filter(Boolean));
const pages = Number(pagesArg);
const deadline = Date.now() + Number(timeoutArg) * 1000;

const browser = await launch(["--auto-select-desktop-capture-source=Entire screen"]);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// What one page shows: remote videos playing and remote audio packets arriving.
async function observe(page) {
  return page.evaluate(async () => {
    // Only what is on screen counts: a tile in a hidden section plays for nobody.
    const shown = (el) => {
      const r = el.getBoundingClientRect();
      return r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== "hidden";
    };
    const videos = [...document.querySelectorAll(".tile:not(.local) video")].filter(shown).map((v) => ({
      participant: v.closest(".tile").dataset.participant,
      width: v.videoWidth,
      time: v.currentTime,
    }));
    const lobbyShown = shown(document.getElementById("lobby"));
    const stats = await window.huiyi.stats();
    const audio = [];
    const video = [];
    stats.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      if (s.kind === "audio") audio.push({ mid: s.mid, packets: s.packetsReceived });
      if (s.kind === "video") video.push({ mid: s.mid, frames: s.framesDecoded || 0 });
    });
    const st = window.huiyi.state;
    const pc = st.pc;
    // Camera tiles whose video comes from a slot that `slots` assigned (not the msid fallback).
    const slotted = [...st.participants.values()].filter((p) => p.tile.mid !== null && st.slots.get(p.tile.mid)).length;
    return { videos, lobbyShown, audio, video, slotted, connection: pc ? pc.connectionState : "none", error: document.getElementById("meeting-error").textContent };
  });
}

// Drop the first page's signaling connection (as a network change would) and wait for it
// to resume: the others must see no leave, and every page must still play and hear the
// others afterwards.
// participantLeft messages each page but the first has had.
function departures(opened) {
  return Promise.all(opened.slice(1).map((p) => p.evaluate(() => window.huiyi.state.departures)));
}

async function dropAndResume(opened) {
  const before = await departures(opened);
  await opened[0].evaluate(() => window.huiyi.dropSignaling());
  const start = Date.now();
  let resumed_s = null;
  while (Date.now() < deadline && Date.now() - start < 15000) {
    if (await opened[0].evaluate(() => window.huiyi.state.resumes > 0)) { resumed_s = (Date.now() - start) / 1000; break; }
    await sleep(200);
  }
  // Past the server's grace period too: a leave would have come by now.
  await sleep(Math.max(0, 11000 - (Date.now() - start)));
  const after = await departures(opened);
  const playing_after = await allPlaying(opened);
  return { resumed_s, departures: after.reduce((n, d, i) => n + d - before[i], 0), playing_after };
}

// Every page plays and hears every other page, over two seconds from now.
async function allPlaying(opened) {
  const first = await Promise.all(opened.map(observe));
  await sleep(2000);
  const then = await Promise.all(opened.map(observe));
  return then.every((obs, i) => {
    const b = first[i];
    const playing = obs.videos.filter((v) => { const x = b.videos.find((y) => y.participant === v.participant); return v.width > 0 && x && v.time > x.time; }).length;
    const hearing = obs.audio.filter((a) => { const x = b.audio.find((y) => y.mid === a.mid); return x && a.packets > x.packets; }).length;
    return playing >= opened.length - 1 && hearing >= opened.length - 1;
  });
}

// Restart ICE on the first page (as after a network change): new credentials both ways,
// the connection back, no leave seen by the others, media flowing on.
async function restartIce(opened) {
  const before = await departures(opened);
  const ufrag = await opened[0].evaluate(() => window.huiyi.iceUfrag());
  const remoteUfrag = () => opened[0].evaluate(() => {
    const pc = window.huiyi.state.pc;
    const m = pc && pc.remoteDescription ? pc.remoteDescription.sdp.match(/a=ice-ufrag:(\S+)/) : null;
    return m ? m[1] : null;
  });
  const remote = await remoteUfrag();
  const start = Date.now();
  await opened[0].evaluate(() => window.huiyi.restartIce());
  let restarted_s = null;
  while (Date.now() < deadline && Date.now() - start < 15000) {
    const now = await opened[0].evaluate(() => ({ ufrag: window.huiyi.iceUfrag(), state: window.huiyi.state.pc.iceConnectionState }));
    const theirs = await remoteUfrag();
    if (now.ufrag !== ufrag && theirs !== remote && (now.state === "connected" || now.state === "completed")) {
      restarted_s = (Date.now() - start) / 1000;
      break;
    }
    await sleep(200);
  }
  let playing_after = false;
  while (restarted_s !== null && Date.now() < deadline && Date.now() - start < 25000 && !playing_after) {
    playing_after = await allPlaying(opened);
  }
  const after = await departures(opened);
  return { restarted_s, departures: after.reduce((n, d, i) => n + d - before[i], 0), playing_after };
}

// Reload the first page: it must come back as the same participant (a new peer
// connection, the same participant id) with no leave seen by the others, and every page
// must play and hear the others again.
async function reloadAndRejoin(opened) {
  const before = await departures(opened);
  const id = await opened[0].evaluate(() => window.huiyi.state.me.id);
  const start = Date.now();
  await opened[0].reload();
  let rejoined_s = null;
  while (Date.now() < deadline && Date.now() - start < 20000) {
    const back = await opened[0].evaluate((id) => !!window.huiyi && window.huiyi.state.rejoined && window.huiyi.state.me && window.huiyi.state.me.id === id, id).catch(() => false);
    if (back) { rejoined_s = (Date.now() - start) / 1000; break; }
    await sleep(200);
  }
  let playing_after = false;
  while (rejoined_s !== null && Date.now() < deadline && Date.now() - start < 30000 && !playing_after) {
    playing_after = await allPlaying(opened);
  }
  // Past the server's grace period too: a leave would have come by now.
  await sleep(Math.max(0, 11000 - (Date.now() - start)));
  const after = await departures(opened);
  return { rejoined_s, departures: after.reduce((n, d, i) => n + d - before[i], 0), playing_after, played_s: (Date.now() - start) / 1000 };
}

// Wait until every other page plays a screen-share tile (or, with gone=true, has none).
async function screenSeen(opened, gone) {
  const probe = () => Promise.all(opened.slice(1).map((p) => p.evaluate(() => {
    const v = document.querySelector(".tile.screen video");
    return v ? { width: v.videoWidth, time: v.currentTime } : null;
  })));
  const start = Date.now();
  let before = await probe();
  while (Date.now() < deadline) {
    await sleep(500);
    const now = await probe();
    const ok = gone
      ? now.every((v) => v === null)
      : now.every((v, i) => v && v.width > 0 && before[i] && v.time > before[i].time);
    if (ok) return (Date.now() - start) / 1000;
    before = now;
  }
  return null;
}

// A browser that never takes RED: every audio transceiver's codecs exclude audio/red,
// set before the page's offer or answer is made (runs in the page before its scripts).
function withoutRed() {
  const drop = (t) => {
    const kind = t.receiver && t.receiver.track && t.receiver.track.kind;
    if (kind !== "audio" || t.direction === "stopped" || t.currentDirection === "stopped") return;
    const codecs = RTCRtpReceiver.getCapabilities("audio").codecs.filter((c) => c.mimeType.toLowerCase() !== "audio/red");
    t.setCodecPreferences(codecs);
  };
  const proto = RTCPeerConnection.prototype;
  const addTransceiver = proto.addTransceiver;
  proto.addTransceiver = function (...args) { const t = addTransceiver.apply(this, args); drop(t); return t; };
  const setRemote = proto.setRemoteDescription;
  proto.setRemoteDescription = async function (...args) {
    await setRemote.apply(this, args);
    if (this.signalingState === "have-remote-offer") this.getTransceivers().forEach(drop);
  };
}

// What a page negotiated for audio (whether RED comes first in the answer or offer it was
// given, so that it sends RED and takes it) and each remote audio stream's samples received
// and concealed so far. (getStats names RED's primary codec, so the server's counters tell
// what was passed through and what unwrapped.)
function audioState(page) {
  return page.evaluate(async () => {
    const pc = window.huiyi.state.pc;
    const m = pc.remoteDescription.sdp.match(/^m=audio \S+ \S+ (\d+)/m);
    const red = m ? /^a=rtpmap:(\d+) red\//m.exec(pc.remoteDescription.sdp) : null;
    const received = [];
    (await window.huiyi.stats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") received.push({ mid: s.mid, samples: s.totalSamplesReceived || 0, concealed: s.concealedSamples || 0 });
    });
    return { red_first: !!(m && red && m[1] === red[1]), received };
  });
}

// Over three seconds of the meeting: what the "red" check expects (see the top).
async function redCheck(opened) {
  const first = await Promise.all(opened.map(audioState));
  await sleep(3000);
  const then = await Promise.all(opened.map(audioState));
  const last = opened.length - 1;
  const pages = then.map((now, i) => {
    const streams = now.received
      .map((r) => { const b = first[i].received.find((x) => x.mid === r.mid); return b ? { samples: r.samples - b.samples, concealed: r.concealed - b.concealed } : null; })
      .filter((r) => r && r.samples > 0)
      .map((r) => ({ ...r, concealed_ratio: r.concealed / r.samples }));
    return { red_first: now.red_first, streams };
  });
  const problems = [];
  pages.forEach((p, i) => {
    if (p.red_first !== (i !== last)) problems.push(`page${i} negotiated RED first: ${p.red_first}`);
    if (p.streams.length < opened.length - 1) problems.push(`page${i} decodes ${p.streams.length} remote audio streams`);
    const worst = Math.max(0, ...p.streams.map((r) => r.concealed_ratio));
    if (worst > 0.2) problems.push(`page${i} concealed ${(worst * 100).toFixed(1)}% of a stream`);
  });
  return { pages, problems };
}

// Inbound video on one page, summed over its slots.
async function videoReceived(page) {
  return page.evaluate(async () => {
    let bytes = 0, frames = 0;
    (await window.huiyi.stats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") { bytes += s.bytesReceived || 0; frames += s.framesDecoded || 0; }
    });
    return { bytes, frames, subscribed: window.huiyi.subscribed() };
  });
}

// What a browser does when the tab goes to the background, as far as the page can tell.
async function setHidden(page, hidden) {
  await page.evaluate((hidden) => {
    if (hidden) {
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
      Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
    } else {
      delete document.visibilityState;
      delete document.hidden;
    }
    document.dispatchEvent(new Event("visibilitychange"));
  }, hidden);
}

// Hide the page: within 15 s its video bytes must stop growing (no growth over 2 s);
// show it again: within 15 s bytes and decoded frames must grow again.
async function hideAndShow(page) {
  const out = { stopped_s: null, resumed_s: null, hidden_samples: [], shown_samples: [] };
  await setHidden(page, true);
  let start = Date.now();
  const recent = [];
  while (Date.now() - start < 15000) {
    await sleep(500);
    const v = await videoReceived(page);
    out.hidden_samples.push({ t: (Date.now() - start) / 1000, bytes: v.bytes, frames: v.frames });
    out.subscribed_hidden = v.subscribed;
    recent.push(v.bytes);
    if (recent.length > 5) recent.shift();
    if (recent.length === 5 && recent[4] === recent[0]) { out.stopped_s = (Date.now() - start) / 1000; break; }
  }
  await setHidden(page, false);
  start = Date.now();
  let before = await videoReceived(page);
  while (Date.now() - start < 15000) {
    await sleep(500);
    const v = await videoReceived(page);
    out.shown_samples.push({ t: (Date.now() - start) / 1000, bytes: v.bytes, frames: v.frames });
    out.subscribed_shown = v.subscribed;
    if (v.bytes > before.bytes && v.frames > before.frames) { out.resumed_s = (Date.now() - start) / 1000; break; }
    before = v;
  }
  // Keep the report short: the last few samples of each phase tell the story.
  out.hidden_samples = out.hidden_samples.slice(-8);
  out.shown_samples = out.shown_samples.slice(-8);
  return out;
}

let result = { ok: false };
try {
  const opened = [];
  const logs = [];
  for (let i = 0; i < pages; i++) {
    const context = await browser.newContext();
    if (checks.has("red") && i === pages - 1) await context.addInitScript(withoutRed);
    const page = await context.newPage();
    page.on("console", (m) => { if (m.type() === "warning" || m.type() === "error") logs.push(`page${i}: ${m.text()}`); });
    page.on("pageerror", (e) => logs.push(`page${i} error: ${e.message}`));
    // $PAGE_QUERY adds to the page's query (e.g. &relay=1: TURN candidates only).
    await page.goto(`${base}/room/${encodeURIComponent(room)}?name=user${i}&autojoin=1${process.env.PAGE_QUERY || ""}`);
    opened.push(page);
  }
  const started = Date.now();
  let first = null;
  let last = null;
  while (Date.now() < deadline) {
    await sleep(1000);
    const now = await Promise.all(opened.map(observe));
    if (!first) { first = now; continue; }
    last = now;
    // A page passes when N-1 remote videos have size and advanced since the first sample,
    // and N-1 remote audio streams received more packets than at the first sample.
    const verdicts = now.map((obs, i) => {
      const before = first[i];
      const playing = obs.videos.filter((v) => {
        const b = before.videos.find((x) => x.participant === v.participant);
        return v.width > 0 && b && v.time > b.time;
      }).length;
      const hearing = obs.audio.filter((a) => {
        const b = before.audio.find((x) => x.mid === a.mid);
        return b && a.packets > b.packets;
      }).length;
      return { playing, hearing, slotted: obs.slotted, lobbyShown: obs.lobbyShown };
    });
    const done = verdicts.every((v) => v.playing >= pages - 1 && v.hearing >= pages - 1 && !v.lobbyShown);
    if (done) {
      result = { ok: true, seconds: (Date.now() - started) / 1000, verdicts, pages: now };
      // Before "share": it mutes the first page's microphone, which then sends nothing.
      if (checks.has("red") && pages >= 3) {
        result.red = await redCheck(opened);
        if (result.red.problems.length > 0) { result.ok = false; result.reason = "RED: " + result.red.problems.join("; "); }
      }
      if (checks.has("share")) {
        await opened[0].click("#share");
        result.screen_seen_s = await screenSeen(opened, false);
        await opened[0].click("#share");
        result.screen_gone_s = await screenSeen(opened, true);
        if (result.screen_seen_s === null) { result.ok = false; result.reason = "others never played the shared screen"; }
        else if (result.screen_gone_s === null) { result.ok = false; result.reason = "screen tile stayed after sharing stopped"; }
        // Mute the first page's microphone: the others must show it muted.
        const me = await opened[0].evaluate(() => window.huiyi.state.me.id);
        await opened[0].click("#toggle-mic");
        const shownMuted = async () => (await Promise.all(opened.slice(1).map((p) => p.evaluate((id) => {
          const label = document.querySelector(`.tile[data-participant="${id}"]:not(.screen) .label`);
          return !!label && label.classList.contains("muted");
        }, me)))).every(Boolean);
        const muteStart = Date.now();
        while (Date.now() < deadline && !(await shownMuted())) await sleep(200);
        result.mute_seen_s = (await shownMuted()) ? (Date.now() - muteStart) / 1000 : null;
        if (result.mute_seen_s === null) { result.ok = false; result.reason = "others never showed the mic as muted"; }
        result.logs = logs.slice(-20);
      }
      if (checks.has("hide") && pages >= 2) {
        result.hide = await hideAndShow(opened[1]);
        if (result.hide.stopped_s === null) { result.ok = false; result.reason = "a hidden page kept receiving video"; }
        else if (result.hide.resumed_s === null) { result.ok = false; result.reason = "video did not come back when the page was shown again"; }
        result.logs = logs.slice(-20);
      }
      if (checks.has("resume") && pages >= 2) {
        result.resume = await dropAndResume(opened);
        if (result.resume.resumed_s === null) { result.ok = false; result.reason = "the dropped page never resumed"; }
        else if (result.resume.departures > 0) { result.ok = false; result.reason = "the others saw the resumed page leave"; }
        else if (!result.resume.playing_after) { result.ok = false; result.reason = "media did not flow after the resume"; }
        result.logs = logs.slice(-20);
      }
      if (checks.has("icerestart") && pages >= 2) {
        result.ice_restart = await restartIce(opened);
        if (result.ice_restart.restarted_s === null) { result.ok = false; result.reason = "ICE did not restart"; }
        else if (result.ice_restart.departures > 0) { result.ok = false; result.reason = "the others saw the restarting page leave"; }
        else if (!result.ice_restart.playing_after) { result.ok = false; result.reason = "media did not flow after the ICE restart"; }
        result.logs = logs.slice(-20);
      }
      if (checks.has("reload") && pages >= 2) {
        result.reload = await reloadAndRejoin(opened);
        if (result.reload.rejoined_s === null) { result.ok = false; result.reason = "the reloaded page did not come back as the same participant"; }
        else if (result.reload.departures > 0) { result.ok = false; result.reason = "the others saw the reloaded page leave"; }
        else if (!result.reload.playing_after) { result.ok = false; result.reason = "media did not flow after the reload"; }
        result.logs = logs.slice(-20);
      }
      if (Number(holdArg) > 0) {
        console.log("ALL_PLAYING " + Date.now());
        await sleep(Number(holdArg) * 1000);
        result.held = Number(holdArg);
        result.after_hold = await Promise.all(opened.map(observe));
      }
      break;
    }
    // Re-baseline every few seconds so "advancing" is measured over a recent window.
    if ((Date.now() - started) % 5000 < 1000) first = now;
    result = { ok: false, verdicts, pages: now, logs: logs.slice(-20) };
  }
  if (!result.ok && !result.reason) result.reason = "timed out before every page played every remote participant";
  if (!result.ok && last === null) result.reason = "pages never reported";
} catch (e) {
  result = { ok: false, reason: String(e && e.stack || e) };
} finally {
  await browser.close();
}
console.log("RESULT " + JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
