// Zones (global only) and zone ingresses/egresses: status, versions, last connection, the
// zone's proxies, KDS counters, the services an ingress offers, and a zone proxy's stats and
// clusters.

import {
  api, apiAll, badge, config, counters, facts, h, link, pager, proxyStatus, subscriptionsOf,
  table, when, zoneStatus,
} from './lib.js';
import { navigate, withQuery } from './lib.js';
import { adminSections } from './dataplanes.js';

const KIND = {
  ingress: { path: '/zoneingresses', route: 'zone-ingresses', spec: 'zoneIngress', insight: 'zoneIngressInsight', title: 'Zone Ingresses' },
  egress: { path: '/zoneegresses', route: 'zone-egresses', spec: 'zoneEgress', insight: 'zoneEgressInsight', title: 'Zone Egresses' },
};

/** The zone a zone proxy belongs to: global fills `zone` in; a zone CP's own have none. */
function proxyZone(item, kind) {
  return item[KIND[kind].spec].zone || config.zone || '—';
}

function cpVersion(insight) {
  const v = subscriptionsOf(insight).version;
  return (v.kumaCp || {}).version || '—';
}

function requireGlobal() {
  if (config.mode !== 'global') {
    throw new Error('Zones are listed on the global control plane; this is a zone control plane.');
  }
}

export async function zonesPage() {
  requireGlobal();
  const [zones, ingresses, egresses] = await Promise.all([
    apiAll('/zones/_overview'), apiAll('/zoneingresses/_overview'), apiAll('/zoneegresses/_overview'),
  ]);
  const count = (list, kind, zone) => {
    const mine = list.filter((p) => proxyZone(p, kind) === zone);
    const online = mine.filter((p) => proxyStatus(p[KIND[kind].insight]) === 'online').length;
    return `${online} / ${mine.length}`;
  };
  return h('div', {},
    h('h1', {}, 'Zones'),
    table([
      ['Name', (z) => link(`zones/${encodeURIComponent(z.name)}`, z.name, { 'data-testid': 'zone-name' })],
      ['Status', (z) => badge(zoneStatus(z.zone, z.zoneInsight))],
      ['Zone CP version', (z) => cpVersion(z.zoneInsight)],
      ['Last connected', (z) => when((subscriptionsOf(z.zoneInsight).last || {}).connectTime)],
      ['Ingresses online', (z) => count(ingresses, 'ingress', z.name)],
      ['Egresses online', (z) => count(egresses, 'egress', z.name)],
      ['KDS', (z) => counters(((subscriptionsOf(z.zoneInsight).last || {}).status || {}).total)],
      ['Warnings', (z) => warningsOf(z).join('; ') || '—'],
    ], zones, 'zone-table', 'No zone has connected yet.'));
}

function warningsOf(z) {
  const w = [];
  const s = subscriptionsOf(z.zoneInsight);
  const v = (s.version || {}).kumaCp || {};
  if (v.version && v.version !== config.version) w.push(`version ${v.version} differs from global's ${config.version}`);
  if (v.kumaCpGlobalCompatible === false) w.push('incompatible with global');
  if ((((s.connected || {}).status || {}).total || {}).responsesRejected > 0) w.push('resources rejected (NACK)');
  try {
    const cfg = JSON.parse((s.last || {}).config || '{}');
    if ((cfg.store || {}).type === 'memory') w.push('memory store');
  } catch { /* a zone that sends no config has no store warning */ }
  return w;
}

