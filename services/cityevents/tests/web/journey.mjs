// City Events' web front end, driven in headless Chromium by Playwright (run by
// services/cityevents/tests/web.rs against an all-in-one it started).
//
// The journey: a visitor uses the site from the keyboard (skip link, search; focus visible); an
// organizer signs up, confirms the address through the mail the development
// transport wrote, logs in, creates a one-seat event and publishes it; a second person joins
// (with JavaScript off: every page and form works without it); a third joins the waitlist; the
// second leaves, the third is promoted and sees the notification; the organizer edits the
// event; an admin makes a fourth person a moderator, who cancels the event with a reason,
// which the third sees on the event and in a notification. The third changes their password
// and mail settings, and logs a second device out from the account page; the second logs out
// everywhere. Every page is checked with axe-core (no
// serious or critical violation), logs no console error (a CSP violation is one), and is kept
// as a screenshot at phone and desktop width.
//
// Env: BASE_URL, MAIL_DIR (the all-in-one's data/mail), SHOTS_DIR (where screenshots go),
// ADMIN_EMAIL (an admin made with `cityevents auth admin create`, whose password is the
// journey's), CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";
import { readFileSync, readdirSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const BASE = process.env.BASE_URL;
const MAIL_DIR = process.env.MAIL_DIR;
const SHOTS = process.env.SHOTS_DIR;
const ADMIN_EMAIL = process.env.ADMIN_EMAIL;
const PASSWORD = "correct horse battery staple";
const WIDTHS = { phone: { width: 360, height: 740 }, desktop: { width: 1280, height: 800 } };
const run = Date.now().toString(36);

if (!BASE || !MAIL_DIR || !SHOTS || !ADMIN_EMAIL) {
  throw new Error("BASE_URL, MAIL_DIR, SHOTS_DIR and ADMIN_EMAIL must be set");
}
mkdirSync(SHOTS, { recursive: true });

const failures = [];
const people = [];
const checked = new Set();

function fail(message) {
  failures.push(message);
  console.error(`FAIL ${message}`);
}

function expect(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

/** A person with their own browser context. */
async function person(name, { javascript = true } = {}) {
  // axe is injected as a script: the site's CSP (rightly) refuses inline script, so the test
  // context bypasses it for axe alone; CSP violations of the site's own files still show in
  // the console, which fails the run.
  const context = await browser.newContext({ javaScriptEnabled: javascript, bypassCSP: true, viewport: WIDTHS.desktop });
  const page = await context.newPage();
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  const p = { name, email: `${name.toLowerCase()}-${run}@example.com`, context, page, errors, javascript };
  people.push(p);
  return p;
}

/** Checks the page: axe (serious and critical fail), console errors, no sideways scrolling,
 *  screenshots at both widths. */
async function check(p, label) {
  const page = p.page;
  if (p.errors.length) {
    fail(`${label}: console errors: ${p.errors.join(" | ")}`);
    p.errors.length = 0;
  }
  if (p.javascript) {
    await page.addScriptTag({ content: AXE });
    const result = await page.evaluate(async () =>
      // eslint-disable-next-line no-undef
      await axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] } }));
    for (const v of result.violations.filter((v) => v.impact === "serious" || v.impact === "critical")) {
      fail(`${label}: axe ${v.impact} ${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`);
    }
  }
  if (!checked.has(label)) {
    checked.add(label);
    for (const [width, size] of Object.entries(WIDTHS)) {
      await page.setViewportSize(size);
      const wide = await page.evaluate(() => document.documentElement.scrollWidth);
      if (wide > size.width) fail(`${label}: ${wide} px wide at ${width} width (${size.width} px): it scrolls sideways`);
      await page.screenshot({ path: join(SHOTS, `${label}-${width}.png`), fullPage: true });
    }
    await page.setViewportSize(WIDTHS.desktop);
  }
}

/** The latest mail to `to` that has a link to `path`, decoded; waits up to 15 s. */
async function link(to, path) {
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    let files = [];
    try { files = readdirSync(MAIL_DIR).filter((f) => f.endsWith(".eml")).sort(); } catch { /* not yet */ }
    for (const f of files.reverse()) {
      const raw = readFileSync(join(MAIL_DIR, f), "utf8");
      const text = raw.replace(/=\r?\n/g, "").replace(/=([0-9A-F]{2})/g, (_, h) => String.fromCharCode(parseInt(h, 16)));
      if (!text.includes(`To: ${to}`)) continue;
      const m = text.match(new RegExp(`https?://[^\\s"<>]+${path}\\?token=[A-Za-z0-9_-]+`));
      if (m) return new URL(m[0]).pathname + new URL(m[0]).search;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`no mail to ${to} with a ${path} link`);
}

