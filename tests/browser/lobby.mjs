// The meeting page's lobby as a person meets it: joining again after leaving, and each
// way a meeting can be refused or end, shown in the lobby with the camera and microphone
// stopped. Usage: node lobby.mjs <base-url> <room> <case> [timeout-seconds=60]
//   rejoin    two pages; the first leaves and joins again three times, and each time the
//             second decodes video from it again (and the first's devices were stopped
//             while it was out, and opened again to join)
//   full      the room holds two: a third page is told the meeting is full
//   badtoken  a page with a token that is no token is told its link is not valid
//   shutdown  two pages join, the script prints READY, the test stops the server
//             (SIGTERM), and both pages must say the server is shutting down
//   devices   two pages; the first stops its camera (its light goes off: no live video
//             track; the second shows its initials), starts it again (the second decodes
//             it again), and mutes its microphone (no live audio track; shown muted)
//   phone     a phone-sized page (390x844, no screen sharing) among five others: four
//             large tiles a page, a pager, no share button
// Prints RESULT {ok, ...}.
import { finish, launch } from "./chromium.mjs";

const [base, room, which, timeoutArg = "60"] = process.argv.slice(2);
const deadline = Date.now() + Number(timeoutArg) * 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const browser = await launch();
const logs = [];

async function open(name, hash = "", options = {}, init = null) {
  const context = await browser.newContext(options);
  if (init) await context.addInitScript(init);
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") logs.push(`${name}: ${m.text()}`); });
  page.on("pageerror", (e) => logs.push(`${name} error: ${e.message}`));
  const query = options.query || "";
  await page.goto(`${base}/room/${encodeURIComponent(room)}?name=${name}&autojoin=1${query}${hash}`);
  return page;
}

// Wait until `f` on the page is true, up to `ms`.
async function until(page, f, ms, arg) {
  const end = Math.min(deadline, Date.now() + ms);
  while (Date.now() < end) {
    if (await page.evaluate(f, arg).catch(() => false)) return true;
    await sleep(200);
  }
  return false;
}

const me = (page) => page.evaluate(() => window.huiyi.state.me && window.huiyi.state.me.id);

// The second page decodes new frames of `id`'s camera over a second.
async function decodes(viewer, id) {
  const end = Math.min(deadline, Date.now() + 20000);
  while (Date.now() < end) {
    const a = await viewer.evaluate((id) => window.huiyi.tileVideo(id), id);
    await sleep(1000);
    const b = await viewer.evaluate((id) => window.huiyi.tileVideo(id), id);
    if (a && b && b.videoWidth > 0 && b.framesDecoded > a.framesDecoded && b.currentTime > a.currentTime) return true;
  }
  return false;
}

// What the lobby shows: shown or not, its message, how the meeting ended, live devices.
const lobby = (page) => page.evaluate(() => ({
  shown: !document.getElementById("lobby").hidden,
  message: document.getElementById("lobby-error").textContent,
  button: document.getElementById("join").textContent,
  ended: window.huiyi.state.ended,
  live: window.huiyi.liveDevices(),
}));

// Wait for the lobby to show an end of kind `kind`; it must have no device live.
async function endedAs(page, kind) {
  await until(page, (kind) => window.huiyi.state.ended && window.huiyi.state.ended.kind === kind, 20000, kind);
  const seen = await lobby(page);
  const ok = seen.shown && seen.ended && seen.ended.kind === kind && seen.live.audio === 0 && seen.live.video === 0;
  return { ok, ...seen };
}

