// Sign-in: the API token is sent once, in the body of POST /api/session; the service answers with the session
// cookie. The token is never kept by the page (not in storage, not in a URL): the form is cleared at once.
import { ApiError, api } from './api.js';
import { alertLine, h, heading, replace } from './dom.js';

/** What a refusal means for the person at the keyboard. */
const REFUSALS = {
  401: 'That token is not the API token of this service.',
  429: 'Too many attempts from this address: wait a minute, then try again.',
};
/** The token was right but the browser refused the cookie: one the service sends for HTTPS only (an https://
 * --public-url), on a page served over plain HTTP. */
const COOKIE_REFUSED =
  'The token is right, but this browser did not keep the session cookie: the service sends it for HTTPS only (its --public-url is https://…). Open the console at that address.';

export function render(main, { notice, go }) {
  const message = h('div', { class: 'messages' }, notice ? h('p', { class: 'note', role: 'status' }, notice) : null);
  const input = h('input', {
    id: 'token',
    name: 'token',
    type: 'password',
    required: true,
    autocomplete: 'current-password',
    spellcheck: 'false',
  });
  const submit = h('button', { type: 'submit' }, 'Sign in');
  const form = h(
    'form',
    { class: 'signin', novalidate: true },
    h('label', { for: 'token' }, 'API token'),
    h('p', { class: 'hint', id: 'token-hint' }, 'As given to swml serve (--api-token, SWML_API_TOKEN or DATA/api-token).'),
    input,
    submit,
  );
  input.setAttribute('aria-describedby', 'token-hint');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = input.value;
    input.value = '';
    if (!token) {
      replace(message, alertLine('Enter the API token.'));
      input.focus();
      return;
    }
    submit.disabled = true;
    try {
      await api.signIn(token);
      // (asked once with the cookie alone: a cookie the browser refused would otherwise read as a session
      // that ended at once, and the form would come back without a reason)
      if (!(await api.resume())) {
        replace(message, alertLine(COOKIE_REFUSED));
        submit.disabled = false;
        input.focus();
        return;
      }
      go('#/recordings');
    } catch (error) {
      replace(message, alertLine(REFUSALS[error.status] || `Sign-in failed: ${error.message}`));
      submit.disabled = false;
      input.focus();
    }
  });
  replace(main, h('section', { class: 'narrow' }, heading('Sign in'), message, form));
  input.focus();
}

/** The navigation's **Sign out**: ends the session (a 401: it had ended already), then `done()`; a failure is
 * said in `where`. */
export async function signOut(where, done) {
  try {
    await api.signOut();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      replace(where, alertLine(`Sign-out failed: ${error.message}`));
      return;
    }
  }
  done();
}