async function signUpAndLogIn(p, shots) {
  const page = p.page;
  await page.goto(`${BASE}/signup`);
  if (shots) await check(p, "signup");
  await page.getByLabel("Your name").fill(p.name);
  await page.getByLabel("E-mail address").fill(p.email);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Create my account" }).click();
  await page.waitForURL(/\/login\?notice=registered/);
  expect(await page.getByText("Check your inbox").isVisible(), "registered notice");
  if (shots) await check(p, "login");
  await page.goto(`${BASE}${await link(p.email, "/verify-email")}`);
  if (shots) await check(p, "verify-email");
  await page.getByRole("button", { name: "Confirm my address" }).click();
  await page.waitForURL(/\/login\?notice=verified/);
  await logIn(p);
}

async function logIn(p, password = PASSWORD) {
  const page = p.page;
  if (!page.url().includes("/login")) await page.goto(`${BASE}/login`);
  await page.getByLabel("E-mail address").fill(p.email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(/notice=signed_in/);
  expect(await signedInAs(p), `${p.name} is shown signed in`);
}

async function signedInAs(p) {
  return ((await p.page.locator(".who").textContent()) || "").startsWith(p.name);
}

async function step(name, body) {
  try {
    await body();
    console.log(`ok   ${name}`);
  } catch (e) {
    fail(`${name}: ${e.message}`);
    for (const p of people) {
      await p.page.screenshot({ path: join(SHOTS, `failed-${p.name}.png`), fullPage: true }).catch(() => {});
    }
    throw e;
  }
}

let eventUrl;
try {
  const olive = await person("Olive");
  const bea = await person("Bea", { javascript: false });
  const cal = await person("Cal");
  const mo = await person("Mo");
  const ada = await person("Ada");
  ada.email = ADMIN_EMAIL;

  await step("an anonymous visitor sees the events list and a 404 page", async () => {
    await olive.page.goto(`${BASE}/`);
    await olive.page.getByRole("heading", { name: "Events", level: 1 }).waitFor();
    await check(olive, "events-empty");
    const missing = await olive.page.goto(`${BASE}/no-such-page`);
    expect(missing.status() === 404, `404 page answers 404, got ${missing.status()}`);
    olive.errors.length = 0; // the browser logs the page's own 404
    await check(olive, "not-found");
  });

  await step("the site works from the keyboard, with focus always visible", async () => {
    const page = olive.page;
    await page.goto(`${BASE}/`);
    const focused = () => page.evaluate(() => {
      const e = document.activeElement;
      const style = getComputedStyle(e);
      return { id: e.id, text: (e.textContent || "").trim(), outline: style.outlineStyle, width: style.outlineWidth };
    });
    await page.keyboard.press("Tab");
    let f = await focused();
    expect(f.text === "Skip to content", `the first Tab reaches the skip link, got "${f.text}"`);
    expect(f.outline !== "none" && f.width !== "0px", `focus on the skip link is visible (${f.outline} ${f.width})`);
    await page.keyboard.press("Enter");
    await page.keyboard.press("Tab");
    f = await focused();
    expect(f.id === "q", `after the skip link, Tab reaches the search field, got "${f.id || f.text}"`);
    expect(f.outline !== "none" && f.width !== "0px", "focus on the search field is visible");
    await page.keyboard.type("jazz");
    await page.keyboard.press("Enter");
    await page.waitForURL(/\?q=jazz/);
  });

  await step("the organizer signs up, confirms the address and logs in", () => signUpAndLogIn(olive, true));

  await step("the organizer creates a one-seat event and publishes it", async () => {
    const page = olive.page;
    await page.goto(`${BASE}/my/events`);
    await check(olive, "my-events-empty");
    await page.getByRole("link", { name: "Create an event" }).click();
    await check(olive, "event-new");
    await page.getByLabel("Title").fill(`Rooftop jazz ${run}`);
    await page.getByLabel("City").fill("Lisbon");
    await page.getByLabel("Category").fill("music");
    await page.getByLabel("Venue").fill("Terraço 7");
    await page.getByLabel(/Time zone/).fill("Europe/Lisbon");
    await page.getByLabel(/Starts/).fill("2031-06-20T21:00");
    await page.getByLabel("Ends").fill("2031-06-20T23:30");
    await page.getByLabel(/Seats/).fill("1");
    await page.getByLabel("Description").fill("Live trio on the roof.\n\nBring a jacket.");
    await page.getByRole("button", { name: "Save as draft" }).click();
    await page.waitForURL(/\/my\/events\/[0-9a-f-]+\?notice=created/);
    await check(olive, "manage-draft");
    await page.getByRole("button", { name: "Publish" }).click();
    await page.waitForURL(/notice=published/);
    await check(olive, "manage-published");
    await page.getByRole("link", { name: "View the public page" }).click();
    eventUrl = page.url();
    await page.getByText("1 of 1 seats free").waitFor();
    await check(olive, "event-organizer");
  });

  await step("a second person, without JavaScript, signs up, finds the event and joins", async () => {
    await signUpAndLogIn(bea, false);
    const page = bea.page;
    await page.goto(`${BASE}/?q=${encodeURIComponent(`jazz`)}&city=Lisbon`);
    await page.getByRole("link", { name: `Rooftop jazz ${run}` }).click();
    await page.getByRole("button", { name: "Join", exact: true }).click();
    await page.waitForURL(/notice=joined/);
    await page.getByText("You are going.").waitFor();
  });

  await step("a third person joins the waitlist", async () => {
    await signUpAndLogIn(cal, false);
    const page = cal.page;
    await page.goto(`${BASE}/?q=jazz`);
    await check(cal, "events");
    await page.goto(eventUrl);
    await page.getByText("Full · join the waitlist").waitFor();
    await check(cal, "event-full");
    await page.getByRole("button", { name: "Join the waitlist" }).click();
    await page.waitForURL(/notice=waitlisted/);
    await page.getByText("You are on the waitlist, number 1.").waitFor();
    await check(cal, "event-waitlisted");
    await page.goto(`${BASE}/my/joins`);
    await page.getByText("On the waitlist").waitFor();
    await check(cal, "my-joins");
  });

  await step("the second person leaves; the third is promoted and notified", async () => {
    await bea.page.goto(eventUrl);
    await bea.page.getByRole("button", { name: "Leave this event" }).click();
    await bea.page.waitForURL(/notice=left/);
    const page = cal.page;
    const deadline = Date.now() + 20000;
    for (;;) {
      await page.goto(eventUrl);
      if (await page.getByText("You are going.").isVisible()) break;
      expect(Date.now() < deadline, "the waitlisted person was not promoted within 20 s");
      await page.waitForTimeout(300);
    }
    await check(cal, "event-going");
    for (;;) {
      await page.goto(`${BASE}/notifications`);
      if (await page.locator(".note.unread").count() > 0) break;
      expect(Date.now() < deadline, "no notification within 20 s");
      await page.waitForTimeout(300);
    }
    expect(await page.locator(".badge").isVisible(), "the unread badge shows");
    await check(cal, "notifications");
    await page.getByRole("button", { name: "Mark all as read" }).click();
    await page.waitForURL(/notice=read/);
    expect(await page.locator(".note.unread").count() === 0, "all read");
  });

  await step("the organizer sees the participant and edits the event", async () => {
    const page = olive.page;
    await page.goto(eventUrl.replace("/events/", "/my/events/"));
    await page.getByRole("cell", { name: "Cal", exact: true }).waitFor();
    await check(olive, "manage-participants");
    await page.getByRole("link", { name: "Edit" }).click();
    await check(olive, "event-edit");
    await page.getByLabel("Venue").fill("Terraço 9");
    await page.getByRole("button", { name: "Save changes" }).click();
    await page.waitForURL(/notice=saved/);
    await page.goto(eventUrl);
    await page.getByText("Terraço 9").waitFor();
  });

  await step("an admin finds an account and makes it a moderator", async () => {
    await signUpAndLogIn(mo, false);
    const page = ada.page;
    await logIn(ada);
    await page.getByRole("link", { name: "Accounts" }).click();
    await check(ada, "admin-users");
    await page.getByLabel("Name or exact e-mail address").fill(mo.email);
    await page.getByRole("button", { name: "Find" }).click();
    await page.getByLabel("Role of Mo").selectOption("moderator");
    await page.getByRole("button", { name: "Change role" }).click();
    await page.waitForURL(/notice=role_changed/);
    expect(await page.getByLabel("Role of Mo").inputValue() === "moderator", "Mo is a moderator");
    const notAdmin = await cal.page.goto(`${BASE}/admin/users`);
    expect(notAdmin.status() === 403, `a member sees the accounts page: ${notAdmin.status()}`);
    cal.errors.length = 0; // the browser logs the page's own 403
  });

  await step("the moderator cancels the event with a reason; the participant is told", async () => {
    const page = mo.page;
    // The role applies from the next session refresh: a new sign-in gives it at once.
    await page.getByRole("button", { name: "Log out" }).click();
    await page.waitForURL(/notice=signed_out/);
    await logIn(mo);
    await page.goto(eventUrl);
    await page.getByRole("link", { name: "Moderate this event" }).click();
    await page.getByRole("heading", { name: /^Moderate/ }).waitFor();
    await check(mo, "moderate-event");
    await page.locator("#reason").fill("Breaks the venue's safety rules");
    await page.getByRole("button", { name: "Cancel the event" }).click();
    await page.waitForURL(/notice=canceled/);
    await cal.page.goto(eventUrl);
    await cal.page.getByText("Reason: Breaks the venue's safety rules").waitFor();
    await check(cal, "event-canceled");
    await olive.page.goto(eventUrl.replace("/events/", "/my/events/"));
    await olive.page.getByText("Reason: Breaks the venue's safety rules").waitFor();
    const deadline = Date.now() + 20000;
    for (;;) {
      await cal.page.goto(`${BASE}/notifications`);
      if (await cal.page.getByText(`Rooftop jazz ${run} was canceled`).count() > 0) break;
      expect(Date.now() < deadline, "no cancellation notification within 20 s");
      await cal.page.waitForTimeout(300);
    }
  });

  await step("a person changes their password and mail settings", async () => {
    const page = cal.page;
    await page.getByRole("link", { name: /^Cal/ }).click();
    await page.getByRole("heading", { name: "Your account", level: 1 }).waitFor();
    await check(cal, "account");
    await page.getByLabel("Current password").fill("not my password at all");
    await page.getByLabel("New password").fill(`${PASSWORD} again`);
    await page.getByRole("button", { name: "Change my password" }).click();
    await page.locator("#current_password-error").waitFor();
    cal.errors.length = 0; // the browser logs the form page's own 400
    await page.getByLabel("Current password").fill(PASSWORD);
    await page.getByLabel("New password").fill(`${PASSWORD} again`);
    await page.getByRole("button", { name: "Change my password" }).click();
    await page.waitForURL(/notice=password_changed/);
    expect(await signedInAs(cal), "still signed in after changing the password");
    await page.getByRole("link", { name: "Choose which mails you get" }).click();
    await check(cal, "mail-settings");
    await page.getByLabel("An event I joined is canceled").uncheck();
    await page.getByRole("button", { name: "Save" }).click();
    await page.waitForURL(/notice=saved/);
    expect(!(await page.getByLabel("An event I joined is canceled").isChecked()), "the choice is kept");
    expect(await page.getByLabel("I get a seat from the waitlist").isChecked(), "the others stay on");
  });

  await step("a session logged out from the account page ends on that device only", async () => {
    const phone = await person("Cal");
    phone.email = cal.email;
    await logIn(phone, `${PASSWORD} again`);
    const page = cal.page;
    await page.goto(`${BASE}/account`);
    const rows = page.locator("tbody tr");
    expect(await rows.count() === 2, `two sessions listed, got ${await rows.count()}`);
    // Most recently used first: the phone's sign-in.
    await rows.first().getByRole("button", { name: /^Log out/ }).click();
    await page.waitForURL(/notice=session_ended/);
    await page.getByText("That session is logged out.").waitFor();
    expect(await signedInAs(cal), "this browser stays signed in");
    const deadline = Date.now() + 10000;
    for (;;) {
      await phone.page.goto(`${BASE}/my/joins`);
      if (phone.page.url().includes("/login")) break;
      expect(Date.now() < deadline, "the ended session still shows pages after 10 s");
      await phone.page.waitForTimeout(300);
    }
    await page.goto(`${BASE}/account`);
    expect(await page.locator("tbody tr").count() === 1, "one session left");
  });

  await step("logging out everywhere, without JavaScript, ends every session", async () => {
    const page = bea.page;
    await page.goto(`${BASE}/account`);
    await page.getByRole("button", { name: "Log out everywhere" }).click();
    await page.waitForURL(/notice=signed_out_everywhere/);
    expect(await page.getByRole("link", { name: "Log in" }).isVisible(), "signed out");
  });

  await step("a form without its CSRF token is refused", async () => {
    const res = await cal.page.request.post(`${BASE}/logout`, { form: { csrf: "forged" }, maxRedirects: 0 });
    expect(res.status() === 403, `forged logout answered ${res.status()}`);
    await cal.page.goto(`${BASE}/`);
    expect(await signedInAs(cal), "still signed in");
  });

  await step("logging out ends the session", async () => {
    await olive.page.getByRole("button", { name: "Log out" }).click();
    await olive.page.waitForURL(/notice=signed_out/);
    expect(await olive.page.getByRole("link", { name: "Log in" }).isVisible(), "signed out");
    await check(olive, "signed-out");
  });
} catch (e) {
  if (!failures.length) fail(String(e && e.stack || e));
} finally {
  await browser.close();
}

if (failures.length) {
  console.error(`${failures.length} failure(s)`);
  process.exit(1);
}
console.log(`all journeys passed; screenshots in ${SHOTS}`);