await finish(browser, logs, async () => {
  let result = { ok: false };
  if (which === "rejoin") {
    const first = await open("first");
    const second = await open("second");
    const rounds = [];
    await until(first, () => !!window.huiyi.state.me, 20000);
    let ok = await decodes(second, await me(first));
    for (let round = 1; ok && round <= 3; round++) {
      await first.click("#leave");
      const out = await lobby(first);
      await first.click("#join");
      await until(first, () => !!window.huiyi.state.me && window.huiyi.state.pc && window.huiyi.state.pc.connectionState === "connected", 20000);
      const id = await me(first);
      const seen = id ? await decodes(second, id) : false;
      const live = await first.evaluate(() => window.huiyi.liveDevices());
      rounds.push({ round, stopped_while_out: out.live.audio === 0 && out.live.video === 0, lobby_shown: out.shown, decoded: seen, live });
      ok = seen && out.shown && out.live.audio === 0 && out.live.video === 0 && live.audio === 1 && live.video === 1;
    }
    result = { ok: ok && rounds.length === 3, rounds };
  } else if (which === "full") {
    const pages = [await open("one"), await open("two")];
    for (const p of pages) await until(p, () => !!window.huiyi.state.me, 20000);
    const third = await open("three");
    const end = await endedAs(third, "room_full");
    result = { ok: end.ok && /full/i.test(end.message), third: end };
  } else if (which === "badtoken") {
    const page = await open("nobody", "#token=not-a-token");
    const end = await endedAs(page, "token");
    result = { ok: end.ok && /not valid/.test(end.message) && end.button === "Join", page: end };
  } else if (which === "shutdown") {
    const pages = [await open("one"), await open("two")];
    for (const p of pages) await until(p, () => window.huiyi.state.pc && window.huiyi.state.pc.connectionState === "connected", 20000);
    console.log("READY");
    const ends = [];
    for (const p of pages) ends.push(await endedAs(p, "shutting_down"));
    result = { ok: ends.every((e) => e.ok && /shutting down/.test(e.message) && e.button === "Rejoin"), pages: ends };
  } else if (which === "devices") {
    const first = await open("first");
    const second = await open("second");
    for (const p of [first, second]) await until(p, () => window.huiyi.state.pc && window.huiyi.state.pc.connectionState === "connected", 20000);
    const id = await me(first);
    const before = await decodes(second, id);
    await first.click("#toggle-cam");
    const camOff = await until(first, () => window.huiyi.liveDevices().video === 0, 5000);
    const initials = await until(second, (id) => !!document.querySelector(`.tile.video-off[data-participant="${id}"] .initials`), 10000, id);
    await first.click("#toggle-cam");
    const camOn = await until(first, () => window.huiyi.liveDevices().video === 1, 10000);
    const back = await until(second, (id) => !document.querySelector(`.tile.video-off[data-participant="${id}"]`), 10000, id) && await decodes(second, id);
    await first.click("#toggle-mic");
    const micOff = await until(first, () => window.huiyi.liveDevices().audio === 0, 5000);
    const shownMuted = await until(second, (id) => !!document.querySelector(`.tile[data-participant="${id}"] .label.muted`), 10000, id);
    result = { ok: before && camOff && initials && camOn && back && micOff && shownMuted, before, camOff, initials, camOn, back, micOff, shownMuted };
  } else if (which === "phone") {
    const others = [];
    for (let i = 0; i < 5; i++) others.push(await open("p" + i, "", { query: "&cam=0&mic=0" }));
    const noShare = () => { delete MediaDevices.prototype.getDisplayMedia; };
    const phone = await open("phone", "", { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true }, noShare);
    await until(phone, () => window.huiyi.state.participants.size >= 5, 30000);
    await sleep(500);
    const seen = await phone.evaluate(() => {
      const tiles = [...document.querySelectorAll("#grid .tile")].filter((t) => !t.hidden);
      return {
        phone: document.body.classList.contains("phone"),
        tiles: tiles.length,
        smallest: Math.min(...tiles.map((t) => Math.round(t.getBoundingClientRect().width))),
        pager: !document.getElementById("pager").hidden,
        share: !document.getElementById("share").hidden,
        page: window.huiyi.page(),
      };
    });
    result = { ok: seen.phone && seen.tiles <= 4 && seen.tiles >= 2 && seen.smallest >= 150 && seen.pager && !seen.share, ...seen };
  } else {
    result = { ok: false, reason: "unknown case " + which };
  }
  return result;
});
