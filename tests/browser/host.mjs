// Host controls through the page, as a host uses them: the host (ana, joined with host
// controls) mutes bo from the people list: bo's page shows it is muted (its microphone
// stopped), every page is told, and the others stop receiving bo's audio packets
// (getStats), even while bo's page sends audio behind the server's back, until bo
// unmutes. Then "Mute all" mutes bo and cy but not ana, "Remove" sends cy to its lobby
// ("removed", devices stopped), and "End meeting for all" sends everyone to theirs.
// Usage: node host.mjs <base-url> <room> [timeout-seconds=90]. Prints RESULT {ok, ...}.
import { finish, launch } from "./chromium.mjs";

const [base, room, timeoutArg = "90"] = process.argv.slice(2);
const deadline = Date.now() + Number(timeoutArg) * 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const browser = await launch();
const logs = [];

async function open(name, query = "") {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => logs.push(`${name} error: ${e.message}`));
  page.on("dialog", (d) => d.accept());
  await page.goto(`${base}/room/${encodeURIComponent(room)}?name=${name}&autojoin=1${query}`);
  return page;
}

async function until(page, f, arg, ms = 20000) {
  const end = Math.min(deadline, Date.now() + ms);
  while (Date.now() < end) {
    if (await page.evaluate(f, arg).catch(() => false)) return true;
    await sleep(200);
  }
  return false;
}

const me = (page) => page.evaluate(() => window.huiyi.state.me.id);
const notices = (page) => page.evaluate(() => window.huiyi.talk().notices);
const liveMic = (page) => page.evaluate(() => window.huiyi.liveDevices().audio);

// Audio packets `listener` received from `id` over two seconds.
async function heardOver2s(listener, id) {
  const a = await listener.evaluate((id) => window.huiyi.audioFrom(id), id);
  await sleep(2000);
  const b = await listener.evaluate((id) => window.huiyi.audioFrom(id), id);
  return b - a;
}

// Wait until `listener` receives `id`'s audio again (> 50 packets in 2 s), or give up.
async function heardAgain(listener, id) {
  while (Date.now() < deadline) {
    const n = await heardOver2s(listener, id);
    if (n > 50) return n;
  }
  return 0;
}

await finish(browser, logs, async () => {
  const ana = await open("ana", "&host=1");
  const bo = await open("bo");
  const cy = await open("cy");
  const pages = [ana, bo, cy];
  for (const p of pages) await until(p, () => window.huiyi.state.participants.size >= 2);
  const [anaId, boId, cyId] = [await me(ana), await me(bo), await me(cy)];
  const host = { ana: await ana.evaluate(() => window.huiyi.state.host), bo: await bo.evaluate(() => window.huiyi.state.host) };
  const before = { ana: await heardAgain(ana, boId), cy: await heardAgain(cy, boId) };

  // The host mutes bo from the people list.
  await ana.click("#toggle-side");
  await ana.click(`#people-list li[data-participant="${boId}"] button.mute`);
  const boMuted = await until(bo, () => window.huiyi.liveDevices().audio === 0 &&
    document.getElementById("toggle-mic").textContent === "Unmute mic");
  const told = [];
  for (const p of pages) {
    await until(p, () => window.huiyi.talk().notices.length >= 1);
    told.push((await notices(p))[0]);
  }
  const boShownMuted = await until(cy, (id) => !!document.querySelector(`.tile[data-participant="${id}"] .label.muted`), boId);
  await sleep(500); // packets in flight when the hold began
  const whileMuted = { ana: await heardOver2s(ana, boId), cy: await heardOver2s(cy, boId) };

  // Bo's page sends its microphone anyway, without unmuting: the server holds it.
  await bo.evaluate(async () => {
    const pc = window.huiyi.state.pc;
    const sender = pc.getTransceivers().find((t) => window.huiyi.state.ownKinds.get(t.mid) === "audio").sender;
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    window.cheat = stream.getAudioTracks()[0];
    await sender.replaceTrack(window.cheat);
  });
  await sleep(500);
  const bypassing = await heardOver2s(cy, boId);

  // Bo unmutes itself: heard again.
  await bo.evaluate(() => window.cheat.stop());
  await bo.click("#toggle-mic");
  const afterUnmute = await heardAgain(cy, boId);

  // Mute all: bo and cy, not the host.
  await ana.click("#mute-all");
  const allMuted = await until(bo, () => window.huiyi.liveDevices().audio === 0) &&
    await until(cy, () => window.huiyi.liveDevices().audio === 0);
  const hostStillOn = (await liveMic(ana)) === 1;

  // Remove cy: its lobby says so, its devices stopped; the others are told.
  await ana.click(`#people-list li[data-participant="${cyId}"] button.remove`);
  const cyRemoved = await until(cy, () => window.huiyi.state.ended && window.huiyi.state.ended.kind === "removed" &&
    !document.getElementById("lobby").hidden && window.huiyi.liveDevices().audio + window.huiyi.liveDevices().video === 0);
  const boToldRemoved = await until(bo, (id) => !window.huiyi.state.participants.has(id) &&
    window.huiyi.talk().notices.some((n) => / removed /.test(n)), cyId);

  // End the meeting: everyone back in the lobby.
  await ana.click("#end-meeting");
  const ended = [];
  for (const p of [ana, bo]) ended.push(await until(p, () => window.huiyi.state.ended && window.huiyi.state.ended.kind === "ended"));

  const result = {
    host, before, boMuted, told, boShownMuted, whileMuted, bypassing, afterUnmute, allMuted, hostStillOn,
    cyRemoved, boToldRemoved, ended, ids: { anaId, boId, cyId },
  };
  result.ok = host.ana === true && host.bo === false && before.ana > 50 && before.cy > 50 && boMuted &&
    told.every((t) => /^ana muted (bo|you)$/i.test(t || "")) && boShownMuted &&
    whileMuted.ana <= 3 && whileMuted.cy <= 3 && bypassing <= 3 && afterUnmute > 50 &&
    allMuted && hostStillOn && cyRemoved && boToldRemoved && ended.every(Boolean);
  return result;
});
