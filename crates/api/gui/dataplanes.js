// Data plane proxies: a list filtered and paged by the server (mesh, zone, service, status,
// name), and a detail page with inbounds, outbounds, insight, xDS stats, config dump and the
// policies matched on the proxy, and the proxy's own stats (as traffic per inbound and outbound)
// and clusters, read from it through its control plane.

import {
  api, apiText, badge, counters, facts, h, link, meshSelect, navigate, pager, subscriptionsOf, table,
  tagsOf, toYaml, when, withQuery, zoneOfDataplane,
} from './lib.js';
import { pickMesh } from './meshes.js';

const STATUSES = ['', 'online', 'offline', 'partially_degraded'];

function services(item) {
  return [...new Set(tagsOf(item.dataplane).map((t) => t['kuma.io/service']).filter(Boolean))].join(', ') || '—';
}

export async function dataplanesPage(params, query) {
  const { meshes, mesh } = await pickMesh(query);
  const offset = Number(query.get('offset') || 0);
  const size = Math.min(Number(query.get('size')) || 50, 1000);
  const f = {
    name: query.get('name') || '', zone: query.get('zone') || '',
    service: query.get('service') || '', status: query.get('status') || '',
  };
  const tag = [];
  if (f.zone) tag.push(`kuma.io/zone:${f.zone}`);
  if (f.service) tag.push(`kuma.io/service:${f.service}`);
  const page = await api(`/meshes/${encodeURIComponent(mesh)}/dataplanes/_overview`,
    { offset, size, name: f.name, tag, status: f.status });
  const apply = (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    navigate(withQuery({
      name: form.get('name'), zone: form.get('zone'), service: form.get('service'),
      status: form.get('status'), offset: null,
    }));
  };
  const input = (name, label) => h('label', {}, label,
    h('input', { name, value: f[name], 'data-testid': `filter-${name}` }));
  return h('div', {},
    h('h1', {}, 'Data plane proxies'),
    h('form', { class: 'filters', onsubmit: apply, 'data-testid': 'dataplane-filters' },
      meshSelect(meshes, mesh, (m) => navigate(withQuery({ mesh: m, offset: null }))),
      input('name', 'Name contains'), input('zone', 'Zone'), input('service', 'Service'),
      h('label', {}, 'Status', h('select', { name: 'status', 'data-testid': 'filter-status' },
        STATUSES.map((s) => h('option', { value: s, selected: s === f.status }, s || 'any')))),
      h('button', { type: 'submit', 'data-testid': 'filter-apply' }, 'Filter')),
    table([
      ['Name', (d) => link(`meshes/${encodeURIComponent(d.mesh)}/dataplanes/${encodeURIComponent(d.name)}`, d.name, { 'data-testid': 'dataplane-name' })],
      ['Zone', zoneOfDataplane],
      ['Services', services],
      ['Type', (d) => ((d.dataplane.networking || {}).gateway ? 'gateway' : 'sidecar')],
      ['kuma-dp', (d) => ((subscriptionsOf(d.dataplaneInsight).version || {}).kumaDp || {}).version || '—'],
      ['Status', (d) => badge(d.status)],
    ], page.items, 'dataplane-table', 'No proxy matches.'),
    pager(page, offset, size, (o) => navigate(withQuery({ offset: o }))));
}

// Stats of the traffic cards, by the prefix they hang under (Envoy's dotted names).
const CARD_STATS = {
  outbound: ['upstream_rq_total', 'upstream_rq_2xx', 'upstream_rq_4xx', 'upstream_rq_5xx',
    'upstream_cx_active', 'upstream_cx_total', 'upstream_cx_rx_bytes_total', 'upstream_cx_tx_bytes_total'],
  inbound: ['downstream_cx_active', 'downstream_cx_total'],
  http: ['downstream_rq_total', 'downstream_rq_2xx', 'downstream_rq_4xx', 'downstream_rq_5xx'],
};
// Internal clusters are not traffic (kuma-gui hides them too).
const INTERNAL = /^(ads_cluster|access_log_sink|kuma_envoy_admin|meshtrace:|inbound:passthrough|outbound:passthrough)/;

