// One call: who called whom, its recordings, and its event timeline — the events already in its log, then
// live ones as they happen (GET /api/calls/{id}/events), until the call has ended.
import { api, eventSource } from './api.js';
import { callLabel } from './calls.js';
import { listedDuration } from './controls.js';
import { formatDuration, formatTime, h, heading, replace } from './dom.js';
import { summary } from './timeline.js';

/** A call's timeline shows at most this many events (a long call's media stats add up). */
const MAX_EVENTS = 5000;
/** After a call's or a recording's event, wait this long for more before asking for the call again. */
const SETTLE_MS = 300;

export async function render(main, { params, fail }) {
  const [id] = params;
  const body = h('div', {}, h('p', { class: 'note' }, 'Loading…'));
  replace(main, h('p', { class: 'crumbs' }, h('a', { href: '#/calls' }, '← Calls')), heading('Call'), body);
  let call;
  try {
    call = await api.call(id);
  } catch (error) {
    fail(error, body);
    return undefined;
  }
  const detailsBox = h('div', {}, details(call));
  const recordingsBox = h('div', { id: 'call-recordings' }, recordingList(call.recordings));
  // The call's answer or end, a recording's start, pause or end in the timeline: the call is asked for again
  // (its details and recordings as they stand then).
  let asking = null;
  const changed = () => {
    if (asking !== null) return; // (a call's history holds several: one request for them all)
    asking = setTimeout(async () => {
      try {
        const now = await api.call(id);
        replace(detailsBox, details(now));
        replace(recordingsBox, recordingList(now.recordings));
      } catch {
        // (the timeline goes on; the list is as it was)
      }
      asking = null;
    }, SETTLE_MS);
  };
  const rows = h('tbody', {});
  const note = h('p', { class: 'note', id: 'timeline-state', role: 'status' }, 'Reading the events…');
  replace(
    body,
    detailsBox,
    h('h2', {}, 'Recordings'),
    recordingsBox,
    h('h2', {}, 'Events'),
    note,
    h(
      'div',
      { class: 'scroll' },
      h('table', { id: 'timeline' }, h('thead', {}, h('tr', {}, ['t (s)', 'Event', 'Details'].map((name) => h('th', { scope: 'col' }, name)))), rows),
    ),
  );

  let count = 0;
  const stream = eventSource(id, (event) => {
    if (event.type === 'stream.end' || event.type === 'stream.dropped') {
      // (stream.end: every event was sent, the call is over — or, with a reason, the session ended;
      // dropped: we read too slowly, it says why)
      stream.close();
      note.textContent = event.type === 'stream.end' && !event.reason ? `${count} events; the call has ended.` : `${count} events; the stream stopped: ${event.reason}.`;
      return;
    }
    if (event.type === 'record.state' || event.type === 'call.state') changed();
    if (count < MAX_EVENTS) {
      count++;
      rows.append(h('tr', { dataset: { type: event.type } }, h('td', { class: 'num' }, typeof event.t === 'number' ? event.t.toFixed(3) : '–'), h('td', {}, event.type), h('td', {}, summary(event))));
    }
    note.textContent = `${count} events so far${event.type === 'call.state' && event.state === 'ended' ? '' : '; the call goes on'}.`;
  });
  stream.addEventListener('error', () => {
    if (stream.readyState === EventSource.CLOSED) note.textContent = `${count} events; the event stream closed.`;
  });
  return () => {
    stream.close();
    if (asking !== null) clearTimeout(asking);
  };
}

function details(call) {
  return h(
    'dl',
    { class: 'meta' },
    [
      ['Parties', callLabel(call)],
      ['State', h('span', { class: `state state-${call.state}`, id: 'call-state' }, call.state)],
      ['Started', formatTime(call.start_time)],
      ['Ended', call.end_time ? `${formatTime(call.end_time)} (${call.end_reason || '–'})` : '–'],
      ['Duration', call.end_time ? formatDuration(call.end_time - call.start_time) : '–'],
      ['SIP Call-ID', call.sip_call_id || '–'],
      ['Call id', call.call_id],
    ].map(([name, value]) => [h('dt', {}, name), h('dd', {}, value)]),
  );
}

function recordingList(recordings) {
  if (!(recordings || []).length) return h('p', { class: 'note' }, 'No recordings.');
  return h(
    'ul',
    { class: 'recordings' },
    recordings.map((r) =>
      h('li', { dataset: { recording: r.recording_id } }, h('a', { href: `#/recordings/${encodeURIComponent(r.recording_id)}` }, `${formatTime(r.start_time)} · ${listedDuration(r)} · ${r.format}`), ' ', h('span', { class: `state state-${r.state}` }, r.state)),
    ),
  );
}
