// Data plane proxies: a list filtered and paged by the server (mesh, zone, service, status,
// name), and a detail page with inbounds, outbounds, insight, xDS stats, config dump and the
// policies matched on the proxy.

import {
  api, badge, counters, facts, h, link, meshSelect, navigate, pager, subscriptionsOf, table,
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
    h('h2', {}, 'Config dump'),
    h('button', { type: 'button', onclick: loadDump, 'data-testid': 'load-config-dump' }, 'Show config dump'),
    dumpArea,
    h('h2', {}, 'Dataplane'),
    h('pre', { 'data-testid': 'dataplane-yaml' }, toYaml({ type: 'Dataplane', mesh: d.mesh, name: d.name, ...d.dataplane })));
}
