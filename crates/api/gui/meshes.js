// Meshes (mTLS backend and counts) and services (status, zones, instances online out of total).

import {
  api, apiAll, badge, facts, h, link, meshSelect, navigate, pager, table, withQuery,
} from './lib.js';

function backendOf(m) {
  const b = (m.mTLS || {}).enabledBackend;
  return b ? `${b.name} (${b.type})` : 'off';
}

function policyTotal(m) {
  return Object.values(m.policies || {}).reduce((n, p) => n + (p.total || 0), 0);
}

export async function meshesPage(params, query) {
  const offset = Number(query.get('offset') || 0);
  const size = 50;
  const page = await api('/mesh-insights', { offset, size });
  return h('div', {},
    h('h1', {}, 'Meshes'),
    table([
      ['Name', (m) => link(`meshes/${encodeURIComponent(m.name)}`, m.name)],
      ['mTLS', backendOf],
      ['Services', (m) => m.services.total],
      ['Proxies online', (m) => `${m.dataplanes.online} / ${m.dataplanes.total}`],
      ['Policies', policyTotal],
    ], page.items, 'mesh-table'),
    pager(page, offset, size, (o) => navigate(withQuery({ offset: o }))));
}

export async function meshPage([name]) {
  const m = await api(`/mesh-insights/${encodeURIComponent(name)}`);
  const d = m.dataplanes;
  return h('div', {},
    h('h1', {}, `Mesh ${m.name}`),
    facts([
      ['mTLS backend', backendOf(m)],
      ['Proxies', `${d.online} online, ${d.partiallyDegraded} partially degraded, ${d.offline} offline, ${d.total} total`],
      ['Gateways', `${m.dataplanesByType.gateway.online} / ${m.dataplanesByType.gateway.total} online`],
      ['Services', `${m.services.internal} internal, ${m.services.external} external`],
      ['Certificates issued by', Object.entries(m.mTLS.issuedBackends || {}).map(([b, c]) => `${b}: ${c.total}`).join(', ') || '—'],
      ['kuma-dp versions', Object.entries((m.dpVersions || {}).kumaDp || {}).map(([v, c]) => `${v}: ${c.total}`).join(', ') || '—'],
    ]),
    h('h2', {}, 'Policies'),
    table([['Type', (p) => link(`policies?mesh=${encodeURIComponent(m.name)}&type=${encodeURIComponent(p.name)}`, p.name)], ['Count', (p) => p.total]],
      Object.entries(m.policies || {}).map(([n, p]) => ({ name: n, total: p.total })), 'mesh-policies', 'No policy.'),
    h('p', {}, link(`services?mesh=${encodeURIComponent(m.name)}`, 'Services of this mesh'), ' · ',
      link(`dataplanes?mesh=${encodeURIComponent(m.name)}`, 'Proxies of this mesh')));
}

/** The mesh named in the query, or the first mesh. */
export async function pickMesh(query) {
  const meshes = (await apiAll('/meshes')).map((m) => m.name);
  const mesh = query.get('mesh') || meshes[0];
  if (!mesh) throw new Error('There is no mesh yet.');
  return { meshes, mesh };
}

export async function servicesPage(params, query) {
  const { meshes, mesh } = await pickMesh(query);
  const offset = Number(query.get('offset') || 0);
  const size = 50;
  const page = await api(`/meshes/${encodeURIComponent(mesh)}/service-insights`, { offset, size });
  const dpLink = (s) => link(`dataplanes?mesh=${encodeURIComponent(mesh)}&service=${encodeURIComponent(s.name)}`,
    `${s.dataplanes.online} / ${s.dataplanes.total}`);
  return h('div', {},
    h('h1', {}, 'Services'),
    h('form', { class: 'filters' }, meshSelect(meshes, mesh, (m) => navigate(withQuery({ mesh: m, offset: null })))),
    table([
      ['Name', (s) => s.name],
      ['Status', (s) => badge(s.status)],
      ['Zones', (s) => h('span', { 'data-testid': 'service-zones' }, (s.zones || []).join(', ') || '—')],
      ['Instances online', dpLink],
      ['Note', (s) => s.crossZone || ''],
    ], page.items, 'service-table', 'No service in this mesh.'),
    pager(page, offset, size, (o) => navigate(withQuery({ offset: o }))));
}