/** Envoy's text stats → one row per cluster (outbound) and per listener (inbound). */
export function trafficRows(text) {
  const rows = new Map();
  for (const line of text.split('\n')) {
    const m = /^(cluster|listener|http)\.(.+)\.([a-z0-9_]+): (\d+)$/.exec(line.trim());
    if (!m) continue;
    const [, scope, object, stat, value] = m;
    const group = scope === 'cluster' ? 'outbound' : scope === 'listener' ? 'inbound' : 'http';
    if (!CARD_STATS[group].includes(stat) || INTERNAL.test(object)) continue;
    // An inbound's listener and HTTP stats share its name: one row.
    const kind = group === 'outbound' ? 'outbound' : 'inbound';
    const key = `${kind} ${object}`;
    if (!rows.has(key)) rows.set(key, { kind, name: object, stats: {} });
    rows.get(key).stats[stat] = Number(value);
  }
  return [...rows.values()].sort((a, b) => a.kind.localeCompare(b.kind) || a.name.localeCompare(b.name));
}

/** The stats and clusters buttons and what they show, for the proxy at `base`. */
export function adminSections(base) {
  const statsArea = h('div', { 'data-testid': 'stats-area' });
  const loadStats = async () => {
    statsArea.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    try {
      const text = await apiText(`${base}/stats`);
      const raw = h('pre', { 'data-testid': 'stats-text' }, text);
      const filter = h('input', {
        placeholder: 'filter stats', 'data-testid': 'stats-filter',
        oninput: (e) => { raw.textContent = text.split('\n').filter((l) => l.includes(e.target.value)).join('\n'); },
      });
      const stat = (name) => (r) => (r.stats[name] === undefined ? '—' : String(r.stats[name]));
      statsArea.replaceChildren(
        table([
          ['Direction', (r) => r.kind], ['Name', (r) => r.name],
          ['Requests', (r) => stat(r.kind === 'outbound' ? 'upstream_rq_total' : 'downstream_rq_total')(r)],
          ['2xx', (r) => stat(r.kind === 'outbound' ? 'upstream_rq_2xx' : 'downstream_rq_2xx')(r)],
          ['4xx', (r) => stat(r.kind === 'outbound' ? 'upstream_rq_4xx' : 'downstream_rq_4xx')(r)],
          ['5xx', (r) => stat(r.kind === 'outbound' ? 'upstream_rq_5xx' : 'downstream_rq_5xx')(r)],
          ['Active connections', (r) => stat(r.kind === 'outbound' ? 'upstream_cx_active' : 'downstream_cx_active')(r)],
          ['Connections', (r) => stat(r.kind === 'outbound' ? 'upstream_cx_total' : 'downstream_cx_total')(r)],
        ], trafficRows(text), 'traffic', 'No traffic yet.'),
        h('details', {}, h('summary', {}, 'All stats'), filter, raw));
    } catch (e) {
      statsArea.replaceChildren(h('div', { class: 'error', 'data-testid': 'stats-error' }, e.message));
    }
  };
  const clustersArea = h('div', { 'data-testid': 'clusters-area' });
  const loadClusters = async () => {
    clustersArea.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    try {
      clustersArea.replaceChildren(h('pre', { 'data-testid': 'clusters-text' }, await apiText(`${base}/clusters`)));
    } catch (e) {
      clustersArea.replaceChildren(h('div', { class: 'error', 'data-testid': 'clusters-error' }, e.message));
    }
  };
  return [
    h('h2', {}, 'Traffic and stats'),
    h('button', { type: 'button', onclick: loadStats, 'data-testid': 'load-stats' }, 'Show stats'),
    statsArea,
    h('h2', {}, 'Clusters'),
    h('button', { type: 'button', onclick: loadClusters, 'data-testid': 'load-clusters' }, 'Show clusters'),
    clustersArea,
  ];
}

function tagText(tags) {
  return Object.entries(tags || {}).map(([k, v]) => `${k}=${v}`).join(', ');
}

