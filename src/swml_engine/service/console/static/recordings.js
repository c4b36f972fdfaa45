// The recordings list: filters (kept in the page's address, so Back and a bookmark keep them), newest first,
// one page of PAGE_SIZE rows at a time.
import { api } from './api.js';
import { listedDuration } from './controls.js';
import { formatTime, h, heading, replace } from './dom.js';

export const PAGE_SIZE = 25;
// The states the API lists recordings by: a paused recording stays `recording` there (its pause shows on its own
// page and on the calls page), so `paused` would be a choice that never finds anything.
const STATES = ['recording', 'finished', 'no_input', 'error'];
const FORMATS = ['wav', 'mp3', 'mp4'];

/**
 * The filter fields: the name in the page's address and form, its label, the input, and the API's query
 * parameter with how the value is turned into it (times: the form's local date-time → Unix seconds).
 */
const FILTERS = [
  { name: 'since', label: 'From', type: 'datetime-local', param: 'from_time', toApi: localToUnix },
  // (the field gives a minute: "to 14:05" takes in what started during 14:05, as a person means it)
  { name: 'until', label: 'To', type: 'datetime-local', param: 'to_time', toApi: endOfMinute },
  { name: 'caller', label: 'Caller', type: 'search', param: 'caller' },
  { name: 'callee', label: 'Callee', type: 'search', param: 'callee' },
  { name: 'call', label: 'Call id', type: 'search', param: 'call_id' },
  { name: 'state', label: 'State', options: STATES, param: 'state' },
  { name: 'format', label: 'Format', options: FORMATS, param: 'format' },
  { name: 'longer', label: 'Longer than (s)', type: 'number', param: 'min_duration' },
  { name: 'shorter', label: 'Shorter than (s)', type: 'number', param: 'max_duration' },
];

/** A page's fragment with its query, if any (URLSearchParams.size is too recent for some browsers). */
function withQuery(fragment, query) {
  const text = String(query);
  return text ? `${fragment}?${text}` : fragment;
}

function localToUnix(value) {
  const ms = new Date(value).getTime();
  return Number.isFinite(ms) ? Math.floor(ms / 1000) : undefined;
}

/** The end of the minute a `datetime-local` value names (`2026-11-30T14:05`); a value with seconds as it is. */
function endOfMinute(value) {
  const unix = localToUnix(value);
  return unix === undefined || value.length > 16 ? unix : unix + 59.999;
}

function field(filter, value) {
  const id = `filter-${filter.name}`;
  const control = filter.options
    ? h('select', { id, name: filter.name }, h('option', { value: '' }, 'any'), filter.options.map((o) => h('option', { value: o, selected: o === value }, o)))
    : h('input', { id, name: filter.name, type: filter.type, value: value || undefined, min: filter.type === 'number' ? '0' : undefined, step: filter.type === 'number' ? 'any' : undefined });
  return h('div', { class: 'field' }, h('label', { for: id }, filter.label), control);
}

export async function render(main, { query, go, fail }) {
  const offset = Math.max(0, Number.parseInt(query.get('offset') || '0', 10) || 0);
  const apiQuery = { limit: PAGE_SIZE, offset };
  for (const filter of FILTERS) {
    const value = query.get(filter.name);
    if (value) apiQuery[filter.param] = filter.toApi ? filter.toApi(value) : value;
  }

  const form = h(
    'form',
    { class: 'filters', role: 'search', 'aria-label': 'Filter recordings' },
    FILTERS.map((f) => field(f, query.get(f.name))),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Search'), h('button', { type: 'reset', class: 'quiet' }, 'Clear')),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (value) next.set(name, String(value));
    go(withQuery('#/recordings', next));
  });
  form.addEventListener('reset', (event) => {
    event.preventDefault();
    go('#/recordings');
  });
  const results = h('div', { class: 'results', 'aria-live': 'polite' }, h('p', { class: 'note' }, 'Loading…'));
  replace(main, heading('Recordings'), form, results);

  let page;
  try {
    page = await api.recordings(apiQuery);
  } catch (error) {
    fail(error, results);
    return;
  }
  const rows = page.recordings || [];
  const total = typeof page.total === 'number' ? page.total : null;
  if (!rows.length) {
    replace(results, h('p', { class: 'note', id: 'no-recordings' }, offset ? 'No more recordings.' : 'No recordings match.'));
  } else {
    replace(results, table(rows), pager(offset, rows.length, total, query, go));
  }
}

/** The list's columns: the call's parties when the index knows them, else the call id. */
function columns(rows) {
  const parties = rows.some((r) => r.caller || r.callee);
  const callLink = (r) => (r.call_id ? h('a', { href: `#/calls/${encodeURIComponent(r.call_id)}`, class: 'id' }, r.call_id.slice(0, 8)) : '–');
  return [
    ['Started', (r) => h('a', { href: `#/recordings/${encodeURIComponent(r.recording_id)}` }, formatTime(r.start_time))],
    ['Duration', listedDuration, 'num'],
    ...(parties ? [['Caller', (r) => r.caller || '–'], ['Callee', (r) => r.callee || '–']] : [['Call', callLink]]),
    ['State', (r) => h('span', { class: `state state-${r.state}` }, r.state)],
    ['Format', (r) => r.format],
    ['Channels', (r) => (r.channels === 2 ? 'stereo' : 'mono')],
  ];
}

function table(rows) {
  const cols = columns(rows);
  return h(
    'div',
    { class: 'scroll' },
    h(
      'table',
      { id: 'recordings' },
      h('thead', {}, h('tr', {}, cols.map(([name]) => h('th', { scope: 'col' }, name)))),
      h('tbody', {}, rows.map((r) => h('tr', { dataset: { recording: r.recording_id } }, cols.map(([, cell, cls]) => h('td', { class: cls }, cell(r)))))),
    ),
  );
}

function pager(offset, count, total, query, go) {
  const at = (next) => {
    const q = new URLSearchParams(query);
    if (next > 0) q.set('offset', String(next));
    else q.delete('offset');
    return withQuery('#/recordings', q);
  };
  const more = total === null ? count === PAGE_SIZE : offset + count < total;
  return h(
    'nav',
    { class: 'pager', 'aria-label': 'Pages' },
    h('button', { type: 'button', class: 'quiet', disabled: offset === 0, onclick: () => go(at(Math.max(0, offset - PAGE_SIZE))) }, '← Newer'),
    h('span', {}, `${offset + 1}–${offset + count}${total === null ? '' : ` of ${total}`}`),
    h('button', { type: 'button', class: 'quiet', disabled: !more, onclick: () => go(at(offset + PAGE_SIZE)) }, 'Older →'),
  );
}
