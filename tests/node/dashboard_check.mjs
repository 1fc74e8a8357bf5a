// Drives the gateway's dashboard in a real browser (Debian's chromium through
// playwright-core): signs in as a key holder, then as the operator, reads what the
// pages show and prints it as JSON for tests/test_dashboard_browser.py to check
// against the usage log.  Screenshots go to the directory given.
// usage: node dashboard_check.mjs <base url> <key> <admin key> <screenshot dir>
import { chromium } from "playwright-core";

const [base, key, adminKey, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const out = { errors: [] };
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  // CSP violations and script errors; an expected 403 (the operator page) is not one
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) out.errors.push(m.text());
  });
  page.on("pageerror", (e) => out.errors.push(String(e)));

  const signIn = async (secret) => {
    await page.goto(`${base}/dashboard/`);
    await page.fill("#key", secret);
    await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  };
  const rows = (cls) => page.$$eval(`table.${cls} tbody tr`, (trs) =>
    trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)));
  const bars = () => page.$$eval("svg.chart rect.bar", (rs) =>
    rs.map((r) => ({ x: r.dataset.x, series: r.dataset.series || null, value: Number(r.dataset.value) })));

  await signIn(key);
  out.holder = {
    url: new URL(page.url()).pathname,
    tier: await page.textContent("#tier"),
    models: await page.$$eval("#models li", (lis) => lis.map((li) => li.textContent)),
    limits: await rows("limits"),
    totals: await rows("totals"),
    recent: await rows("recent"),
    bars: await bars(),
    cookieVisibleToScript: await page.evaluate(() => document.cookie),
    storage: await page.evaluate(() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage)),
  };
  await page.screenshot({ path: `${shots}/key-holder.png`, fullPage: true });
  const ops = await page.goto(`${base}/dashboard/ops`);
  out.holder.opsStatus = ops.status();
  await page.goto(`${base}/dashboard/me`);
  await Promise.all([page.waitForNavigation(), page.click("header form button")]);  // sign out (a POST)
  out.afterSignOut = new URL(page.url()).pathname;

  await signIn(adminKey);
  out.operator = {
    url: new URL(page.url()).pathname,
    byTier: await rows("by-tier"),
    byKey: await rows("by-key"),
    byModel: await rows("by-model"),
    errors: await rows("errors"),
    latency: await rows("latency"),
    keys: await rows("keys"),
    bars: await bars(),
    text: await page.textContent("body"),
  };
  await page.screenshot({ path: `${shots}/operator.png`, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
