// Policies: the policy types of a mesh with their counts, the policies of one type, and a
// policy's YAML with the proxies it selects.

import { api, h, link, meshSelect, navigate, pager, table, toYaml, withQuery } from './lib.js';
import { pickMesh } from './meshes.js';

async function policyTypes() {
  const { resources } = await api('/_resources');
  return resources.filter((r) => r.policy);
}

function targetText(ref) {
  if (!ref) return '—';
  return [ref.kind, ref.name, ref.tags && Object.entries(ref.tags).map(([k, v]) => `${k}=${v}`).join(',')]
    .filter(Boolean).join(' ');
}

export async function policiesPage(params, query) {
  const [{ meshes, mesh }, types] = await Promise.all([pickMesh(query), policyTypes()]);
  const m = encodeURIComponent(mesh);
  const counts = await Promise.all(types.map((t) => api(`/meshes/${m}/${t.path}`, { size: 1 }).then((p) => p.total)));
  const chosen = types.find((t) => t.name === query.get('type')) || types.find((t, i) => counts[i] > 0) || types[0];
  const offset = Number(query.get('offset') || 0);
  const size = 50;
  const page = await api(`/meshes/${m}/${chosen.path}`, { offset, size });
  return h('div', {},
    h('h1', {}, 'Policies'),
    h('form', { class: 'filters' }, meshSelect(meshes, mesh, (x) => navigate(withQuery({ mesh: x, type: null, offset: null })))),
    table([
      ['Type', (t) => link(withQuery({ type: t.name, offset: null }), t.name, { class: t === chosen ? 'active' : '' })],
      ['Count', (t) => t.count],
    ], types.map((t, i) => ({ ...t, count: counts[i] })), 'policy-types'),
    h('h2', {}, chosen.name),
    table([
      ['Name', (p) => link(`meshes/${m}/policies/${chosen.path}/${encodeURIComponent(p.name)}`, p.name, { 'data-testid': 'policy-name' })],
      ['Target', (p) => targetText((p.spec || {}).targetRef)],
      ['Origin', (p) => (p.labels || {})['kuma.io/origin'] || '—'],
      ['Zone', (p) => (p.labels || {})['kuma.io/zone'] || '—'],
    ], page.items, 'policy-table', `No ${chosen.name} in this mesh.`),
    pager(page, offset, size, (o) => navigate(withQuery({ offset: o }))));
}

export async function policyPage([mesh, path, name]) {
  const base = `/meshes/${encodeURIComponent(mesh)}/${encodeURIComponent(path)}/${encodeURIComponent(name)}`;
  const [policy, selected] = await Promise.all([
    api(base), api(`${base}/_resources/dataplanes`, { size: 1000 }),
  ]);
  return h('div', {},
    h('h1', {}, `${policy.type} ${policy.name}`),
    h('pre', { 'data-testid': 'policy-yaml' }, toYaml(policy)),
    h('h2', {}, `Selected proxies (${selected.total})`),
    table([
      ['Name', (d) => link(`meshes/${encodeURIComponent(d.mesh || mesh)}/dataplanes/${encodeURIComponent(d.name)}`, d.name)],
    ], selected.items, 'policy-dataplanes', 'This policy selects no proxy.'));
}
