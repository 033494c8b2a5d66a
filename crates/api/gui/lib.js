// Small helpers shared by every page: DOM building, the REST client, status rules (as kuma-gui
// computes them), tables, paging and a JSON → YAML printer. Nothing here touches the network
// beyond the control plane's own API.

export const config = JSON.parse(document.getElementById('kuma-config').textContent);

/** h('td', {class: 'x'}, 'text', child) → an element; strings become text nodes (never HTML). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** GET a path of the API as JSON; a non-2xx answer throws with the API's own message. */
export async function api(path, params = {}) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    for (const one of [].concat(v)) if (one !== undefined && one !== null && one !== '') qs.append(k, one);
  }
  const url = `${config.apiUrl}${path}${qs.toString() ? `?${qs}` : ''}`;
  const res = await fetch(url, { headers: { accept: 'application/json' } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${path}: ${res.status} ${body.title || ''} ${body.details || ''}`.trim());
  return body;
}

/** A text answer (a proxy's stats or clusters); errors carry the API's JSON explanation. */
export async function apiText(path) {
  const res = await fetch(`${config.apiUrl}${path}`, { headers: { accept: 'text/plain, application/json' } });
  const text = await res.text();
  if (!res.ok) {
    let body = {};
    try { body = JSON.parse(text); } catch (_) { /* not JSON: the status says enough */ }
    throw new Error(`${path}: ${res.status} ${body.title || ''} ${body.details || ''}`.trim());
  }
  return text;
}

/** Every item of a list endpoint, following pages (for small lists: zones, meshes, proxies of a zone). */
export async function apiAll(path, params = {}) {
  const items = [];
  for (let offset = 0; offset < 100000; offset += 1000) {
    const page = await api(path, { ...params, offset, size: 1000 });
    items.push(...page.items);
    if (!page.next) break;
  }
  return items;
}

/** The connected subscription (newest first, no disconnectTime), and the newest version. */
export function subscriptionsOf(insight) {
  const subs = [...((insight || {}).subscriptions || [])].sort((a, b) =>
    String((b.status || {}).lastUpdateTime || b.connectTime || '').localeCompare(
      String((a.status || {}).lastUpdateTime || a.connectTime || '')));
  const connected = subs.find((s) => s.connectTime && !s.disconnectTime);
  const version = (subs.find((s) => s.version) || {}).version || {};
  return { subs, connected, version, last: subs[0] };
}

/** Zone: disabled if `enabled === false`, else online with a connected KDS subscription. */
export function zoneStatus(zone, insight) {
  if (zone && zone.enabled === false) return 'disabled';
  return subscriptionsOf(insight).connected ? 'online' : 'offline';
}

export function proxyStatus(insight) {
  return subscriptionsOf(insight).connected ? 'online' : 'offline';
}

const LABELS = {
  online: 'Online', offline: 'Offline', disabled: 'Disabled', partially_degraded: 'Partially degraded',
  not_available: 'Not available', disconnected_cp: 'Disconnected',
};

export function badge(status) {
  return h('span', { class: `badge ${status}`, 'data-testid': 'status' }, LABELS[status] || status);
}

export function when(t) {
  return t ? new Date(t).toLocaleString() : '—';
}

export function counters(c) {
  c = c || {};
  return `${c.responsesSent || 0} sent / ${c.responsesAcknowledged || 0} ACK / ${c.responsesRejected || 0} NACK`;
}

export function link(href, text, attrs = {}) {
  return h('a', { href, 'data-link': true, ...attrs }, text);
}

/** A table with a header row and one row per item; `cols` are [title, item → cell]. */
export function table(cols, items, testid, empty = 'Nothing here yet.') {
  if (!items.length) return h('p', { class: 'muted', 'data-testid': `${testid}-empty` }, empty);
  return h('table', { 'data-testid': testid },
    h('thead', {}, h('tr', {}, cols.map(([t]) => h('th', {}, t)))),
    h('tbody', {}, items.map((it) => h('tr', { 'data-name': it.name || '' },
      cols.map(([, f]) => h('td', {}, f(it)))))));
}

export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

export function cards(pairs) {
  return h('div', { class: 'cards' }, pairs.map(([label, value, testid]) =>
    h('div', { class: 'card', 'data-testid': testid }, h('div', { class: 'label' }, label),
      h('div', { class: 'value' }, value))));
}

/** Previous/next over `{total, items}` at `offset`, changing the URL's `offset` query. */
export function pager(page, offset, size, go) {
  const from = page.total ? offset + 1 : 0;
  const to = offset + page.items.length;
  return h('div', { class: 'pager', 'data-testid': 'pager' },
    h('button', { type: 'button', disabled: offset <= 0, onclick: () => go(Math.max(0, offset - size)) }, '‹ Previous'),
    h('span', { 'data-testid': 'page-range' }, `${from}–${to} of ${page.total}`),
    h('button', { type: 'button', disabled: !page.next, onclick: () => go(offset + size) }, 'Next ›'));
}

/** A mesh picker; `meshes` are names. */
export function meshSelect(meshes, current, onchange) {
  return h('label', {}, 'Mesh', h('select', { name: 'mesh', 'data-testid': 'mesh-select', onchange: (e) => onchange(e.target.value) },
    meshes.map((m) => h('option', { value: m, selected: m === current }, m))));
}

function yamlScalar(v) {
  if (v === null) return 'null';
  if (typeof v !== 'string') return String(v);
  if (v === '' || /^[\s]|[\s]$|[:#\[\]{},&*!|>'"%@`]|^(true|false|null|yes|no|~|-?[\d.]+)$/i.test(v)) return JSON.stringify(v);
  return v;
}

