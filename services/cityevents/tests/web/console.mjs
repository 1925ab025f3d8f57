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
// Then, on the auth service's operations page (the same sign-in covers it), the operator drains
// the instance and sees its readiness answer 503 then 200 again, turns debug logging on for a
// few seconds and sees it revert by itself, runs a worker now and sees its run count grow,
// pauses and resumes a consumer and sees the consumer_paused gauge follow, rotates the data keys
// and sees the new key become active with every address moved to it; each change is in
// the service's audit log with the session as the actor, and on the page's recent changes.
//
// Env: SIGN_IN_URL (the banner's one-time link), MANAGEMENT_URL (the gateway's management
// listener), BASE_URL (the site), AUTH_MANAGEMENT_URL and AUTH_URL (the auth service's
// management and public listeners), SHOTS_DIR, CHROMIUM (default /usr/bin/chromium).
import { expect, open } from "./console-browser.mjs";

const { SIGN_IN_URL, MANAGEMENT_URL, BASE_URL, AUTH_MANAGEMENT_URL, AUTH_URL, SHOTS_DIR } = process.env;
if (!SIGN_IN_URL || !MANAGEMENT_URL || !BASE_URL || !AUTH_MANAGEMENT_URL || !AUTH_URL || !SHOTS_DIR) {
  throw new Error("SIGN_IN_URL, MANAGEMENT_URL, BASE_URL, AUTH_MANAGEMENT_URL, AUTH_URL and SHOTS_DIR must be set");
}
const FLAG = "cityevents.feed.for_you";

const { browser, page, check } = await open(SHOTS_DIR);

/** The site's For you page's status, as a signed-out visitor gets it (no redirect followed). */
async function forYou() {
  const r = await page.request.get(`${BASE_URL}/feed/for-you`, { maxRedirects: 0, headers: { accept: "text/html" } });
  return r.status();
}

