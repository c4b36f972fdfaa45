// One call from this browser to the engine (docs/phone.md): the microphone, one RTCPeerConnection, and the
// signalling WebSocket GET /api/phone, which the session cookie authenticates. The offer goes out once ICE has
// gathered this browser's own addresses (the service takes no trickled candidates); the service answers when
// the script does. A call's state only moves forward, and every way out of it goes through end().

/**
 * Where a call is: `idle` (not started), `connecting` (microphone, ICE, the WebSocket), `ringing` (the script
 * runs, not answered yet), `early` (early media: the script plays before it answers), `answered`, `ended`
 * (with `reason`, and `problem` when it ended because something went wrong).
 */
export const STATES = ['idle', 'connecting', 'ringing', 'early', 'answered', 'ended'];

/** The states in which the script hears the keypad. */
const DIGITS_GO_IN = new Set(['ringing', 'early', 'answered']);
/** The keys a keypad has (the protocol also takes A-D). */
export const KEYS = '123456789*0#';
/** The protocol's bound on a message, either way. */
const MAX_MESSAGE = 64 * 1024;
/** How long ICE may gather this browser's addresses before the offer goes with those found (host only: fast). */
const GATHER_MS = 3000;
/** After a hang-up, how long the service has to say "ended" before the page closes the socket itself. */
const HANGUP_MS = 3000;

/** Codec choices: the browser's codecs in the order the offer lists them (the service takes the first it can). */
export const CODECS = {
  opus: { label: 'Opus, wideband (16 kHz)', first: ['audio/opus'], only: false },
  g711: { label: 'G.711, as a phone line (8 kHz)', first: ['audio/PCMU', 'audio/PCMA'], only: true },
};

/** What the page says when the media between this browser and the service did not connect, or went. */
const MEDIA_FAILED = 'The media connection failed: the browser and the service could not reach each other (docs/phone.md, "Networks").';
const MEDIA_LOST = 'The media connection was lost: the service no longer heard this browser.';

/** Why a call ended, in words, by the engine's end reason (docs/methods.md). */
const ENDINGS = {
  remote_hangup: 'you hung up',
  remote_cancel: 'you hung up before the answer',
  hangup: 'the script hung up',
  script_end: 'the script ran out of steps',
  busy: 'the script answered busy',
  decline: 'the script declined the call',
  max_duration: 'the call reached its longest duration',
  media_error: 'its media failed',
  error: 'the script could not go on',
  shutdown: 'the service is stopping',
};

/** `reason` (an end reason) as a person reads it. */
export function ending(reason) {
  return ENDINGS[reason] ? `${ENDINGS[reason]} (${reason})` : String(reason);
}

/** What went wrong with the microphone, for the person at it. */
function microphoneProblem(error) {
  if (error && error.name === 'NotAllowedError') return 'The browser did not allow the microphone: allow it for this page, then call again.';
  if (error && error.name === 'NotFoundError') return 'This browser has no microphone: plug one in, then call again.';
  return `The microphone could not be opened: ${error && error.message ? error.message : error}.`;
}

/** Resolves once ICE gathering is complete, or after `ms` (the offer then holds the candidates found so far). */
function gathered(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === 'complete') done();
    };
    const timer = setTimeout(done, ms);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

