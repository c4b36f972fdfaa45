// Calls: the live ones (updated without reload from the service's event stream, each with its elapsed time
// and its recordings' stop / pause / resume buttons), then the most recent ended ones.
import { api, eventSource } from './api.js';
import { controls, isLive, stateOf } from './controls.js';
import { formatDuration, formatElapsed, formatTime, h, heading, replace } from './dom.js';

/** How many calls the page lists (live ones first: they are the newest). */
const CALLS_SHOWN = 50;
/** Events that change what the page shows; others (steps, variables) are left to a call's own page. */
const RELEVANT = new Set(['call.state', 'record.state']);
/** After an event, wait this long for more before asking the API again: a call's start is several events. */
const SETTLE_MS = 250;
/** And ask at most this often, however busy the service: each time costs a request per live call. */
const MIN_REFRESH_MS = 1000;
/** Live calls shown with their recordings and buttons; more are counted, not detailed. */
const LIVE_DETAILED = 20;
/** Without the event stream (it failed), ask again this often. */
const POLL_MS = 5000;

export function callLabel(call) {
  return `${call.from || 'unknown'} → ${call.to || 'unknown'}`;
}

export function render(main, { fail }) {
  const liveBox = h('div', { id: 'live-calls', 'aria-live': 'polite' }, h('p', { class: 'note' }, 'Loading…'));
  const recentBox = h('div', { id: 'recent-calls' });
  const problem = h('div', { class: 'messages' });
  replace(main, heading('Calls'), problem, h('h2', {}, 'Live'), liveBox, h('h2', {}, 'Recent'), recentBox);

  let stopped = false;
  let pending = null;
  let poll = null;
  const clocks = [];

  let lastRefresh = 0;
  const refresh = async () => {
    pending = null;
    lastRefresh = Date.now();
    let listed;
    try {
      listed = (await api.calls({ limit: CALLS_SHOWN })).calls || [];
      const live = listed.filter((c) => c.state !== 'ended');
      const full = await Promise.all(live.slice(0, LIVE_DETAILED).map((c) => liveCall(c.call_id)));
      if (stopped) return;
      replace(problem);
      clocks.length = 0;
      const more = live.length - full.length;
      replace(
        liveBox,
        full.length ? full.map((c) => liveCard(c, clocks, soon, fail)) : h('p', { class: 'note', id: 'no-live-calls' }, 'No call in progress.'),
        more > 0 ? h('p', { class: 'note' }, `…and ${more} more in progress.`) : null,
      );
      tick();
      replace(recentBox, recentTable(listed.filter((c) => c.state === 'ended')));
    } catch (error) {
      if (!stopped) fail(error, problem);
    }
  };
  const soon = () => {
    if (pending === null && !stopped) pending = setTimeout(refresh, Math.max(SETTLE_MS, lastRefresh + MIN_REFRESH_MS - Date.now()));
  };
  const tick = () => {
    const now = Date.now() / 1000;
    for (const [node, since] of clocks) node.textContent = formatElapsed(now - since);
  };

  const stream = eventSource(null, (event) => {
    if (RELEVANT.has(event.type)) soon();
  });
  stream.addEventListener('open', () => {
    if (poll !== null) clearInterval(poll);
    poll = null;
    soon(); // what happened while it was away
  });
  stream.addEventListener('error', () => {
    if (poll === null && !stopped) poll = setInterval(refresh, POLL_MS);
  });
  const ticking = setInterval(tick, 1000);
  refresh();

  return () => {
    stopped = true;
    stream.close();
    clearInterval(ticking);
    if (poll !== null) clearInterval(poll);
    if (pending !== null) clearTimeout(pending);
  };
}

/** A live call with its recordings as they stand: each asked for by itself, since the service answers a
 * live recording's state from the worker recording it (the call's list comes from the index, a moment behind). */
async function liveCall(callId) {
  const call = await api.call(callId);
  const running = (call.recordings || []).filter((r) => !r.end_reason);
  call.recordings = await Promise.all(running.map((r) => api.recording(r.recording_id)));
  return call;
}

/** A running recording: its state and buttons, redrawn from the answer of each action. */
function recordingItem(recording, changed, fail) {
  const item = h('li', { dataset: { recording: recording.recording_id } });
  const show = (r) => {
    if (!isLive(r)) {
      item.remove();
      changed();
      return;
    }
    replace(
      item,
      h('a', { href: `#/recordings/${encodeURIComponent(r.recording_id)}` }, `Recording (${r.format}, ${r.stereo ? 'stereo' : 'mono'})`),
      ' ',
      h('span', { class: `state state-${stateOf(r)}` }, stateOf(r)),
      controls(r, show, fail),
    );
  };
  show(recording);
  return item;
}

function liveCard(call, clocks, changed, fail) {
  const elapsed = h('span', { class: 'elapsed' }, '–');
  clocks.push([elapsed, call.answer_time || call.start_time]);
  const recordings = (call.recordings || []).filter(isLive);
  return h(
    'article',
    { class: 'card live-call', dataset: { call: call.call_id } },
    h('h3', {}, h('a', { href: `#/calls/${encodeURIComponent(call.call_id)}` }, callLabel(call))),
    h('p', {}, h('span', { class: `state state-${call.state}` }, call.state), ' for ', elapsed),
    recordings.length
      ? h('ul', { class: 'recordings' }, recordings.map((r) => recordingItem(r, changed, fail)))
      : h('p', { class: 'note' }, 'Not recording.'),
  );
}

function recentTable(calls) {
  if (!calls.length) return h('p', { class: 'note' }, 'No ended call yet.');
  const head = ['Started', 'Caller', 'Callee', 'Duration', 'Ended by'];
  return h(
    'div',
    { class: 'scroll' },
    h(
      'table',
      { id: 'calls' },
      h('thead', {}, h('tr', {}, head.map((name) => h('th', { scope: 'col' }, name)))),
      h(
        'tbody',
        {},
        calls.map((c) =>
          h(
            'tr',
            { dataset: { call: c.call_id } },
            h('td', {}, h('a', { href: `#/calls/${encodeURIComponent(c.call_id)}` }, formatTime(c.start_time))),
            h('td', {}, c.from || '–'),
            h('td', {}, c.to || '–'),
            h('td', { class: 'num' }, c.end_time ? formatDuration(c.end_time - c.start_time) : '–'),
            h('td', {}, c.end_reason || '–'),
          ),
        ),
      ),
    ),
  );
}
