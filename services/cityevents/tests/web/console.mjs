// The operator console, driven in headless Chromium by Playwright (run by
// services/cityevents/tests/web.rs against an all-in-one it started).
//
// An operator signs in with the banner's one-time link, opens the gateway's flags page, turns the
// personal feed off (a reason and the confirmation are required: without the confirmation the
// browser refuses to send the form), sees the site's For you page answer 404 at once, then
// brings the flag back to its default and sees the page answer again. The flag's history names
// the browser session as the actor. Every console page is checked with axe-core (no serious or
// critical violation) and logs no console error.
//
// Env: SIGN_IN_URL (the banner's one-time link), MANAGEMENT_URL (the gateway's management
// listener), BASE_URL (the site), SHOTS_DIR, CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const { SIGN_IN_URL, MANAGEMENT_URL, BASE_URL, SHOTS_DIR } = process.env;
if (!SIGN_IN_URL || !MANAGEMENT_URL || !BASE_URL || !SHOTS_DIR) {
  throw new Error("SIGN_IN_URL, MANAGEMENT_URL, BASE_URL and SHOTS_DIR must be set");
}
mkdirSync(SHOTS_DIR, { recursive: true });
const FLAG = "cityevents.feed.for_you";

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
});
const context = await browser.newContext({ bypassCSP: true, viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
const errors = [];
page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
page.on("pageerror", (e) => errors.push(String(e)));

async function check(label) {
  expect(errors.length === 0, `${label}: console errors: ${errors.join(" | ")}`);
  await page.addScriptTag({ content: AXE });
  const result = await page.evaluate(async () =>
    // eslint-disable-next-line no-undef
    await axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  expect(bad.length === 0, `${label}: axe: ${bad.map((v) => `${v.id} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`).join("; ")}`);
  await page.screenshot({ path: join(SHOTS_DIR, `console-${label}.png`), fullPage: true });
}

/** The site's For you page's status, as a signed-out visitor gets it (no redirect followed). */
async function forYou() {
  const r = await page.request.get(`${BASE_URL}/feed/for-you`, { maxRedirects: 0, headers: { accept: "text/html" } });
  return r.status();
}

try {
  await page.goto(SIGN_IN_URL);
  expect(page.url().endsWith("/admin/status"), `the link signs in: at ${page.url()}`);
  expect((await forYou()) !== 404, "the feed is on by default");

  await page.goto(`${MANAGEMENT_URL}/admin/flags`);
  await check("flags");
  const card = page.locator(`article[id="flag-${FLAG}"]`);
  expect((await card.locator("h3").innerText()).includes("built-in default"), "the flag's source is shown");

  // Without the confirmation the form is not sent (the checkbox is required).
  await card.locator("input[name=reason]").fill("incident 42: feed overloads the events service");
  await card.getByRole("button", { name: "Turn off" }).click();
  expect(page.url().startsWith(`${MANAGEMENT_URL}/admin/flags`) && !page.url().includes("changed="), "not sent unconfirmed");
  await card.locator("input[name=confirm]").check();
  await card.getByRole("button", { name: "Turn off" }).click();
  await page.waitForURL(/changed=/);
  expect((await page.locator("[role=status]").innerText()).includes(`Changed ${FLAG}`), "the page says it changed");
  await check("flag-changed");
  expect((await forYou()) === 404, "the site follows at once: For you is gone");

  // Back to the built-in default.
  const again = page.locator(`article[id="flag-${FLAG}"]`);
  expect((await again.locator("h3").innerText()).includes("runtime override"), "now an override");
  await again.locator("input[name=reason]").fill("incident 42 resolved");
  await again.locator("input[name=confirm]").check();
  await again.getByRole("button", { name: "Back to the default" }).click();
  await page.waitForURL(/changed=/);
  expect((await forYou()) !== 404, "For you is back");

  const history = await (await page.request.get(`${MANAGEMENT_URL}/admin/flags/${FLAG}/history`)).json();
  const actors = history.changes.map((c) => c.actor);
  expect(history.changes.length === 2 && actors.every((a) => a.startsWith("operator:")), `history: ${JSON.stringify(history)}`);
  expect(history.changes[1].reason.startsWith("incident 42:"), "the reason is kept");
  console.log("console journey passed");
} finally {
  await browser.close();
}