try {
  // A sign-up before any status page is read (the page reads the figures once a minute).
  const signUp = await page.request.post(`${BASE_URL}/api/v1/auth/register`, {
    data: { email: `figures-${Date.now()}@example.com`, password: "correct horse battery staple 42", name: "Figures" },
  });
  expect(signUp.status() === 202, `sign-up: ${signUp.status()} ${await signUp.text()}`);
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

  // The product figures: the sign-up made first is one of the last hour, counted by auth and
  // shown at the top of the all-in-one's status page.
  const figures = (await (await page.request.get(`${AUTH_MANAGEMENT_URL}/admin/status`, { headers: { accept: "application/json" } })).json()).product;
  const signUps = figures.figures.find((f) => f.name === "sign-ups");
  expect(signUps && signUps.last_hour >= 1 && signUps.last_day >= signUps.last_hour, `auth's figures: ${JSON.stringify(figures)}`);
  await page.goto(`${MANAGEMENT_URL}/admin/status?refresh=off`);
  const top = await page.locator("#product").innerText();
  for (const name of ["sign-ups", "joins", "promotions", "mails sent", "mails failed"]) {
    expect(top.includes(name), `${name} at the top of the status page: ${top}`);
  }
  await check("status");

  // The auth service's operations page.
  const OPS = `${AUTH_MANAGEMENT_URL}/admin/console`;
  const json = async (url) => (await page.request.get(url, { headers: { accept: "application/json" } })).json();
  const ready = async () => (await page.request.get(`${AUTH_URL}/health/ready`)).status();
  /** Fills the form in `scope`, ticks the confirmation and presses `button`; waits for the notice. */
  async function act(scope, button, reason, fields = {}) {
    const form = page.locator(scope);
    for (const [name, value] of Object.entries(fields)) await form.locator(`[name=${name}]`).fill(value);
    await form.locator("input[name=reason]").fill(reason);
    await form.locator("input[name=confirm]").check();
    await form.getByRole("button", { name: button }).click();
    await page.waitForURL(/done=/);
    return page.locator("[role=status]").innerText();
  }
  async function eventually(what, f, ms = 10000) {
    const until = Date.now() + ms;
    for (;;) {
      if (await f()) return;
      if (Date.now() > until) throw new Error(`timed out: ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  await page.goto(OPS);
  await check("operate");
  expect((await ready()) === 200, "auth is ready");

  // Drain, then undrain.
  expect((await act("#instance form", "Drain", "incident 43: move auth traffic off this node")).includes("Drained"), "drain notice");
  expect((await ready()) === 503, "a drained instance answers readiness with 503");
  const reason = await (await page.request.get(`${AUTH_URL}/health/ready`)).text();
  expect(reason.includes("drained: incident 43"), `readiness says why: ${reason}`);
  await check("drained");
  await act("#instance form", "Undrain", "incident 43 over");
  await eventually("auth ready again", async () => (await ready()) === 200);

  // Debug logging for 3 s, then back by itself.
  const before = (await json(`${AUTH_MANAGEMENT_URL}/admin/log-level`)).level;
  await act("#log-level form", "Set", "incident 43: debug the sign-in path", { level: "info,cityevents_auth=debug", expires_in: "3s" });
  const during = await json(`${AUTH_MANAGEMENT_URL}/admin/log-level`);
  expect(during.level === "info,cityevents_auth=debug" && during.reverts_to === before, `set with an expiry: ${JSON.stringify(during)}`);
  expect((await page.locator("#log-level").innerText()).includes("goes back to"), "the page says when it reverts");
  await eventually("the level reverts", async () => (await json(`${AUTH_MANAGEMENT_URL}/admin/log-level`)).level === before);

  // Run a worker now: auth-prune runs every 10 minutes, so a second run within seconds is ours.
  const runs = async () => (await json(`${AUTH_MANAGEMENT_URL}/admin/status`)).workers.find((w) => w.name === "auth-prune").runs;
  await eventually("auth-prune's first run", async () => (await runs()) >= 1);
  const first = await runs();
  expect((await act('tr[id="worker-auth-prune"]', "Run now", "incident 43: prune expired sessions now")).includes("Run of auth-prune requested"), "run notice");
  await eventually("the requested run", async () => (await runs()) === first + 1);

  // Pause a consumer, then resume it.
  const paused = async () => {
    const m = await (await page.request.get(`${AUTH_MANAGEMENT_URL}/metrics`)).text();
    const line = m.split("\n").find((l) => l.startsWith("consumer_paused{") && l.includes('group="auth-sessions"'));
    return line ? Number(line.split(" ").pop()) : NaN;
  };
  const rowId = "consumer-cityevents.sessions-auth-sessions";
  await act(`tr[id="${rowId}"]`, "Pause", "incident 43: stop syncing sessions");
  await eventually("the consumer pauses", async () => (await paused()) === 1);
  expect((await page.locator(`tr[id="${rowId}"]`).innerText()).includes("paused"), "the page shows it paused");
  expect((await ready()) === 200, "a paused consumer keeps the instance ready");
  await check("paused");
  await act(`tr[id="${rowId}"]`, "Resume", "incident 43 over");
  await eventually("the consumer resumes", async () => (await paused()) === 0);

  // Rotate auth's data keys: the new key becomes active once every instance can know it, and
  // the worker moves every encrypted address to it.
  expect((await page.locator("#data-keys").innerText()).includes("Active key: dev"), "the development key is active");
  expect((await act("#data-keys form", "Rotate now", "incident 43: the data key may have leaked")).includes("Data key rot-1 made"), "rotate notice");
  expect((await page.locator("#data-keys").innerText()).includes("pending"), "the new key is pending at first");
  await check("rotated");
  const keyMetrics = async () => (await (await page.request.get(`${AUTH_MANAGEMENT_URL}/metrics`)).text()).split("\n");
  await eventually(
    "rot-1 active with every address on it",
    async () => {
      const m = await keyMetrics();
      const moved = m.find((l) => l.startsWith('data_keys_values{key="rot-1"}'));
      return moved && Number(moved.split(" ").pop()) >= 1 && m.includes("data_keys_pending_values 0");
    },
    60000,
  );
  await page.goto(OPS);
  expect((await page.locator("#data-keys").innerText()).includes("Active key: rot-1"), "the page shows the new key active");

  // Every change is in the audit log, with the session as the actor, and on the page.
  const audit = await json(`${AUTH_MANAGEMENT_URL}/admin/audit?format=json&limit=50`);
  const mine = audit.items.filter((i) => i.actor.startsWith("operator:"));
  for (const action of ["instance.drain", "instance.undrain", "log_level.set", "worker.run", "consumer.pause", "consumer.resume", "data_keys.rotate"]) {
    expect(mine.some((i) => i.action === action), `${action} in the audit log: ${JSON.stringify(mine.map((i) => i.action))}`);
  }
  const drained = mine.find((i) => i.action === "instance.drain");
  expect(drained.details.reason.startsWith("incident 43") && drained.details.after.drained, `the drain's details: ${JSON.stringify(drained)}`);
  expect((await page.locator("#changes").innerText()).includes("consumer.resume"), "the page lists the changes");
  console.log("console journey passed");
} finally {
  await browser.close();
}