/** Puts `choice`'s codecs first in what the transceiver offers (only them, for G.711). False: the browser cannot. */
function prefer(transceiver, choice) {
  if (typeof transceiver.setCodecPreferences !== 'function' || !window.RTCRtpReceiver?.getCapabilities) return false;
  const all = RTCRtpReceiver.getCapabilities('audio').codecs;
  const rank = (codec) => {
    const at = choice.first.findIndex((mime) => mime.toLowerCase() === codec.mimeType.toLowerCase());
    return at < 0 ? choice.first.length : at;
  };
  const chosen = all.filter((codec) => !choice.only || rank(codec) < choice.first.length);
  transceiver.setCodecPreferences(chosen.map((codec, i) => [rank(codec), i, codec]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map(([, , c]) => c));
  return true;
}

/** The codec an SDP answer chose: the name of the first payload type of its audio line (`opus`, `PCMU` ...). */
function chosenCodec(sdp) {
  const first = /^m=audio \S+ \S+ (\d+)/m.exec(sdp);
  const name = first && new RegExp(`^a=rtpmap:${first[1]} ([^/\\s]+)`, 'm').exec(sdp);
  return name ? name[1].slice(0, 20) : null;
}

/** The signalling WebSocket's address: this page's origin, ws: or wss: as the page is http: or https:. */
function signallingUrl() {
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${window.location.host}/api/phone`;
}

export class PhoneCall {
  /** `changed(call)` is called after each change of state, of the remote audio or of the call's id. */
  constructor(changed) {
    this.changed = changed;
    this.state = 'idle';
    /** The engine's id for this call (from `ringing`). */
    this.callId = null;
    /** The end reason the service gave, or null. */
    this.reason = null;
    /** What went wrong, in words, when the call ended because of it. */
    this.problem = null;
    /** The codec the service chose (from its answer). */
    this.codec = null;
    /** What the script plays, once the browser receives it. */
    this.remote = null;
    this.microphone = null;
    this.pc = null;
    this.socket = null;
    /** The service's messages are handled one after another (applying an answer takes a moment). */
    this.inbox = Promise.resolve();
    this.hangupTimer = null;
    /** Whether the call ended because the WebSocket was refused before any message (a session that ended?). */
    this.refused = false;
  }

  get canSendDigits() {
    return DIGITS_GO_IN.has(this.state) && this.socket?.readyState === WebSocket.OPEN;
  }

  get live() {
    return this.state !== 'idle' && this.state !== 'ended';
  }

  /**
   * Calls the engine with codecs `choice` (a CODECS entry). `raw`: the microphone as it is, without the
   * browser's echo cancellation, noise suppression and gain control (which suit a conversation, but change
   * what the script hears and records: a level that rides up and down, steady sounds taken for noise).
   */
  async start(choice, raw = false) {
    if (this.state !== 'idle') throw new Error(`a call that is ${this.state} cannot start again`);
    this.move('connecting');
    if (!window.isSecureContext || !navigator.mediaDevices) {
      this.end(null, 'Browsers give the microphone only to pages served over HTTPS or from localhost: open this page at an https:// address (docs/phone.md, "Networks").');
      return;
    }
    if (typeof RTCPeerConnection !== 'function') {
      this.end(null, 'This browser has no WebRTC: use a current Chromium or Firefox.');
      return;
    }
    const processed = !raw;
    const audio = { echoCancellation: processed, noiseSuppression: processed, autoGainControl: processed };
    try {
      this.microphone = await navigator.mediaDevices.getUserMedia({ audio, video: false });
    } catch (error) {
      this.end(null, microphoneProblem(error));
      return;
    }
    if (this.state !== 'connecting') {
      for (const track of this.microphone.getTracks()) track.stop(); // hung up while the browser asked
      return;
    }
    try {
      this.pc = new RTCPeerConnection({ iceServers: [] });
      const [track] = this.microphone.getAudioTracks();
      prefer(this.pc.addTransceiver(track, { direction: 'sendrecv', streams: [this.microphone] }), choice);
      this.pc.addEventListener('track', (event) => {
        this.remote = event.streams[0] || new MediaStream([event.track]);
        this.changed(this);
      });
      this.pc.addEventListener('connectionstatechange', () => {
        if (this.pc?.connectionState === 'failed') this.end(null, MEDIA_FAILED);
      });
      await this.pc.setLocalDescription();
      await gathered(this.pc, GATHER_MS);
    } catch (error) {
      this.end(null, `This browser could not make a WebRTC offer: ${error.message}.`);
      return;
    }
    if (this.state !== 'connecting') return;
    const socket = new WebSocket(signallingUrl());
    this.socket = socket;
    socket.addEventListener('open', () => this.send({ type: 'offer', sdp: this.pc.localDescription.sdp }));
    socket.addEventListener('message', (event) => {
      this.inbox = this.inbox.then(() => this.receive(event.data));
    });
    socket.addEventListener('close', (event) => {
      this.inbox = this.inbox.then(() => this.closed(event));
    });
  }

  /** Sends keypad presses to the script; false when no call is up to take them. */
  dtmf(digits) {
    if (!this.canSendDigits) return false;
    this.send({ type: 'dtmf', digits });
    return true;
  }

  /** Hangs up: the service ends the call and says `ended`; without a socket, the call just ends here. */
  hangup() {
    if (!this.live) return;
    if (this.socket?.readyState !== WebSocket.OPEN) {
      this.end('remote_hangup');
      return;
    }
    this.send({ type: 'hangup' });
    this.hangupTimer = setTimeout(() => this.end('remote_hangup'), HANGUP_MS);
  }

  send(message) {
    const text = JSON.stringify(message);
    if (text.length <= MAX_MESSAGE && this.socket?.readyState === WebSocket.OPEN) this.socket.send(text);
  }

  async receive(data) {
    if (this.state === 'ended') return;
    if (typeof data !== 'string' || data.length > MAX_MESSAGE) {
      this.end(null, 'The service sent a message this page cannot read.');
      return;
    }
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      this.end(null, 'The service sent a message that is not JSON.');
      return;
    }
    switch (message?.type) {
      case 'ringing':
        this.callId = typeof message.call_id === 'string' ? message.call_id.slice(0, 200) : null;
        this.move('ringing');
        break;
      case 'answer':
        try {
          await this.pc.setRemoteDescription({ type: 'answer', sdp: String(message.sdp) });
        } catch (error) {
          this.end(null, `The service's answer could not be used: ${error.message}.`);
          return;
        }
        this.codec = chosenCodec(String(message.sdp));
        this.move(message.early ? 'early' : 'answered');
        break;
      case 'answered':
        this.move('answered');
        break;
      case 'ended': {
        const reason = typeof message.reason === 'string' ? message.reason.slice(0, 100) : 'hangup';
        // remote_hangup that this page did not ask for: the service took the browser for gone — its media
        // never connected (a firewall, a service behind NAT: the browser may take longer to give up) or
        // was lost. The page said "you hung up".
        if (reason === 'remote_hangup' && this.hangupTimer === null) {
          this.end(reason, this.pc?.connectionState === 'connected' ? MEDIA_LOST : MEDIA_FAILED);
        } else {
          this.end(reason);
        }
        break;
      }
      case 'error':
        this.end(null, typeof message.message === 'string' ? message.message.slice(0, 500) : 'The service refused the call.');
        break;
      default:
      // (a message of a later version of the protocol: nothing this page has to do)
    }
  }

  /** The socket closed: after `ended` that is the end; before it, the connection was lost or refused. */
  closed(event) {
    if (this.state === 'ended') return;
    if (this.hangupTimer !== null) {
      this.end('remote_hangup');
      return;
    }
    const said = event.reason ? `: ${event.reason}` : '';
    if (this.state === 'connecting') this.end(null, `The service refused the call or could not be reached (WebSocket closed, ${event.code}${said}).`, 'refused');
    else this.end(null, `The connection to the service was lost (WebSocket closed, ${event.code}${said}).`);
  }

  move(state) {
    if (this.state === 'ended' || STATES.indexOf(state) < STATES.indexOf(this.state)) return;
    this.state = state;
    this.changed(this);
  }

  /** Ends the call here: the microphone, the media and the socket are released. `how` marks a refusal at the start. */
  end(reason, problem = null, how = null) {
    if (this.state === 'ended') return;
    clearTimeout(this.hangupTimer);
    this.state = 'ended';
    this.reason = reason;
    this.problem = problem;
    this.refused = how === 'refused';
    for (const track of this.microphone?.getTracks() || []) track.stop();
    this.pc?.close();
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000);
    this.changed(this);
  }
}
