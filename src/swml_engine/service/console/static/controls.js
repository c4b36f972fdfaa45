// Live control of a recording (stop, pause, resume), as buttons: shared by the calls page and a recording's page.
import { api } from './api.js';
import { alertLine, formatDuration, h, replace } from './dom.js';

/** Which buttons a recording in each state offers. */
const ACTIONS_BY_STATE = { recording: ['pause', 'stop'], paused: ['resume', 'stop'] };
const LABELS = { stop: 'Stop', pause: 'Pause', resume: 'Resume' };

/** A recording's state as shown: a live recording that is paused says so in `pause_behavior`. */
export function stateOf(recording) {
  return recording.state === 'recording' && recording.pause_behavior ? 'paused' : recording.state;
}

/** A recording's duration as a list shows it: a live one's row is as the index had it at its start, with no
 * figure yet. */
export function listedDuration(recording) {
  return recording.end_reason || recording.state !== 'recording' ? formatDuration(recording.duration) : 'live';
}

/** Whether a recording is still being written (and so can be controlled). */
export function isLive(recording) {
  return stateOf(recording) in ACTIONS_BY_STATE;
}

/** The buttons for `recording`; `changed(metadata)` is called with its metadata after each action. */
export function controls(recording, changed, fail) {
  const box = h('div', { class: 'controls', role: 'group', 'aria-label': `Recording ${recording.control_id || recording.recording_id}` });
  const problem = h('div', { class: 'messages' });
  const buttons = (ACTIONS_BY_STATE[stateOf(recording)] || []).map((action) =>
    h(
      'button',
      {
        type: 'button',
        class: action === 'stop' ? 'danger' : '',
        dataset: { action },
        onclick: async () => {
          for (const b of buttons) b.disabled = true;
          try {
            changed(await api.control(recording.recording_id, action));
          } catch (error) {
            for (const b of buttons) b.disabled = false;
            if (error.status === 401) fail(error, problem);
            else replace(problem, alertLine(`${LABELS[action]} failed: ${error.message}`));
          }
        },
      },
      LABELS[action],
    ),
  );
  return replace(box, buttons, problem);
}
