// The dashboard in a real browser: headless Chromium driven by playwright-core.
//
//   node tests/dashboard/dashboard.mjs <base-url> <screenshot.png>
//
// Environment:
//   DASHBOARD_TOKEN      the server has an ACL: the page must first say so, then
//                        work once this token is entered in its token field
//   DASHBOARD_BASIC      user:password: the server wants HTTP Basic; the browser
//                        answers its challenges with these (as a person would
//                        in its prompt), the page needs nothing more
//   DASHBOARD_ODD_QUEUE  a queue (made by the caller) whose name looks like HTML:
//                        its row must show the name as text
//   DASHBOARD_FLOW       full (default) or short: publish, tail, pause and
//                        resume only (no second publish, policy or purge)
//   DASHBOARD_TAIL       a busy queue (fed by the caller) to tail at the end
//   DASHBOARD_SAMPLES    publish-rate samples (one a second) the page draws
//                        before the screenshot (default 3; 60 fills the sparklines)
//   DASHBOARD_SCHEME     light or dark (default light)
//   CHROMIUM             the browser (default /usr/bin/chromium)
//
// Exits 0 when every step passed, 1 with the failed step on stderr otherwise.
// tests/dashboard.rs runs it and checks the server's state afterwards.

import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);
if (!base || !screenshot) {
  console.error("usage: node dashboard.mjs <base-url> <screenshot.png>");
  process.exit(2);
}
const env = process.env;
const token = env.DASHBOARD_TOKEN || "";
const full = env.DASHBOARD_FLOW !== "short";
const samples = Math.max(1, Number(env.DASHBOARD_SAMPLES || 3));
const QUEUE = "dash/demo";
const VALUE = 'hello from the dashboard <b>&amp;</b> "quotes"';

let current = "start";
const started = Date.now();
const timings = [];
async function step(name, run) {
  current = name;
  const t = Date.now();
  await run();
  timings.push(`${name}: ${Date.now() - t} ms`);
}

/** Fails the current step when `condition` is false. */
function check(condition, message) {
  if (!condition) throw new Error(message);
}