/** JSON → YAML, block style, for showing resources as `kumactl get -o yaml` would. */
export function toYaml(v, indent = '') {
  if (Array.isArray(v)) {
    if (!v.length) return '[]';
    return v.map((x) => {
      const inner = toYaml(x, `${indent}  `);
      return (x && typeof x === 'object' && Object.keys(x).length) ? `${indent}- ${inner.trimStart()}` : `${indent}- ${inner}`;
    }).join('\n');
  }
  if (v && typeof v === 'object') {
    const keys = Object.keys(v);
    if (!keys.length) return '{}';
    return keys.map((k) => {
      const x = v[k];
      const key = `${indent}${yamlScalar(k)}:`;
      if (x && typeof x === 'object' && (Array.isArray(x) ? x.length : Object.keys(x).length)) {
        return `${key}\n${toYaml(x, Array.isArray(x) ? indent : `${indent}  `)}`;
      }
      return `${key} ${toYaml(x, indent)}`;
    }).join('\n');
  }
  return yamlScalar(v);
}

export function tagsOf(dp) {
  const inbounds = ((dp || {}).networking || {}).inbound || [];
  return inbounds.map((i) => i.tags || {});
}

export function zoneOfDataplane(item) {
  const t = tagsOf(item.dataplane).find((x) => x['kuma.io/zone']);
  return (t && t['kuma.io/zone']) || (item.labels || {})['kuma.io/zone'] || config.zone || '—';
}

/** Go to a path under the base (with its query) without reloading; the shell renders it. */
export function navigate(href) {
  history.pushState(null, '', new URL(href, document.baseURI));
  window.dispatchEvent(new Event('gui:navigate'));
}

/** The current page's path with `query` merged into its query string. */
export function withQuery(changes) {
  const q = new URLSearchParams(location.search);
  for (const [k, v] of Object.entries(changes)) {
    if (v === undefined || v === null || v === '') q.delete(k); else q.set(k, v);
  }
  const path = location.pathname.slice(new URL(document.baseURI).pathname.length);
  return `${path}${q.toString() ? `?${q}` : ''}`;
}
