// The phone page (/phone, docs/phone.md): call this service's script from the browser. The same sign-in as the
// console (its session cookie; its form when there is none), a call button, hang-up, a keypad whose keys —
// clicked, or typed on the keyboard while a call is up — go to the script as DTMF, and a status line.
import { api } from './api.js';
import { alertLine, h, heading, replace } from './dom.js';
import { CODECS, KEYS, PhoneCall, ending } from './phone.call.js';
import { signOut, render as signin } from './signin.js';

/** The status line in each state, for a person (and a screen reader: it is a live region). */
const SAYS = {
  idle: 'Ready to call.',
  connecting: 'Connecting…',
  ringing: 'Ringing: the script is running.',
  early: 'Early media: the script plays before it answers.',
  answered: 'Answered.',
};
/** How long a key shows as pressed when it was typed on the keyboard. */
const PRESSED_MS = 150;

const main = document.getElementById('main');
const nav = document.getElementById('nav');
/** The page's call (one at a time), and what stops the page's keyboard listener. */
let current = null;
let stopKeyboard = null;

/** The phone, or the sign-in form when this browser has no session. */
function show(notice = null) {
  if (stopKeyboard) stopKeyboard();
  stopKeyboard = null;
  nav.hidden = !api.signedIn();
  // (after a sign-in the form asks for the console's first page; here the one page is the phone)
  if (!api.signedIn()) signin(main, { notice, go: () => show() });
  else stopKeyboard = phone(notice);
  const title = main.querySelector('h1');
  if (title && document.activeElement === document.body) title.focus();
}

/** Renders the phone; returns what stops its keyboard listener. */
function phone(notice) {
  const codec = h('select', { id: 'codec', name: 'codec' }, Object.entries(CODECS).map(([value, choice]) => h('option', { value }, choice.label)));
  const raw = h('input', { id: 'raw', name: 'raw', type: 'checkbox' });
  const status = h('p', { id: 'status', class: 'phone-status', role: 'status' }, SAYS.idle);
  const callLink = h('p', { id: 'call-id', class: 'note', hidden: true });
  const callButton = h('button', { id: 'call', type: 'button' }, 'Call');
  const hangupButton = h('button', { id: 'hangup', type: 'button', class: 'danger', disabled: true }, 'Hang up');
  const sent = h('p', { id: 'sent', class: 'note', 'aria-live': 'polite' });
  const remote = h('audio', { id: 'remote', autoplay: true });
  const keys = [...KEYS].map((key) => h('button', { type: 'button', class: 'key', dataset: { key }, 'aria-label': key === '*' ? 'star' : key === '#' ? 'pound' : key, disabled: true, onclick: () => press(key) }, key));

  function press(key) {
    if (!current || !current.dtmf(key)) return;
    sent.textContent = `${sent.textContent ? `${sent.textContent} ` : 'Keys sent: '}${key}`;
  }

  function update(call) {
    const ended = call.state === 'ended';
    if (ended) {
      status.textContent = call.problem || `Call ended: ${ending(call.reason)}.`;
      status.className = call.problem ? 'phone-status alert' : 'phone-status';
      if (call.problem) status.setAttribute('role', 'alert');
    } else {
      status.textContent = call.codec ? `${SAYS[call.state]} Codec: ${call.codec}.` : SAYS[call.state];
      status.className = `phone-status state-${call.state}`;
      status.setAttribute('role', 'status');
    }
    if (call.callId) {
      // (in a new tab: leaving this page would hang up)
      const link = h('a', { href: `/#/calls/${encodeURIComponent(call.callId)}`, target: '_blank', rel: 'noopener' }, call.callId);
      replace(callLink, 'Call ', link, ' in the console (a new tab)');
      callLink.hidden = false;
    }
    if (remote.srcObject !== call.remote) remote.srcObject = ended ? null : call.remote;
    callButton.disabled = call.live;
    codec.disabled = call.live;
    raw.disabled = call.live;
    hangupButton.disabled = !call.live;
    for (const key of keys) key.disabled = !call.canSendDigits;
    if (ended && call.refused) {
      // A socket refused at once may mean the session ended (the browser hides the refusal's status).
      api.resume().then((signedIn) => (signedIn ? null : show('Your session has ended: sign in again.')), () => null);
    }
    // (a button that was just disabled loses the focus: it goes to the next thing to do)
    if (ended && (document.activeElement === hangupButton || document.activeElement === document.body)) callButton.focus();
  }

  callButton.addEventListener('click', () => {
    current = new PhoneCall(update);
    sent.textContent = '';
    callLink.hidden = true;
    current.start(CODECS[codec.value], raw.checked).catch((error) => current.end(null, `The call could not start: ${error.message}.`));
    hangupButton.focus();
  });
  hangupButton.addEventListener('click', () => current?.hangup());

  replace(
    main,
    h(
      'section',
      { class: 'phone' },
      notice ? h('p', { class: 'note', role: 'status' }, notice) : null,
      heading('Phone'),
      h('p', { class: 'hint' }, "Calls this service's script from your browser's microphone, as a SIP caller would: the script answers, plays, records and hears the keypad."),
      h('div', { class: 'field' }, h('label', { for: 'codec' }, 'Codec'), codec),
      h('div', { class: 'check' }, raw, h('label', { for: 'raw' }, 'Send the microphone as it is: no echo cancellation, noise suppression or gain control (for testing what the script records)')),
      status,
      callLink,
      h('div', { class: 'phone-actions' }, callButton, hangupButton),
      h('div', { class: 'keypad', role: 'group', 'aria-label': 'Keypad (or type 0-9, * and # while a call is up)' }, keys),
      sent,
      remote,
    ),
  );

  const typed = (event) => {
    if (event.ctrlKey || event.altKey || event.metaKey || event.repeat) return;
    if (event.key.length !== 1 || !KEYS.includes(event.key)) return;
    if (event.target instanceof HTMLSelectElement) return; // (digits there pick an option)
    if (!current?.canSendDigits) return;
    event.preventDefault();
    press(event.key);
    const key = keys.find((k) => k.dataset.key === event.key);
    key.classList.add('pressed');
    setTimeout(() => key.classList.remove('pressed'), PRESSED_MS);
  };
  document.addEventListener('keydown', typed);
  return () => document.removeEventListener('keydown', typed);
}

document.getElementById('sign-out').addEventListener('click', () => {
  current?.hangup();
  signOut(main, () => show('Signed out.'));
});
// Leaving the page during a call asks first (the browser's own question), and then hangs up (the socket's
// close would too; this says so to the service first).
window.addEventListener('beforeunload', (event) => {
  if (current?.live) event.preventDefault();
});
window.addEventListener('pagehide', () => current?.hangup());
api.resume().then(
  () => show(),
  (error) => replace(main, alertLine(`The service did not answer: ${error.message}`)),
);