const problems = [];
const browser = await chromium.launch({
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
let page;
try {
  const basic = env.DASHBOARD_BASIC ? env.DASHBOARD_BASIC.split(":") : null;
  const context = await browser.newContext({
    httpCredentials: basic ? { username: basic[0], password: basic.slice(1).join(":") } : undefined,
    viewport: { width: 1200, height: 800 },
    deviceScaleFactor: 1,
    colorScheme: env.DASHBOARD_SCHEME === "dark" ? "dark" : "light",
  });
  page = await context.newPage();
  page.setDefaultTimeout(10_000);
  page.on("pageerror", (err) => problems.push("uncaught in the page: " + err.message));
  page.on("console", (msg) => {
    if (/Content Security Policy/i.test(msg.text())) problems.push("CSP: " + msg.text());
  });
  const row = (name) => page.locator(`#queue-rows tr[data-queue="${name.replace(/["\\]/g, "\\$&")}"]`);
  const cellText = (locator, text) => locator.filter({ hasText: new RegExp(`^\\s*${text}\\s*$`) }).waitFor();

  await step("open /ui", async () => {
    const answer = await page.goto(base + "/ui");
    check(answer && answer.status() === 200, `GET /ui answered ${answer && answer.status()}`);
    await page.locator("h2", { hasText: "Queues" }).waitFor();
  });

  if (token) {
    await step("the page says a sign-in is needed", async () => {
      await page.locator("#conn[data-state=auth]").waitFor();
      await page.locator("#banner", { hasText: "401" }).waitFor();
    });
    await step("enter the token", async () => {
      await page.click("#token-toggle");
      await page.fill("#token", token);
      await page.click("#token-save");
      await page.locator("#banner").waitFor({ state: "hidden" });
    });
  }

  await step("the queue table is live", async () => {
    await page.locator("#conn[data-state=live]").waitFor();
  });

  if (env.DASHBOARD_ODD_QUEUE) {
    await step("a queue name that looks like HTML shows as text", async () => {
      const odd = env.DASHBOARD_ODD_QUEUE;
      await row(odd).locator(".name a", { hasText: odd }).waitFor();
      const injected = await page.locator("#queue-rows .name a *").count();
      check(injected === 0, `the queue name became ${injected} HTML element(s)`);
    });
  }

  await step("start the live tail before the queue exists", async () => {
    await page.fill("#tail-queue", QUEUE);
    await page.click("#tail-start");
    await page.locator("#tail-state[data-state=live]").waitFor();
  });

  await step("publish through the form", async () => {
    await page.fill("#pub-queue", QUEUE);
    await page.fill("#pub-value", VALUE);
    await page.click("#pub-send");
    await page.locator("#pub-out", { hasText: `published ${QUEUE}:1` }).waitFor();
  });

  await step("the message appears in the live tail", async () => {
    const line = page.locator("#tail-log li:not(.event)").filter({ hasText: `${QUEUE}:1` });
    await line.waitFor();
    const shown = await line.locator(".value").textContent();
    check(shown === VALUE, `the tail shows ${JSON.stringify(shown)}, not ${JSON.stringify(VALUE)}`);
    check(await page.locator("#tail-log b").count() === 0, "the message's HTML was rendered");
  });

  await step("the queue's row appears, started, with no message left (the tail took it)", async () => {
    await row(QUEUE).waitFor();
    await cellText(row(QUEUE).locator(".status .pill"), "running");
    await cellText(row(QUEUE).locator(".len"), "0");
  });

  await step("stop the tail", async () => {
    await page.click("#tail-stop");
    await page.locator("#tail-state[data-state=off]").waitFor();
  });

  if (full) await step("publish two more", async () => {
    for (const n of [2, 3]) {
      await page.fill("#pub-value", `message ${n}`);
      await page.click("#pub-send");
      await page.locator("#pub-out", { hasText: `published ${QUEUE}:${n}` }).waitFor();
    }
    await cellText(row(QUEUE).locator(".len"), "2");
  });

  await step("pause the queue", async () => {
    await row(QUEUE).locator(".act-pause", { hasText: "pause" }).click();
    await cellText(row(QUEUE).locator(".status .pill"), "paused");
    await cellText(row(QUEUE).locator(".act-pause"), "resume");
  });

  await step("resume the queue", async () => {
    await row(QUEUE).locator(".act-pause", { hasText: "resume" }).click();
    await cellText(row(QUEUE).locator(".status .pill"), "running");
  });

  if (full) await step("switch the policy to roundrobin", async () => {
    await cellText(row(QUEUE).locator(".policy .pill"), "broadcast");
    await row(QUEUE).locator(".act-policy").click();
    await cellText(row(QUEUE).locator(".policy .pill"), "roundrobin");
  });

  if (full) await step("purge, cancelled, changes nothing", async () => {
    await row(QUEUE).locator(".act-purge").click();
    await page.locator("#confirm[open]").waitFor();
    await page.locator("#confirm-text", { hasText: QUEUE }).waitFor();
    await page.click("#confirm-cancel");
    await page.locator("#confirm").waitFor({ state: "hidden" });
    await cellText(row(QUEUE).locator(".len"), "2");
  });

  if (full) await step("purge, confirmed, empties the queue", async () => {
    await row(QUEUE).locator(".act-purge").click();
    await page.locator("#confirm[open]").waitFor();
    await page.click("#confirm-ok");
    await page.locator(".toast", { hasText: `Purged ${QUEUE}` }).waitFor();
    await cellText(row(QUEUE).locator(".len"), "0");
  });

  if (env.DASHBOARD_TAIL) {
    await step("tail a busy queue from its row", async () => {
      await row(env.DASHBOARD_TAIL).locator(".act-tail").click();
      await page.locator("#tail-state[data-state=live]").waitFor();
      await page.locator("#tail-log li:not(.event)").first().waitFor();
    });
  }

  await step(`draw ${samples} rate samples, then take the screenshot`, async () => {
    await page.waitForFunction(
      (n) => (document.querySelector("#t-spark polyline")?.getAttribute("points") || "").split(" ").length >= n,
      samples,
      { timeout: samples * 1500 + 10_000 },
    );
    await page.mouse.move(0, 0);
    await page.evaluate(() => {
      for (const toast of document.querySelectorAll(".toast")) toast.remove();
      window.scrollTo(0, 0);
      document.querySelector(".table-wrap").scrollLeft = 0;
    });
    await page.screenshot({ path: screenshot, fullPage: true, animations: "disabled" });
  });

  check(problems.length === 0, problems.join("\n"));
  console.log(`dashboard: every step passed in ${Date.now() - started} ms; screenshot ${screenshot}`);
  if (env.DASHBOARD_VERBOSE) console.log(timings.join("\n"));
} catch (err) {
  console.error(`dashboard test failed at step "${current}": ${err.message.split("\n")[0]}`);
  if (problems.length) console.error(problems.join("\n"));
  if (page) {
    const failed = screenshot.replace(/\.png$/, "") + ".failed.png";
    await page.screenshot({ path: failed, fullPage: true }).catch(() => {});
    console.error(`the page at the failure: ${failed}`);
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
