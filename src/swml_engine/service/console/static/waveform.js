// A recording's waveform, one lane per channel, drawn on a canvas from the API's per-channel min/max peaks
// (GET /api/recordings/{id}/waveform). Silence is shaded so pauses and gaps stand out; each lane is labelled
// from the recording's channel_layout (caller / heard).

/** Below this (about -50 dBFS) a point counts as silence: shaded, not drawn as sound. */
export const SILENCE = 0.003;
/** CSS pixels per lane, and for the time axis under them. */
const LANE_HEIGHT = 88;
const AXIS_HEIGHT = 18;
/** Steps of the time axis (seconds): the smallest that leaves at least MIN_TICK_GAP pixels between ticks. */
const TICK_STEPS = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
const MIN_TICK_GAP = 70;
const COLOURS = { background: '#f6f8fa', silence: '#e3e7ec', centre: '#c5ccd4', wave: ['#1f6f8b', '#b4543a'], label: '#24292f' };

/** What each side of a channel_layout holds, in words an operator uses. */
const SIDE_WORDS = { speak: 'caller', listen: 'heard', 'speak+listen': 'caller + heard', silence: 'silence' };

/** Lane labels from a recording's channel_layout: `{left: 'speak', right: 'listen'}` → ['left: caller', 'right: heard']. */
export function channelLabels(layout, count) {
  if (layout && typeof layout === 'object') {
    const labels = Object.entries(layout).map(([side, role]) => label(side, role));
    if (labels.length === count) return labels;
  }
  return Array.from({ length: count }, (_, i) => `channel ${i + 1}`);
}

function label(side, role) {
  return role ? `${side}: ${SIDE_WORDS[role] || role}` : side;
}

/** The waveform answer's channels as `{label, min: [...], max: [...]}` (values -1..1, labelled by side and role). */
export function channelsOf(data) {
  return (data.channels || []).map((channel, i) => ({
    label: channel.label ? label(channel.label, channel.role) : `channel ${i + 1}`,
    min: channel.min || [],
    max: channel.max || [],
  }));
}

/** Seconds under the lanes, at a step that keeps the labels apart. */
function drawAxis(ctx, width, top, duration) {
  ctx.fillStyle = COLOURS.centre;
  ctx.fillRect(0, top, width, 1);
  if (!(duration > 0)) return;
  const step = TICK_STEPS.find((s) => (s / duration) * width >= MIN_TICK_GAP) || TICK_STEPS[TICK_STEPS.length - 1];
  ctx.font = '11px system-ui, sans-serif';
  for (let t = step; t < duration; t += step) {
    const x = Math.round((t / duration) * width);
    ctx.fillStyle = COLOURS.centre;
    ctx.fillRect(x, top, 1, 5);
    ctx.fillStyle = COLOURS.label;
    const text = t >= 60 ? `${Math.floor(t / 60)}:${String(Math.round(t % 60)).padStart(2, '0')}` : `${t} s`;
    ctx.fillText(text, x + 3, top + 14);
  }
}

/**
 * Draws `channels` on `canvas` (its CSS width, one lane each) and records what was drawn on the canvas's
 * data attributes (`data-channels`, `data-lane-height`, `data-peaks`: each lane's largest peak,
 * `data-silent`: each lane's share of silent points), which tests and assistive tools can read.
 */
export function drawWaveform(canvas, channels, labels, duration) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth || 600));
  const lanes = Math.max(1, channels.length);
  const height = lanes * LANE_HEIGHT + AXIS_HEIGHT;
  canvas.style.height = `${height}px`;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.fillStyle = COLOURS.background;
  ctx.fillRect(0, 0, width, height);
  drawAxis(ctx, width, lanes * LANE_HEIGHT, duration);

  const peaks = [];
  const silent = [];
  channels.forEach((channel, lane) => {
    const top = lane * LANE_HEIGHT;
    const mid = top + LANE_HEIGHT / 2;
    const half = LANE_HEIGHT / 2 - 6;
    const n = Math.min(channel.min.length, channel.max.length);
    let largest = 0;
    let quiet = 0;
    for (let x = 0; x < width && n > 0; x++) {
      // the points under this pixel column
      const from = Math.floor((x * n) / width);
      const to = Math.max(from + 1, Math.floor(((x + 1) * n) / width));
      let lo = 0;
      let hi = 0;
      for (let i = from; i < to && i < n; i++) {
        lo = Math.min(lo, channel.min[i]);
        hi = Math.max(hi, channel.max[i]);
      }
      const peak = Math.max(-lo, hi);
      if (peak < SILENCE) {
        ctx.fillStyle = COLOURS.silence;
        ctx.fillRect(x, top + 2, 1, LANE_HEIGHT - 4);
        continue;
      }
      ctx.fillStyle = COLOURS.wave[lane % COLOURS.wave.length];
      const y1 = mid - Math.min(1, hi) * half;
      const y2 = mid - Math.max(-1, lo) * half;
      ctx.fillRect(x, y1, 1, Math.max(1, y2 - y1));
    }
    for (let i = 0; i < n; i++) {
      const peak = Math.max(-channel.min[i], channel.max[i]);
      largest = Math.max(largest, peak);
      if (peak < SILENCE) quiet++;
    }
    ctx.fillStyle = COLOURS.centre;
    ctx.fillRect(0, mid, width, 1);
    if (lane > 0) ctx.fillRect(0, top, width, 1);
    const label = labels[lane] || `channel ${lane + 1}`;
    ctx.font = '12px system-ui, sans-serif';
    const textWidth = ctx.measureText(label).width;
    ctx.fillStyle = 'rgba(255, 255, 255, 0.85)';
    ctx.fillRect(4, top + 4, textWidth + 8, 16);
    ctx.fillStyle = COLOURS.label;
    ctx.fillText(label, 8, top + 16);
    peaks.push(Number(largest.toFixed(4)));
    silent.push(n ? Number((quiet / n).toFixed(3)) : 1);
  });
  canvas.dataset.channels = String(channels.length);
  canvas.dataset.laneHeight = String(Math.round(LANE_HEIGHT * ratio)); // in the canvas's own pixels
  canvas.dataset.peaks = JSON.stringify(peaks);
  canvas.dataset.silent = JSON.stringify(silent);
  const words = channels.map((_, i) => `${labels[i]}: peak ${Math.round(peaks[i] * 100)} %, ${Math.round(silent[i] * 100)} % silence`);
  canvas.setAttribute('aria-label', `Waveform. ${words.join('; ')}.`);
}
