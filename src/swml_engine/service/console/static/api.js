// The console's one way to the HTTP API (docs/serve.md). Requests go to this origin with the session cookie,
// which the page never sees (HttpOnly). State-changing requests carry the session's CSRF token in a header a
// cross-site form cannot send (docs/console.md, "Security").

/** The header a state-changing request carries the session's CSRF token in. */
export const CSRF_HEADER = 'X-CSRF-Token';
/** Bound on the points asked for a waveform (the API's own bound). */
export const MAX_WAVEFORM_POINTS = 2000;

/** An answer other than 2xx: its status and the API's `detail`. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `the service answered ${status}`);
    this.status = status;
  }
}

/**
 * The session's CSRF token, held in this page's memory only (never in storage): given at sign-in, asked
 * again (GET /api/session) when the page loads. null: not signed in.
 */
let csrf = null;

/** Whether a request changes something: it then carries the CSRF token. */
const changes = (method) => method !== 'GET' && method !== 'HEAD';

async function request(method, path, options = {}) {
  try {
    return await send(method, path, options);
  } catch (error) {
    // Another tab of this browser signed in anew (after a sign-out there, or once the session ran out): the
    // cookie, shared by the tabs, now names that session, whose CSRF token this page never saw, and every
    // change it asked for — even a sign-out — was refused (403). Take the session's token and ask once more;
    // a 401 here means no session at all (the page then asks for the token).
    if (!(error instanceof ApiError && error.status === 403) || !changes(method) || csrf === null) throw error;
    const held = csrf;
    csrf = (await send('GET', '/api/session')).csrf_token || null;
    if (csrf === held) throw error; // (refused for another reason)
    return send(method, path, options);
  }
}

async function send(method, path, { body, query } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(name, String(value));
  }
  const headers = { Accept: 'application/json' };
  if (changes(method) && csrf) headers[CSRF_HEADER] = csrf;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const answer = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    cache: 'no-store',
  });
  if (!answer.ok) {
    let detail = '';
    try {
      const parsed = await answer.json();
      detail = typeof parsed.detail === 'string' ? parsed.detail : JSON.stringify(parsed.detail);
    } catch {
      detail = answer.statusText;
    }
    throw new ApiError(answer.status, detail);
  }
  return answer.status === 204 ? null : answer.json();
}

const enc = encodeURIComponent;

export const api = {
  /** Opens a session with the API token (the cookie comes with the answer); keeps its CSRF token. */
  async signIn(token) {
    csrf = (await request('POST', '/api/session', { body: { token } })).csrf_token;
  },
  /**
   * Whether this browser has a session. Its cookie is HttpOnly: the service marks the page it served when the
   * browser sent one, and only then is the service asked whether it is still valid.
   */
  async resume() {
    // (a page that signed in itself knows it holds a cookie, whatever the page was served with)
    if (csrf === null && document.querySelector('meta[name="swml-session"]')?.content !== 'cookie') return false;
    try {
      const session = await request('GET', '/api/session');
      csrf = session.csrf_token || null;
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) throw error;
      csrf = null;
    }
    return csrf !== null;
  },
  async signOut() {
    try {
      await request('DELETE', '/api/session');
    } finally {
      csrf = null;
    }
  },
  forget() {
    csrf = null;
  },
  signedIn: () => csrf !== null,
  recordings: (query) => request('GET', '/api/recordings', { query }),
  recording: (id) => request('GET', `/api/recordings/${enc(id)}`),
  deleteRecording: (id) => request('DELETE', `/api/recordings/${enc(id)}`),
  /** `action`: stop, pause or resume (a live recording). */
  control: (id, action) => request('POST', `/api/recordings/${enc(id)}/${action}`, action === 'pause' ? { body: { behavior: 'silence' } } : {}),
  waveform: (id, points) => request('GET', `/api/recordings/${enc(id)}/waveform`, { query: { points: Math.min(points, MAX_WAVEFORM_POINTS) } }),
  calls: (query) => request('GET', '/api/calls', { query }),
  call: (id) => request('GET', `/api/calls/${enc(id)}`),
};

/** Where the audio is (the <audio> element and the download link send the cookie themselves). */
export function audioUrl(id) {
  return `/api/recordings/${enc(id)}/audio`;
}

/** Server-Sent Events of every call (`null`) or of one: the event objects of events.jsonl. */
/** The event stream of every call (callId null) or of one, each event given to onEvent parsed (a
 * message that is not JSON is skipped). */
export function eventSource(callId, onEvent) {
  const stream = new EventSource(callId === null ? '/api/events' : `/api/calls/${enc(callId)}/events`);
  stream.addEventListener('message', (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    onEvent(event);
  });
  return stream;
}
