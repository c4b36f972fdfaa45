// Building the page: elements are made with textContent only, never from markup, so nothing a caller or a
// script put in a recording's metadata (a name, a header) can become markup or script.

/** An element: `h('a', {href: '#/x', class: 'link'}, 'text', child)`. Props starting with `on` are listeners. */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      node.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === 'dataset') {
      Object.assign(node.dataset, value);
    } else if (value === true) {
      node.setAttribute(name, '');
    } else {
      node.setAttribute(name, String(value));
    }
  }
  append(node, children);
  return node;
}

/** Appends children: nodes as they are, strings and numbers as text, arrays flattened, null skipped. */
export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replaces what `node` holds. */
export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** Seconds as `m:ss` (or `h:mm:ss`); under ten seconds with tenths, so a short recording does not read 0:00. */
export function formatDuration(seconds) {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return '–';
  return seconds < 10 ? `${Math.max(0, seconds).toFixed(1)} s` : formatElapsed(Math.round(seconds));
}

/** Whole seconds as `m:ss` (or `h:mm:ss`): the running time of a live call. */
export function formatElapsed(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  const pad = (n) => String(n).padStart(2, '0');
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  return h > 0 ? `${h}:${pad(m)}:${pad(whole % 60)}` : `${m}:${pad(whole % 60)}`;
}

/** A Unix time (seconds) as local date and time, to the second. */
export function formatTime(unix) {
  if (typeof unix !== 'number' || !Number.isFinite(unix)) return '–';
  const d = new Date(unix * 1000);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Bytes as B, kB or MB (powers of 1000, as a download dialog shows them). */
export function formatSize(bytes) {
  if (typeof bytes !== 'number' || !Number.isFinite(bytes)) return '–';
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1e6) return `${(bytes / 1e3).toFixed(1)} kB`;
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

/** A page's heading, focused when the page is shown so keyboard and screen-reader users start there. */
export function heading(text) {
  return h('h1', { tabindex: '-1' }, text);
}

/** A line saying what went wrong, announced to screen readers. */
export function alertLine(text) {
  return h('p', { class: 'alert', role: 'alert' }, text);
}
