// One call: who called whom, its recordings, and its event timeline — the events already in its log, then
// live ones as they happen (GET /api/calls/{id}/events), until the call has ended.
import { api, eventSource } from './api.js';
import { callLabel } from './calls.js';
import { formatDuration, formatTime, h, heading, replace } from './dom.js';
import { summary } from './timeline.js';

/** A call's timeline shows at most this many events (a long call's media stats add up). */
const MAX_EVENTS = 5000;

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
  const rows = h('tbody', {});
  const note = h('p', { class: 'note', id: 'timeline-state', role: 'status' }, 'Reading the events…');
  replace(
    body,
    h(
      'dl',
      { class: 'meta' },
      [
        ['Parties', callLabel(call)],
        ['State', h('span', { class: `state state-${call.state}` }, call.state)],
        ['Started', formatTime(call.start_time)],
        ['Ended', call.end_time ? `${formatTime(call.end_time)} (${call.end_reason || '–'})` : '–'],
        ['Duration', call.end_time ? formatDuration(call.end_time - call.start_time) : '–'],
        ['SIP Call-ID', call.sip_call_id || '–'],
        ['Call id', call.call_id],
      ].map(([name, value]) => [h('dt', {}, name), h('dd', {}, value)]),
    ),
    h('h2', {}, 'Recordings'),
    (call.recordings || []).length
      ? h('ul', { class: 'recordings' }, call.recordings.map((r) => h('li', {}, h('a', { href: `#/recordings/${encodeURIComponent(r.recording_id)}` }, `${formatTime(r.start_time)} · ${formatDuration(r.duration)} · ${r.format}`), ' ', h('span', { class: `state state-${r.state}` }, r.state))))
      : h('p', { class: 'note' }, 'No recordings.'),
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
    if (count < MAX_EVENTS) {
      count++;
      rows.append(h('tr', { dataset: { type: event.type } }, h('td', { class: 'num' }, typeof event.t === 'number' ? event.t.toFixed(3) : '–'), h('td', {}, event.type), h('td', {}, summary(event))));
    }
    note.textContent = `${count} events so far${event.type === 'call.state' && event.state === 'ended' ? '' : '; the call goes on'}.`;
  });
  stream.addEventListener('error', () => {
    if (stream.readyState === EventSource.CLOSED) note.textContent = `${count} events; the event stream closed.`;
  });
  return () => stream.close();
}
