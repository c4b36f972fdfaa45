// The console's router: pages live in the address's fragment (#/recordings, #/recordings/<id>, #/calls,
// #/calls/<id>, #/signin), so the service serves one page and Back works. Each page's render(main, context)
// may return a function that stops what it started (event streams, timers) when another page is shown.
import { ApiError, api } from './api.js';
import { render as call } from './call.js';
import { render as calls } from './calls.js';
import { alertLine, h, replace } from './dom.js';
import { render as recording } from './recording.js';
import { render as recordings } from './recordings.js';
import { signOut, render as signin } from './signin.js';

/** Pages by the pattern of their fragment; captured groups are the page's `params`. */
const ROUTES = [
  [/^\/signin$/, signin],
  [/^\/recordings$/, recordings],
  [/^\/recordings\/([^/]+)$/, recording],
  [/^\/calls$/, calls],
  [/^\/calls\/([^/]+)$/, call],
];
const HOME = '#/recordings';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
let stopPage = null;
/** Counts the pages shown, so a page that finishes loading after the next was shown is stopped at once. */
let shownPages = 0;
/** A line for the next page shown (after a sign-out, a delete, a session that ended). */
let notice = null;

function go(fragment) {
  if (window.location.hash === fragment) show();
  else window.location.hash = fragment;
}

function flash(text) {
  notice = text;
}

/** The session is over: forget its CSRF token, so the page asks nothing more until a sign-in. */
function signedOut(text) {
  api.forget();
  notice = text;
  go('#/signin');
}

/** What a page does with an error: a 401 means the session ended; anything else is said where it happened. */
function fail(error, where, what = 'The service answered') {
  if (error instanceof ApiError && error.status === 401) {
    signedOut('Your session has ended: sign in again.');
    return;
  }
  const text = error instanceof ApiError ? `${what}: ${error.message} (${error.status}).` : `${what}: ${error.message}`;
  replace(where, alertLine(text));
}

function show() {
  const fragment = window.location.hash || HOME;
  if (!fragment.startsWith('#/')) return; // a link within the page (the skip link)
  const [path, search] = fragment.slice(1).split('?');
  const signedIn = api.signedIn();
  if (!signedIn && path !== '/signin') {
    go('#/signin');
    return;
  }
  if (signedIn && path === '/signin') {
    go(HOME);
    return;
  }
  if (stopPage) stopPage();
  stopPage = null;
  nav.hidden = !signedIn;
  const section = path.split('/')[1];
  for (const link of nav.querySelectorAll('a')) {
    if (link.dataset.section === section) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const route = ROUTES.map(([pattern, page]) => [path.match(pattern), page]).find(([m]) => m);
  const context = { query: new URLSearchParams(search || ''), go, fail, flash, notice };
  const shown = notice;
  notice = null;
  if (!route) {
    replace(main, h('h1', { tabindex: '-1' }, 'Not found'), h('p', {}, h('a', { href: HOME }, 'Recordings')));
    return;
  }
  const [match, page] = route;
  context.params = match.slice(1).map(decodeURIComponent);
  const generation = ++shownPages;
  Promise.resolve(page(main, context)).then((stop) => {
    if (typeof stop !== 'function') return;
    if (generation === shownPages) stopPage = stop;
    else stop(); // another page came while this one was loading
  });
  if (shown && path !== '/signin') main.prepend(h('p', { class: 'note', role: 'status' }, shown));
  const title = main.querySelector('h1');
  if (title && document.activeElement === document.body) title.focus();
}

document.getElementById('sign-out').addEventListener('click', () => signOut(main, () => signedOut('Signed out.')));

window.addEventListener('hashchange', show);
api.resume().then(show, (error) => replace(main, alertLine(`The service did not answer: ${error.message}`)));
