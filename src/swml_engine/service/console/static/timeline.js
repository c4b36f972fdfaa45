// A call's events (the objects of its events.jsonl) in words: what the timeline shows for each kind.

/** One line for each kind of event an operator reads most; any other shows its fields. */
const SUMMARIES = {
  'call.state': (e) => [e.state, e.reason && `(${e.reason})`],
  'step.start': (e) => [`${e.section}[${e.index}]`, e.method],
  'step.end': (e) => [`${e.section}[${e.index}]`, e.method, e.result && `→ ${e.result}`],
  'record.state': (e) => [e.state, e.control_id && `control_id ${e.control_id}`, e.end_reason && `(${e.end_reason})`],
  'vars.set': (e) => [`${e.name} =`, JSON.stringify(e.value)],
  dtmf: (e) => [e.digit, e.direction],
  'play.start': (e) => [e.url],
  'play.end': (e) => [e.url],
  error: (e) => [e.where, e.message],
};
/** Longest text shown for one event (a SIP header or a variable can be long). */
const MAX_TEXT = 240;
/** Fields every event has, left out of the generic summary. */
const COMMON = new Set(['t', 'type', 'call_id', 'node_id']);

export function summary(event) {
  const make = SUMMARIES[event.type];
  const text = make
    ? make(event).filter((part) => part !== undefined && part !== null && part !== '' && part !== false).join(' ')
    : Object.entries(event)
        .filter(([name]) => !COMMON.has(name))
        .map(([name, value]) => `${name}=${typeof value === 'string' ? value : JSON.stringify(value)}`)
        .join(' ');
  return text.length > MAX_TEXT ? `${text.slice(0, MAX_TEXT - 1)}…` : text;
}
