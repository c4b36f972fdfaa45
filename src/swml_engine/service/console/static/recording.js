// A recording's page: its metadata, the player (the audio route answers Range requests, so seeking works), the
// waveform of each channel, download, and delete after a confirmation.
import { api, audioUrl } from './api.js';
import { controls, isLive, stateOf } from './controls.js';
import { formatDuration, formatSize, formatTime, h, heading, replace } from './dom.js';
import { channelLabels, channelsOf, drawWaveform } from './waveform.js';

export async function render(main, { params, go, fail, flash }) {
  const [id] = params;
  const body = h('div', {}, h('p', { class: 'note' }, 'Loading…'));
  replace(main, h('p', { class: 'crumbs' }, h('a', { href: '#/recordings' }, '← Recordings')), heading('Recording'), body);
  let meta;
  try {
    meta = await api.recording(id);
  } catch (error) {
    fail(error, body);
    return undefined;
  }

  const player = h('audio', { id: 'player', controls: true, preload: 'metadata', src: audioUrl(id) });
  const canvas = h('canvas', { id: 'waveform', role: 'img', 'aria-label': 'Waveform (loading)' });
  const playhead = h('div', { class: 'playhead', 'aria-hidden': 'true' });
  const wave = h('div', { class: 'wave' }, canvas, playhead);
  const waveNote = h('div', { class: 'messages' });
  const live = h('div', {});

  const deleteButton = h('button', { type: 'button', class: 'danger', id: 'delete' }, 'Delete…');
  const confirmDialog = deleteDialog(id, go, fail, flash, waveNote);
  deleteButton.addEventListener('click', () => confirmDialog.showModal());

  replace(
    body,
    details(meta),
    live,
    h('h2', {}, 'Listen'),
    player,
    wave,
    waveNote,
    h(
      'p',
      { class: 'actions' },
      h('a', { class: 'button', id: 'download', href: audioUrl(id), download: `${id}.${meta.format}` }, 'Download'),
      deleteButton,
    ),
    confirmDialog,
  );
  // A live recording can be stopped, paused and resumed from here too; its details follow each action.
  let info = body.firstChild;
  const showControls = (m) => {
    const fresh = details(m);
    info.replaceWith(fresh);
    info = fresh;
    replace(live, isLive(m) ? controls(m, showControls, fail) : null);
  };
  showControls(meta);

  // Clicking the waveform seeks there; the playhead follows the player.
  const duration = () => (Number.isFinite(player.duration) ? player.duration : meta.duration || 0);
  canvas.addEventListener('click', (event) => {
    const box = canvas.getBoundingClientRect();
    if (duration() > 0) player.currentTime = ((event.clientX - box.left) / box.width) * duration();
  });
  const follow = () => {
    playhead.style.left = `${duration() > 0 ? (100 * player.currentTime) / duration() : 0}%`;
  };
  player.addEventListener('timeupdate', follow);
  player.addEventListener('seeked', follow);

  let peaks = null;
  let waveDuration = meta.duration;
  const labels = channelLabels(meta.channel_layout, meta.channels || 1);
  const draw = () => {
    if (peaks) drawWaveform(canvas, peaks, peaks.map((c, i) => c.label || labels[i]), waveDuration);
  };
  const resized = new ResizeObserver(() => draw());
  try {
    const answer = await api.waveform(id, Math.round(canvas.clientWidth || 800));
    waveDuration = answer.duration;
    peaks = channelsOf(answer);
    draw();
    resized.observe(wave);
  } catch (error) {
    fail(error, waveNote, 'The waveform could not be made');
  }
  return () => resized.disconnect();
}

function details(meta) {
  const rows = [
    ['Call', meta.call_id ? h('a', { href: `#/calls/${encodeURIComponent(meta.call_id)}` }, meta.call_id) : '–'],
    ['State', h('span', { class: `state state-${stateOf(meta)}`, id: 'state' }, stateOf(meta))],
    ['Started', formatTime(meta.start_time)],
    ['Ended', meta.end_time ? `${formatTime(meta.end_time)} (${meta.end_reason || '–'})` : '–'],
    ['Duration', formatDuration(meta.duration)],
    ['Format', `${meta.format}, ${meta.sample_rate} Hz, ${meta.channels === 2 ? 'stereo' : 'mono'}`],
    ['Channels', channelLabels(meta.channel_layout, meta.channels || 1).join(', ')],
    ['Size', formatSize(meta.size)],
    ['Method', `${meta.method}${meta.control_id ? ` (control_id ${meta.control_id})` : ''}`],
    ['Recording id', meta.recording_id],
  ];
  return h('dl', { class: 'meta' }, rows.map(([name, value]) => [h('dt', {}, name), h('dd', {}, value)]));
}

function deleteDialog(id, go, fail, flash, where) {
  const yes = h('button', { type: 'button', class: 'danger', id: 'confirm-delete' }, 'Delete');
  const no = h('button', { type: 'button', class: 'quiet', autofocus: true }, 'Keep it');
  const dialog = h(
    'dialog',
    { 'aria-labelledby': 'delete-title' },
    h('h2', { id: 'delete-title' }, 'Delete this recording?'),
    h('p', {}, 'Its audio and metadata are removed for good, wherever they are kept.'),
    h('p', { class: 'actions' }, yes, no),
  );
  no.addEventListener('click', () => dialog.close());
  yes.addEventListener('click', async () => {
    yes.disabled = true;
    try {
      await api.deleteRecording(id);
      dialog.close();
      flash('Recording deleted.');
      go('#/recordings');
    } catch (error) {
      dialog.close();
      yes.disabled = false;
      fail(error, where, 'Not deleted');
    }
  });
  return dialog;
}
