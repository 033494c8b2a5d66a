// The shell: header, navigation, a path router under <base href> and the overview page. Every
// page is an async function (params, query) → DOM node that reads the REST API once; the
// Refresh button renders the current page again. The GUI is read-only.

import { api, badge, cards, config, h, link, navigate, table, zoneStatus } from './lib.js';
import { zonesPage, zonePage, zoneProxiesPage, zoneProxyPage } from './zones.js';
import { meshesPage, meshPage, servicesPage } from './meshes.js';
import { dataplanesPage, dataplanePage } from './dataplanes.js';
import { policiesPage, policyPage } from './policies.js';

const base = new URL(document.baseURI).pathname; // "/gui/"

async function overviewPage() {
  const [g, zones, meshes] = await Promise.all([
    api('/global-insight'),
    config.mode === 'global' ? api('/zones/_overview', { offset: 0, size: 10 }) : null,
    api('/mesh-insights', { offset: 0, size: 10 }),
  ]);
  const dps = g.dataplanes.all;
  const cps = g.zones.controlPlanes;
  const warnings = [];
  if (config.storeType === 'memory') warnings.push('This control plane keeps its state in memory: a restart loses it.');
  if (dps.offline) warnings.push(`${dps.offline} data plane prox${dps.offline === 1 ? 'y is' : 'ies are'} offline.`);
  if (config.mode === 'global' && cps.online < cps.total) warnings.push(`${cps.total - cps.online} zone(s) not online.`);
  return h('div', {},
    h('h1', {}, 'Overview'),
    cards([
      ['Mode', config.mode + (config.zone ? ` (${config.zone})` : ''), 'overview-mode'],
      ['Version', config.version, 'overview-version'],
      ['Store', config.storeType, 'overview-store'],
      ...(config.mode === 'global' ? [['Zones online', `${cps.online} / ${cps.total}`, 'overview-zones']] : []),
      ['Meshes', g.meshes.total, 'overview-meshes'],
      ['Services', g.services.total, 'overview-services'],
      ['Proxies online', `${dps.online} / ${dps.total}`, 'overview-proxies'],
      ['Policies', g.policies.total, 'overview-policies'],
    ]),
    h('h2', {}, 'Warnings'),
    warnings.length
      ? h('ul', { 'data-testid': 'warnings' }, warnings.map((w) => h('li', { class: 'warn' }, w)))
      : h('p', { class: 'muted', 'data-testid': 'warnings' }, 'None.'),
    zones ? [h('h2', {}, 'Zones'), table([
      ['Name', (z) => link(`zones/${encodeURIComponent(z.name)}`, z.name)],
      ['Status', (z) => badge(zoneStatus(z.zone, z.zoneInsight))],
    ], zones.items, 'overview-zone-table')] : null,
    h('h2', {}, 'Meshes'),
    table([
      ['Name', (m) => link(`meshes/${encodeURIComponent(m.name)}`, m.name)],
      ['Services', (m) => m.services.total],
      ['Proxies online', (m) => `${m.dataplanes.online} / ${m.dataplanes.total}`],
    ], meshes.items, 'overview-mesh-table'));
}

const routes = [
  [/^$/, overviewPage, 'Overview'],
  [/^zones$/, zonesPage, 'Zones', () => config.mode === 'global'],
  [/^zones\/([^/]+)$/, zonePage],
  [/^zone-ingresses$/, (p, q) => zoneProxiesPage('ingress', q), 'Zone Ingresses'],
  [/^zone-ingresses\/([^/]+)$/, (p) => zoneProxyPage('ingress', p[0])],
  [/^zone-egresses$/, (p, q) => zoneProxiesPage('egress', q), 'Zone Egresses'],
  [/^zone-egresses\/([^/]+)$/, (p) => zoneProxyPage('egress', p[0])],
  [/^meshes$/, meshesPage, 'Meshes'],
  [/^meshes\/([^/]+)$/, meshPage],
  [/^services$/, servicesPage, 'Services'],
  [/^dataplanes$/, dataplanesPage, 'Data Plane Proxies'],
  [/^meshes\/([^/]+)\/dataplanes\/([^/]+)$/, dataplanePage],
  [/^policies$/, policiesPage, 'Policies'],
  [/^meshes\/([^/]+)\/policies\/([^/]+)\/([^/]+)$/, policyPage],
];

function current() {
  const path = location.pathname.startsWith(base) ? location.pathname.slice(base.length) : '';
  return { path: path.replace(/\/$/, ''), query: new URLSearchParams(location.search) };
}

/** The section a path belongs to: detail pages under `meshes/{mesh}/…` belong to their list. */
function section(path) {
  const m = path.match(/^meshes\/[^/]+\/(dataplanes|policies)\//);
  return m ? m[1] : path;
}

function renderNav(path) {
  path = section(path);
  const nav = document.getElementById('nav');
  nav.replaceChildren(...routes.filter(([, , title, shown]) => title && (!shown || shown()))
    .map(([re, , title]) => {
      const href = re.source.replace(/^\^|\$$/g, '');
      const active = href === '' ? path === '' : path === href || path.startsWith(`${href}/`);
      return link(href || './', title, { class: active ? 'active' : '' });
    }));
}

let renderSeq = 0;
async function render() {
  const seq = ++renderSeq;
  const { path, query } = current();
  renderNav(path);
  const main = document.getElementById('main');
  main.removeAttribute('data-loaded'); // set again once this page's data is shown
  const route = routes.find(([re]) => re.test(path));
  let node;
  try {
    if (!route) throw new Error(`No page at /gui/${path}.`);
    const params = path.match(route[0]).slice(1).map(decodeURIComponent);
    node = await route[1](params, query);
  } catch (e) {
    node = h('div', { class: 'error', 'data-testid': 'error' }, String(e.message || e));
  }
  if (seq !== renderSeq) return; // a newer navigation won
  main.replaceChildren(node);
  main.setAttribute('data-loaded', path || 'overview');
}


document.addEventListener('click', (e) => {
  const a = e.target.closest('a[data-link]');
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  navigate(a.getAttribute('href'));
});
window.addEventListener('popstate', render);
window.addEventListener('gui:navigate', render);
document.getElementById('refresh').addEventListener('click', render);
document.getElementById('about').textContent =
  `${config.product} ${config.version} on ${config.environment} (${config.mode}${config.zone ? `: ${config.zone}` : ''})`;
render();
