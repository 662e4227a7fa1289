// Talking in a meeting through the page, as people do: the first page sends chat lines
// (the first typed into the chat box), the other two get them all in order; the second
// raises its hand and every page shows it; a reaction shows on the sender's tile; a page
// that joins late gets the lines said before it came and the raised hand.
// Usage: node talk.mjs <base-url> <room> [timeout-seconds=60]. Prints RESULT {ok, ...}.
import { finish, launch } from "./chromium.mjs";

const [base, room, timeoutArg = "60"] = process.argv.slice(2);
const deadline = Date.now() + Number(timeoutArg) * 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const browser = await launch();
const logs = [];

async function open(name) {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => logs.push(`${name} error: ${e.message}`));
  await page.goto(`${base}/room/${encodeURIComponent(room)}?name=${name}&autojoin=1`);
  return page;
}

async function until(page, f, arg) {
  while (Date.now() < deadline) {
    if (await page.evaluate(f, arg).catch(() => false)) return true;
    await sleep(200);
  }
  return false;
}

const talk = (page) => page.evaluate(() => window.huiyi.talk());
const said = ["hello everyone", "line two", "line three", "line four", "the last line"];

await finish(browser, logs, async () => {
  let result = { ok: false };
  const pages = [await open("ana"), await open("bo"), await open("cy")];
  for (const p of pages) await until(p, () => window.huiyi.state.participants.size >= 2);
  const [ana, bo] = pages;
  // The first line typed and sent as a person would; the rest through the page's hook.
  await ana.click("#toggle-side");
  await ana.fill("#chat-text", said[0]);
  await ana.click("#chat-form button");
  for (const text of said.slice(1)) await ana.evaluate((t) => window.huiyi.chat(t), text);
  const heard = async (page) => {
    await until(page, (n) => window.huiyi.talk().lines.length >= n, said.length);
    return (await talk(page)).lines.map((l) => l.text);
  };
  const inOrder = [];
  for (const p of pages) inOrder.push(JSON.stringify(await heard(p)) === JSON.stringify(said));
  // A raised hand shows on every page: in the list and on the tile.
  const boId = await bo.evaluate(() => window.huiyi.state.me.id);
  await bo.click("#raise-hand");
  const handShown = [];
  for (const p of pages) {
    handShown.push(await until(p, (id) => window.huiyi.talk().hands.includes(id) &&
      (window.huiyi.state.me.id === id || !!document.querySelector(`.tile.hand[data-participant="${id}"]`)), boId));
  }
  // A reaction floats on the sender's tile on the others' pages.
  const anaId = await ana.evaluate(() => window.huiyi.state.me.id);
  await ana.click("#reactions button");
  const reaction = await until(bo, (id) => !!document.querySelector(`.tile[data-participant="${id}"] .reaction`), anaId);
  // Late: the lines said before, and the hand.
  const late = await open("dee");
  await until(late, () => !!window.huiyi.state.me);
  const lateTalk = await talk(late);
  const lateOk = JSON.stringify(lateTalk.lines.map((l) => l.text)) === JSON.stringify(said) && lateTalk.hands.includes(boId);
  const names = await late.evaluate(() => [...document.querySelectorAll("#people-list li")].map((li) => li.textContent));
  result = {
    ok: inOrder.every(Boolean) && handShown.every(Boolean) && reaction && lateOk && names.length === 4,
    inOrder, handShown, reaction, late: lateTalk, people: names,
  };
  return result;
});
