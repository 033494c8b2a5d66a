// The GUI in real Chromium (Debian's, headless) against the control planes that
// crates/integration-tests/tests/gui.rs started: a global and zones zone-1 and zone-2, with a
// service that has instances in both zones. Each step asserts what the page shows and saves a
// screenshot in $GUI_ARTIFACTS.
//
// Env: GLOBAL_URL, ZONE1_URL (http://127.0.0.1:port), SERVICE (the cross-zone service),
// GUI_ARTIFACTS (a directory).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const { GLOBAL_URL, ZONE1_URL, SERVICE } = process.env;
const ARTIFACTS = process.env.GUI_ARTIFACTS || 'gui-artifacts';
for (const [k, v] of Object.entries({ GLOBAL_URL, ZONE1_URL, SERVICE })) {
  if (!v) throw new Error(`${k} is not set: run this through tests/gui.rs`);
}
mkdirSync(ARTIFACTS, { recursive: true });

let browser;
let page;
const requests = [];
const pageErrors = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // No traffic of Chromium's own: this machine's network is closed, and the GUI needs none.
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-gpu'],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on('request', (r) => requests.push(r.url()));
  page.on('pageerror', (e) => pageErrors.push(String(e)));
});

after(async () => {
  await browser?.close();
});

async function open(base, path) {
  await page.goto(`${base}/gui/${path}`);
  await page.waitForSelector('main[data-loaded]');
}

async function shot(name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** The text of the row of `testid`'s table whose first cell is `name`. */
async function row(testid, name) {
  const r = page.locator(`[data-testid="${testid}"] tbody tr`, { has: page.locator('td:first-child', { hasText: name }) });
  return (await r.first().innerText()).replace(/\s+/g, ' ');
}

/** Reloads the page with the Refresh button until `check` passes, for at most `ms`. */
async function eventually(what, check, ms = 30000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      return await check();
    } catch (e) {
      last = e;
    }
    await page.click('[data-testid="refresh"]');
    await page.waitForSelector('main[data-loaded]');
    await page.waitForTimeout(250);
  }
  throw new Error(`${what}: ${last && last.message}`);
}

test('overview shows mode, version, store and counts', async () => {
  await open(GLOBAL_URL, '');
  assert.equal(await page.textContent('[data-testid="overview-mode"] .value'), 'global');
  assert.match(await page.textContent('[data-testid="overview-store"] .value'), /memory|sqlite/);
  await eventually('both zones counted online', async () => {
    assert.equal(await page.textContent('[data-testid="overview-zones"] .value'), '2 / 2');
  });
  assert.equal(await page.textContent('[data-testid="overview-meshes"] .value'), '1');
  await shot('overview');
});

test('zones page shows both zones Online with their ingresses', async () => {
  await open(GLOBAL_URL, 'zones');
  await eventually('zones online with one ingress each', async () => {
    for (const zone of ['zone-1', 'zone-2']) {
      const text = await row('zone-table', zone);
      assert.match(text, /Online/, text);
      assert.match(text, /1 \/ 1/, `one ingress online: ${text}`);
    }
  });
  await shot('zones');
  await page.click('[data-testid="zone-table"] a:text-is("zone-1")');
  await page.waitForSelector('main[data-loaded="zones/zone-1"]');
  assert.match(await page.innerText('[data-testid="ingress-table"]'), /Online/);
  assert.match(await page.innerText('[data-testid="kds-stats"]'), /Mesh/);
  await shot('zone-detail');
});

test('zone ingress lists the services it offers', async () => {
  await open(GLOBAL_URL, 'zone-ingresses');
  const link = page.locator('[data-testid="ingress-table"] tbody a').first();
  await link.click();
  await page.waitForSelector('[data-testid="available-services"]');
  assert.match(await page.innerText('[data-testid="available-services"]'), new RegExp(SERVICE));
  await shot('zone-ingress');
});

test('services page shows the cross-zone service in both zones', async () => {
  await open(GLOBAL_URL, 'services');
  await eventually('service in both zones', async () => {
    const text = await row('service-table', SERVICE);
    assert.match(text, /zone-1, zone-2/, text);
    assert.match(text, /2 \/ 2/, `two instances online: ${text}`);
    assert.match(text, /Online/, text);
  });
  await shot('services');
});

test('meshes page shows the mTLS backend and proxy counts', async () => {
  await open(GLOBAL_URL, 'meshes');
  const text = await row('mesh-table', 'default');
  assert.match(text, /ca-1 \(builtin\)/, text);
  await shot('meshes');
});

test('proxies are filtered by zone, service and status on the server', async () => {
  await open(GLOBAL_URL, 'dataplanes');
  await page.fill('[data-testid="filter-zone"]', 'zone-2');
  await page.click('[data-testid="filter-apply"]');
  await page.waitForURL(/zone=zone-2/);
  await page.waitForSelector('main[data-loaded="dataplanes"]');
  const zones = await page.locator('[data-testid="dataplane-table"] tbody tr td:nth-child(2)').allInnerTexts();
  assert.ok(zones.length >= 2, `zone-2's proxies listed: ${zones}`);
  assert.ok(zones.every((z) => z === 'zone-2'), `only zone-2: ${zones}`);
  await page.fill('[data-testid="filter-service"]', 'no-such-service');
  await page.click('[data-testid="filter-apply"]');
  await page.waitForSelector('[data-testid="dataplane-table-empty"]');
  await page.fill('[data-testid="filter-service"]', '');
  await page.fill('[data-testid="filter-zone"]', '');
  await page.selectOption('[data-testid="filter-status"]', 'online');
  await page.click('[data-testid="filter-apply"]');
  await page.waitForURL(/status=online/);
  await page.waitForSelector('main[data-loaded="dataplanes"]');
  const statuses = await page.locator('[data-testid="dataplane-table"] [data-testid="status"]').allInnerTexts();
  assert.ok(statuses.length >= 3 && statuses.every((s) => s === 'Online'), `${statuses}`);
  assert.ok(requests.some((u) => u.includes('dataplanes/_overview') && u.includes('status=online')),
    'the filter went to the server');
  await shot('dataplanes');
});