export async function zonePage([name]) {
  requireGlobal();
  const [z, ingresses, egresses] = await Promise.all([
    api(`/zones/${encodeURIComponent(name)}/_overview`),
    apiAll('/zoneingresses/_overview'), apiAll('/zoneegresses/_overview'),
  ]);
  const s = subscriptionsOf(z.zoneInsight);
  const stat = ((s.last || {}).status || {}).stat || {};
  return h('div', {},
    h('h1', {}, `Zone ${z.name}`),
    facts([
      ['Status', badge(zoneStatus(z.zone, z.zoneInsight))],
      ['Zone CP version', cpVersion(z.zoneInsight)],
      ['Connected', when((s.connected || {}).connectTime)],
      ['Last connected', when((s.last || {}).connectTime)],
      ['Last disconnected', when((s.last || {}).disconnectTime)],
      ['Zone CP instance', (s.last || {}).zoneInstanceId || '—'],
      ['Global CP instance', (s.last || {}).globalInstanceId || '—'],
      ['Warnings', warningsOf(z).join('; ') || 'none'],
    ]),
    h('h2', {}, 'Zone ingresses'),
    proxyTable('ingress', ingresses.filter((p) => proxyZone(p, 'ingress') === z.name)),
    h('h2', {}, 'Zone egresses'),
    proxyTable('egress', egresses.filter((p) => proxyZone(p, 'egress') === z.name)),
    h('h2', {}, 'KDS (last subscription, per type)'),
    table([['Type', (r) => r.name], ['Responses', (r) => counters(r.c)]],
      Object.entries(stat).map(([n, c]) => ({ name: n, c })), 'kds-stats', 'No KDS exchange recorded.'),
    h('h2', {}, 'Subscriptions'),
    table([
      ['Connected', (x) => when(x.connectTime)], ['Disconnected', (x) => when(x.disconnectTime)],
      ['Zone instance', (x) => x.zoneInstanceId || '—'], ['Total', (x) => counters((x.status || {}).total)],
    ], s.subs, 'zone-subscriptions'));
}

function address(n) {
  return n ? `${n.address}:${n.port}` : '—';
}

function proxyTable(kind, items) {
  const k = KIND[kind];
  return table([
    ['Name', (p) => link(`${k.route}/${encodeURIComponent(p.name)}`, p.name)],
    ['Zone', (p) => proxyZone(p, kind)],
    ['Address', (p) => address(p[k.spec].networking)],
    ...(kind === 'ingress' ? [['Advertised address', (p) => {
      const n = p[k.spec].networking || {};
      return n.advertisedAddress ? `${n.advertisedAddress}:${n.advertisedPort}` : '—';
    }], ['Services', (p) => (p[k.spec].availableServices || []).length]] : []),
    ['Status', (p) => badge(proxyStatus(p[k.insight]))],
  ], items, `${kind}-table`, `No zone ${kind}.`);
}

export async function zoneProxiesPage(kind, query) {
  const k = KIND[kind];
  const offset = Number(query.get('offset') || 0);
  const size = 50;
  const page = await api(`${k.path}/_overview`, { offset, size });
  return h('div', {},
    h('h1', {}, k.title),
    proxyTable(kind, page.items),
    pager(page, offset, size, (o) => navigate(withQuery({ offset: o }))));
}

export async function zoneProxyPage(kind, name) {
  const k = KIND[kind];
  const p = await api(`${k.path}/${encodeURIComponent(name)}/_overview`);
  const s = subscriptionsOf(p[k.insight]);
  const n = p[k.spec].networking || {};
  return h('div', {},
    h('h1', {}, `Zone ${kind} ${p.name}`),
    facts([
      ['Status', badge(proxyStatus(p[k.insight]))],
      ['Zone', proxyZone(p, kind)],
      ['Address', address(n)],
      ['Advertised address', n.advertisedAddress ? `${n.advertisedAddress}:${n.advertisedPort}` : '—'],
      ['kuma-dp version', ((s.version || {}).kumaDp || {}).version || '—'],
      ['Connected', when((s.connected || {}).connectTime)],
      ['xDS', counters(((s.last || {}).status || {}).total)],
    ]),
    kind === 'ingress' ? [h('h2', {}, 'Available services'), table([
      ['Service', (a) => (a.tags || {})['kuma.io/service'] || '—'],
      ['Mesh', (a) => a.mesh],
      ['Protocol', (a) => (a.tags || {})['kuma.io/protocol'] || 'tcp'],
      ['Instances', (a) => a.instances],
      ['Tags', (a) => Object.entries(a.tags || {}).map(([t, v]) => `${t}=${v}`).join(', ')],
    ], (p[k.spec].availableServices || []).map((a) => ({ ...a, name: (a.tags || {})['kuma.io/service'] })),
    'available-services', 'No service offered.')] : null,
    ...adminSections(`${k.path}/${encodeURIComponent(name)}`));
}
