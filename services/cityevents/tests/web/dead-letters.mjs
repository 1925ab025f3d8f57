// Dead letters from the operator console, driven in headless Chromium by Playwright (run by
// services/cityevents/tests/web.rs against an all-in-one on NATS, after it published two
// join changes no handler can read to the platform's namespace).
//
// The operator signs in, opens the notifier's operations page, waits for both letters in
// cityevents.joins's DLQ, opens one and reads its reason and data, discards it (it is gone from
// the page), replays the other (still unreadable, it dies again and comes back), then purges the
// topic's DLQ (empty). Each change is listed on the page's recent changes with the session as
// the actor. The page is checked with axe-core and logs no console error.
//
// Env: SIGN_IN_URL, NOTIFIER_MANAGEMENT_URL, POISON (the two event ids, comma-separated),
// SHOTS_DIR, CHROMIUM (default /usr/bin/chromium).
import { expect, open } from "./console-browser.mjs";

const { SIGN_IN_URL, NOTIFIER_MANAGEMENT_URL, POISON, SHOTS_DIR } = process.env;
if (!SIGN_IN_URL || !NOTIFIER_MANAGEMENT_URL || !POISON || !SHOTS_DIR) {
  throw new Error("SIGN_IN_URL, NOTIFIER_MANAGEMENT_URL, POISON and SHOTS_DIR must be set");
}
const [first, second] = POISON.split(",");
const OPS = `${NOTIFIER_MANAGEMENT_URL}/admin/console`;

const { browser, page, check } = await open(SHOTS_DIR);

/** Reloads the page until `f` holds (the broker's DLQ is read on each load). */
async function until(what, f, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    await page.goto(OPS);
    if (await f()) return;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

const letter = (id) => page.locator(`#dlq-cityevents\\.joins details[id="letter-${id}"]`);

/** Opens the letter (or takes the topic's form), fills the reason, confirms and presses `button`. */
async function act(form, button, reason) {
  await form.locator("input[name=reason]").fill(reason);
  await form.locator("input[name=confirm]").check();
  await form.getByRole("button", { name: button, exact: true }).click();
  await page.waitForURL(/done=/);
  return page.locator("[role=status]").innerText();
}

try {
  await page.goto(SIGN_IN_URL);
  expect(page.url().endsWith("/admin/status"), `the link signs in: at ${page.url()}`);
  await until("both letters in the DLQ", async () => (await letter(first).count()) > 0 && (await letter(second).count()) > 0);
  await check("dead-letters");

  // Inspect: the reason the handler gave and the event's data.
  const one = letter(first).first();
  await one.locator("summary").click();
  const text = await one.innerText();
  expect(text.includes("join.created") && text.includes('"poison": true'), `the letter's type and data: ${text}`);

  // Discard the first: gone from the DLQ, every group's copy.
  const discarded = await act(one.locator("form"), "Discard", "incident 44: a bad publish, nothing to redo");
  expect(discarded.includes(`Discarded dead letter ${first}`), discarded);
  expect((await letter(first).count()) === 0, "the discarded letter is gone");

  // Replay the second: it goes back to its group, fails again (still unreadable) and returns.
  const two = letter(second).first();
  await two.locator("summary").click();
  const attempts = await two.locator("summary").innerText();
  const replayed = await act(two.locator("form"), "Replay", "incident 44: retry after the fix");
  expect(replayed.includes(`Replayed dead letter ${second}`), replayed);
  await until("the replayed letter dies again", async () => (await letter(second).count()) > 0);
  expect(attempts.length > 0, "attempts shown");

  // Purge the topic's DLQ.
  const purged = await act(page.locator("#dlq-cityevents\\.joins form.filter"), "Purge all", "incident 44 closed");
  expect(/Purged \d+ dead letters? of cityevents\.joins/.test(purged), purged);
  expect((await page.locator("#dlq-cityevents\\.joins details").count()) === 0, "nothing left");

  const changes = await page.locator("#changes").innerText();
  for (const action of ["dead_letters.discard", "dead_letters.replay", "dead_letters.purge"]) {
    expect(changes.includes(action), `${action} on the page: ${changes}`);
  }
  expect(changes.includes("operator:"), "the session is the actor");
  await check("dead-letters-purged");
  console.log("dead letters journey passed");
} finally {
  await browser.close();
}