test('the proxy list pages through the server', async () => {
  await open(GLOBAL_URL, 'dataplanes?size=2');
  assert.equal(await page.textContent('[data-testid="page-range"]'), '1–2 of 4');
  const first = await page.locator('[data-testid="dataplane-name"]').allInnerTexts();
  await page.click('[data-testid="pager"] button:text("Next")');
  await page.waitForURL(/offset=2/);
  await page.waitForSelector('main[data-loaded="dataplanes"]');
  assert.equal(await page.textContent('[data-testid="page-range"]'), '3–4 of 4');
  const second = await page.locator('[data-testid="dataplane-name"]').allInnerTexts();
  assert.equal(second.length, 2);
  assert.ok(second.every((n) => !first.includes(n)), `${first} then ${second}`);
  assert.ok(requests.some((u) => u.includes('dataplanes/_overview') && u.includes('offset=2') && u.includes('size=2')),
    'the page was asked of the server');
});

test("a proxy's detail page opens its config dump and matched policies", async () => {
  await open(GLOBAL_URL, `dataplanes?zone=zone-1&service=${SERVICE}`);
  await page.locator('[data-testid="dataplane-name"]').first().click();
  await page.waitForSelector('[data-testid="inbounds"]');
  assert.match(await page.innerText('[data-testid="inbounds"]'), new RegExp(SERVICE));
  await eventually('policies matched', async () => {
    assert.match(await page.innerText('[data-testid="matched-policies"]'), /MeshTrafficPermission/);
  });
  await page.click('[data-testid="load-config-dump"]');
  await page.waitForSelector('[data-testid="config-dump"], [data-testid="config-dump-error"]');
  const dump = await page.innerText('[data-testid="config-dump-area"]');
  assert.ok(!(await page.$('[data-testid="config-dump-error"]')), `config dump failed: ${dump}`);
  JSON.parse(dump);
  assert.match(dump, new RegExp(SERVICE), 'the dump configures the proxy\'s own service');
  // Its stats and clusters come from the proxy itself (global → zone-1 → the proxy).
  await page.click('[data-testid="load-stats"]');
  await page.waitForSelector('[data-testid="traffic"], [data-testid="stats-error"]');
  assert.ok(!(await page.$('[data-testid="stats-error"]')),
    `stats failed: ${await page.innerText('[data-testid="stats-area"]')}`);
  assert.match(await page.innerText('[data-testid="traffic"]'), /inbound/, 'a traffic row per inbound');
  assert.match(await page.textContent('[data-testid="stats-text"]'), /^server\.live: 1$/m);
  await page.click('[data-testid="load-clusters"]');
  await page.waitForSelector('[data-testid="clusters-text"], [data-testid="clusters-error"]');
  assert.match(await page.innerText('[data-testid="clusters-area"]'), /::health_flags::healthy$/m);
  await shot('dataplane-detail');
});

test('policies page lists types, shows YAML and the proxies selected', async () => {
  await open(GLOBAL_URL, 'policies?type=MeshTrafficPermission');
  await page.locator('[data-testid="policy-name"]').first().click();
  await page.waitForSelector('[data-testid="policy-yaml"]');
  assert.match(await page.innerText('[data-testid="policy-yaml"]'), /^type: MeshTrafficPermission$/m);
  const selected = await page.locator('[data-testid="policy-dataplanes"] tbody tr').count();
  assert.ok(selected >= 3, `the allow-all policy selects every proxy: ${selected}`);
  await shot('policy');
});

test('a zone control plane serves its own GUI', async () => {
  await open(ZONE1_URL, '');
  assert.match(await page.textContent('[data-testid="overview-mode"] .value'), /^zone \(zone-1\)$/);
  await open(ZONE1_URL, 'dataplanes');
  const zones = await page.locator('[data-testid="dataplane-table"] tbody tr td:nth-child(2)').allInnerTexts();
  assert.ok(zones.length >= 1 && zones.every((z) => z === 'zone-1'), `${zones}`);
  await shot('zone-cp-dataplanes');
});

test('disabling a zone on global shows it Disabled', async () => {
  const res = await fetch(`${GLOBAL_URL}/zones/zone-2`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'Zone', name: 'zone-2', enabled: false }),
  });
  assert.ok(res.ok, `disable zone-2: ${res.status} ${await res.text()}`);
  await open(GLOBAL_URL, 'zones');
  await eventually('zone-2 disabled', async () => {
    assert.match(await row('zone-table', 'zone-2'), /Disabled|Offline/);
  });
  assert.match(await row('zone-table', 'zone-1'), /Online/);
  await shot('zones-disabled');
});

test('no page threw', () => {
  assert.deepEqual(pageErrors, []);
});

test('nothing was fetched from anywhere but the control planes', () => {
  const foreign = requests.filter((u) => !u.startsWith(GLOBAL_URL) && !u.startsWith(ZONE1_URL));
  assert.deepEqual(foreign, []);
});