export async function dataplanePage([mesh, name]) {
  const base = `/meshes/${encodeURIComponent(mesh)}/dataplanes/${encodeURIComponent(name)}`;
  const [d, rules] = await Promise.all([
    api(`${base}/_overview`),
    api(`${base}/_rules`).catch((e) => ({ error: e.message })),
  ]);
  const n = d.dataplane.networking || {};
  const s = subscriptionsOf(d.dataplaneInsight);
  const mtls = d.dataplaneInsight.mTLS || {};
  const stat = ((s.last || {}).status || {}).stat || {};
  const dumpArea = h('div', { 'data-testid': 'config-dump-area' });
  const loadDump = async () => {
    dumpArea.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    try {
      const dump = await api(`${base}/xds`);
      dumpArea.replaceChildren(h('pre', { 'data-testid': 'config-dump' }, JSON.stringify(dump, null, 2)));
    } catch (e) {
      dumpArea.replaceChildren(h('div', { class: 'error', 'data-testid': 'config-dump-error' }, e.message));
    }
  };
  return h('div', {},
    h('h1', {}, `Proxy ${d.name}`),
    facts([
      ['Status', badge(d.status)],
      ['Mesh', d.mesh],
      ['Zone', zoneOfDataplane(d)],
      ['Address', n.address || '—'],
      ['kuma-dp version', ((s.version || {}).kumaDp || {}).version || '—'],
      ['Envoy version', ((s.version || {}).envoy || {}).version || '—'],
      ['Connected', when((s.connected || {}).connectTime)],
      ['Control plane instance', (s.last || {}).controlPlaneInstanceId || '—'],
      ['Certificate', mtls.issuedBackend ? `${mtls.issuedBackend}, expires ${when(mtls.certificateExpirationTime)}, ${mtls.certificateRegenerations} regenerations` : '—'],
    ]),
    h('h2', {}, 'Inbounds'),
    table([
      ['Port', (i) => i.port], ['Service port', (i) => i.servicePort || '—'],
      ['Tags', (i) => tagText(i.tags)], ['State', (i) => i.state || ((i.health || {}).ready === false ? 'NotReady' : 'Ready')],
    ], n.inbound || [], 'inbounds', 'No inbound.'),
    h('h2', {}, 'Outbounds'),
    table([
      ['Address', (o) => `${o.address || '127.0.0.1'}:${o.port}`], ['Tags', (o) => tagText(o.tags)],
    ], n.outbound || [], 'outbounds', 'No outbound.'),
    h('h2', {}, 'xDS stats (last subscription)'),
    facts([['Total', counters(((s.last || {}).status || {}).total)]]),
    table([['Type', (r) => r.name], ['Responses', (r) => counters(r.c)]],
      Object.entries(stat).map(([k, c]) => ({ name: k, c })), 'xds-stats', 'No xDS exchange recorded.'),
    h('h2', {}, 'Subscriptions'),
    table([
      ['Connected', (x) => when(x.connectTime)], ['Disconnected', (x) => when(x.disconnectTime)],
      ['CP instance', (x) => x.controlPlaneInstanceId || '—'], ['Total', (x) => counters((x.status || {}).total)],
    ], s.subs, 'subscriptions'),
    h('h2', {}, 'Matched policies'),
    rules.error ? h('div', { class: 'error' }, rules.error)
      : table([
        ['Type', (r) => r.type],
        ['To rules', (r) => (r.toRules || []).length],
        ['From rules', (r) => (r.fromRules || []).reduce((k, f) => k + (f.rules || []).length, 0)],
        ['Origins', (r) => [...new Set([...(r.toRules || []), ...(r.fromRules || []).flatMap((f) => f.rules || [])]
          .flatMap((x) => (x.origin || []).map((o) => (o.resourceMeta || {}).name || JSON.stringify(o))))].join(', ')],
      ], (rules.rules || []).map((r) => ({ ...r, name: r.type })), 'matched-policies', 'No policy applies.'),
    rules.error ? null : h('details', {}, h('summary', {}, 'Rules as YAML'), h('pre', {}, toYaml(rules))),
    ...adminSections(base),
    h('h2', {}, 'Config dump'),
    h('button', { type: 'button', onclick: loadDump, 'data-testid': 'load-config-dump' }, 'Show config dump'),
    dumpArea,
    h('h2', {}, 'Dataplane'),
    h('pre', { 'data-testid': 'dataplane-yaml' }, toYaml({ type: 'Dataplane', mesh: d.mesh, name: d.name, ...d.dataplane })));
}
