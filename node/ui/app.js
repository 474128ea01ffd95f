// The Jarvis UI: talks only to the node that serves it, through its local API, with the
// per-install token it was opened with (`jarvis ui` opens /#token=…).
'use strict';

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
};

// ---- The token -----------------------------------------------------------------------------
// Kept for this tab only (sessionStorage): another page cannot plant a token in the user's tab,
// and nothing outlives the session on a port another program may later listen on.
const TOKEN_KEY = 'jarvis-token';
{
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get('token')) {
    sessionStorage.setItem(TOKEN_KEY, fragment.get('token'));
    history.replaceState(null, '', location.pathname);
  }
}
const token = () => sessionStorage.getItem(TOKEN_KEY) || '';

class ApiError extends Error {
  constructor(status, message, body) { super(message); this.status = status; this.body = body; }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (options.body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method: options.method || (options.body !== undefined ? 'POST' : 'GET'),
      headers,
      body: options.body !== undefined ? JSON.stringify(options.body) : undefined,
    });
  } catch (e) {
    nodeDown();
    throw new ApiError(0, 'The node is not running: start it with `jarvis up`.');
  }
  if (response.status === 401) showNoToken();
  if (options.raw) return response;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.error?.message || body.error || `HTTP ${response.status}`, body);
  return body;
}

function banner(text) {
  const b = $('banner');
  b.textContent = text || '';
  b.hidden = !text;
}
function showNoToken() {
  const s = $('node-state');
  s.textContent = 'no token';
  s.className = 'node-state down';
  $('send').disabled = true;
  banner('This page needs the node\'s token: open the UI with `jarvis ui` (or add #token=… from `jarvis token` to the address).');
}
function nodeDown() {
  const s = $('node-state');
  s.textContent = 'node not running';
  s.className = 'node-state down';
  banner('Cannot reach the node: start it with `jarvis up`. This page reconnects by itself.');
}
function nodeUp(status) {
  const s = $('node-state');
  const peers = status.peers.filter((p) => p.authenticated).length;
  s.textContent = `${status.user} · ${peers} peer${peers === 1 ? '' : 's'}`;
  s.className = 'node-state up';
  if (!$('banner').textContent.startsWith('This page needs')) banner('');
}
function showError(id, error) {
  const e = $(id);
  e.textContent = error ? (error.message || String(error)) : '';
  e.hidden = !error;
}

// ---- Screens and keyboard ------------------------------------------------------------------
const screens = ['chat', 'devices', 'peers', 'models', 'settings', 'admin'];
function show(screen) {
  for (const s of screens) {
    $(`screen-${s}`).classList.toggle('active', s === screen);
    document.querySelector(`#nav [data-screen="${s}"]`).classList.toggle('active', s === screen);
  }
  document.body.dataset.screen = screen;
  ({ devices: loadDevices, peers: loadStatus, models: loadModels, settings: loadSettings, admin: loadMembers })[screen]?.();
}
for (const b of document.querySelectorAll('#nav [data-screen]')) b.addEventListener('click', () => show(b.dataset.screen));
document.addEventListener('keydown', (e) => {
  if (e.altKey && e.key >= '1' && e.key <= '6') {
    const s = screens[Number(e.key) - 1];
    if (s !== 'admin' || !$('nav-admin').hidden) { show(s); e.preventDefault(); }
  } else if ((e.ctrlKey || e.metaKey) && e.key === 'k') {
    show('chat'); $('search').focus(); e.preventDefault();
  } else if ((e.ctrlKey || e.metaKey) && e.key === 'n') {
    show('chat'); newConversation(); e.preventDefault();
  } else if (!['INPUT', 'TEXTAREA', 'SELECT'].includes(document.activeElement?.tagName) && !e.ctrlKey && !e.metaKey && !e.altKey) {
    if (e.key === 'm') toggleMute();
    else if (e.key === 't') talk();
    else if (e.key === 'Escape') stopSpeaking();
  }
});

// ---- Theme ---------------------------------------------------------------------------------
function applyTheme(theme) {
  if (theme === 'system') document.documentElement.removeAttribute('data-theme');
  else document.documentElement.dataset.theme = theme;
  localStorage.setItem('jarvis-theme', theme);
  $('theme').value = theme;
}
$('theme').addEventListener('change', (e) => applyTheme(e.target.value));
applyTheme(localStorage.getItem('jarvis-theme') || 'system');

// ---- Conversations -------------------------------------------------------------------------
let conversations = [];
let current = null; // the open conversation's id
const texts = new Map(); // id -> all its text, for search
let streaming = null; // {conversation, messageId, element} while our own answer streams

const when = (ms) => {
  if (!ms) return '';
  const d = new Date(ms);
  const today = new Date();
  return d.toDateString() === today.toDateString() ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : d.toLocaleDateString();
};

async function loadConversations() {
  try {
    conversations = (await api('/v1/conversations')).conversations || [];
    renderConversations();
  } catch (e) { /* the banner says why */ }
}

function renderConversations() {
  const query = $('search').value.trim().toLowerCase();
  const list = $('conversation-list');
  list.replaceChildren();
  for (const c of conversations) {
    const haystack = `${c.title} ${texts.get(c.id) || ''}`.toLowerCase();
    if (query && !haystack.includes(query)) continue;
    list.append(el('li', {
      class: c.id === current ? 'active' : '',
      'data-id': c.id,
      tabindex: '0',
      onclick: () => openConversation(c.id),
      onkeydown: (e) => { if (e.key === 'Enter') openConversation(c.id); },
    }, c.title || 'Untitled', el('span', { class: 'when', text: `${when(c.updated_at)} · ${c.messages} message${c.messages === 1 ? "" : "s"}` })));
  }
  if (!list.children.length) list.append(el('li', { class: 'muted', text: query ? 'Nothing matches.' : 'No conversations yet: ask something.' }));
}

let searchTimer;
$('search').addEventListener('input', () => {
  renderConversations();
  clearTimeout(searchTimer);
  // Search the messages too: read the conversations not read yet (all local, so cheap).
  searchTimer = setTimeout(async () => {
    for (const c of conversations) {
      if (!texts.has(c.id)) {
        try {
          const conv = await api(`/v1/conversations/${c.id}`);
          texts.set(c.id, conv.messages.map((m) => m.text).join(' '));
        } catch (e) { /* skip */ }
      }
    }
    renderConversations();
  }, 250);
});

function newConversation() {
  current = null;
  $('conversation-title').textContent = 'New conversation';
  $('messages').replaceChildren();
  renderConversations();
  $('question').focus();
}
$('new-conversation').addEventListener('click', newConversation);

function messageElement(m) {
  // The org GPU peer that made an answer (kept in the conversation, so every device shows it).
  const where = m.served_by ? `on GPU peer ${m.served_by}` : '';
  const timings = Object.entries(m.timings_ms || {}).map(([k, v]) => `${k.replaceAll('_', ' ')} ${/tokens$|per_second$/.test(k) ? v : `${v} ms`}`).join(' · ');
  return el('li', { class: `msg ${m.role} ${m.status === 'streaming' ? 'streaming' : ''} ${m.status === 'failed' ? 'failed' : ''}`, 'data-id': m.id },
    el('div', { class: 'text', text: m.text }),
    el('div', { class: 'meta' },
      `${m.role === 'user' ? 'You' : 'Jarvis'}${m.model ? ` · ${m.model}` : ''}${where ? ` · ${where}` : ''} · ${when(m.created_at)}`,
      el('span', { class: 'timings', text: timings ? `timings: ${timings}` : '' })));
}

let openSeq = 0;
async function openConversation(id) {
  current = id;
  renderConversations();
  const seq = ++openSeq;
  try {
    const conv = await api(`/v1/conversations/${id}`);
    // Only the newest read shows: an older one may come back later with older text.
    if (current !== id || seq !== openSeq) return;
    texts.set(id, conv.messages.map((m) => m.text).join(' '));
    $('conversation-title').textContent = conv.title || 'Untitled';
    const list = $('messages');
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.replaceChildren(...conv.messages.map((m) => {
      // Our own answer streams into its element; keep it rather than flicker.
      if (streaming && streaming.messageId === m.id && m.status === 'streaming') return streaming.element;
      return messageElement(m);
    }));
    if (atBottom || streaming) list.scrollTop = list.scrollHeight;
  } catch (e) {
    showError('ask-error', e);
  }
}

$('show-timings').addEventListener('change', (e) => $('messages').classList.toggle('with-timings', e.target.checked));

// Reads a server-sent-events response, calling `on(event, data)` for each event.
async function readEvents(response, on) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) on(event, data.join('\n'));
    }
  }
}

let asking = false;
async function ask(text) {
  if (asking) return; // one question at a time (Enter does not wait for the button)
  asking = true;
  showError('ask-error', null);
  $('send').disabled = true;
  const list = $('messages');
  const question = messageElement({ role: 'user', text, created_at: Date.now() });
  const answer = messageElement({ role: 'assistant', text: '', status: 'streaming', created_at: Date.now() });
  list.append(question, answer);
  list.scrollTop = list.scrollHeight;
  try {
    const body = { text, conversation: current, stream: true };
    if ($('model-choice').value) body.model = $('model-choice').value;
    const response = await api('/v1/ask', { body, raw: true });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      answer.remove();
      if (body.conversation_id) { current = body.conversation_id; await openConversation(current); }
      throw new ApiError(response.status, body.error || `HTTP ${response.status}`);
    }
    const target = answer.querySelector('.text');
    await readEvents(response, (event, data) => {
      const value = JSON.parse(data);
      if (event === 'start') {
        current = value.conversation_id;
        streaming = { conversation: current, messageId: value.answer_id, element: answer };
        loadConversations();
      } else if (event === 'token') {
        target.textContent += value.text;
        list.scrollTop = list.scrollHeight;
      } else if (event === 'done') {
        answer.classList.remove('streaming');

        if (value.error) showError('ask-error', new Error(value.error));
      }
    });
  } catch (e) {
    showError('ask-error', e);
  } finally {
    streaming = null;
    asking = false;
    $('send').disabled = false;
    if (current) openConversation(current);
    loadConversations();
  }
}

$('composer').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('question').value.trim();
  if (!text || asking) return;
  $('question').value = '';
  ask(text);
});
$('question').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('composer').requestSubmit(); }
});

// ---- Voice: state, level, mute -------------------------------------------------------------
const levels = new Array(60).fill(0);
function drawMeter() {
  const canvas = $('meter');
  const ctx = canvas.getContext('2d');
  const style = getComputedStyle(document.documentElement);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = style.getPropertyValue('--accent').trim() || '#4f6bff';
  const w = canvas.width / levels.length;
  levels.forEach((l, i) => {
    // A logarithmic scale: speech at -30 dBFS fills half the bar.
    const db = 20 * Math.log10(Math.max(l, 1e-4));
    const h = Math.max(1, Math.min(1, (db + 60) / 60) * canvas.height);
    ctx.fillRect(i * w + 1, (canvas.height - h) / 2, w - 2, h);
  });
}
function onLevel(event) {
  levels.shift();
  levels.push(event.rms);
  $('meter').dataset.level = String(event.rms);
  $('meter').dataset.peak = String(event.peak);
  drawMeter();
}
function onVoice(v) {
  const pill = $('voice-state');
  pill.dataset.state = v.state;
  const labels = { idle: 'say “hey Jarvis”', starting: 'voice: starting…', listening: 'listening…', transcribing: 'transcribing…', thinking: 'thinking…', speaking: 'speaking', off: 'voice: off' };
  if (v.wake_word === false) labels.idle = 'press Talk (wake word off)';
  pill.textContent = v.muted ? 'voice: muted' : (labels[v.state] || v.state);
  pill.title = `voice: ${v.state}`;
  const mute = $('mute');
  mute.setAttribute('aria-pressed', String(v.muted));
  mute.textContent = v.muted ? 'Unmute' : 'Mute';
  $('voice-problem').textContent = v.problem || '';
  // The words heard so far, live while the user speaks, then what was understood.
  $('voice-heard').textContent = v.heard ? `“${v.heard}”` : '';
  $('voice-heard').dataset.state = v.state;
  $('talk').disabled = v.state === 'off' || v.state === 'starting' || v.muted;
  $('stop-speaking').disabled = v.state !== 'speaking' && v.state !== 'thinking';
}
async function toggleMute() {
  const muted = $('mute').getAttribute('aria-pressed') !== 'true';
  try { onVoice(await api('/v1/voice/mute', { body: { muted } })); } catch (e) { /* banner */ }
}
$('mute').addEventListener('click', toggleMute);
async function talk() {
  try { onVoice(await api('/v1/voice/talk', { body: {} })); } catch (e) { $('voice-problem').textContent = e.message; }
}
async function stopSpeaking() {
  try { await api('/v1/voice/stop', { body: {} }); } catch (e) { /* banner */ }
}
$('talk').addEventListener('click', talk);
$('stop-speaking').addEventListener('click', stopSpeaking);
drawMeter();

// ---- Devices and pairing -------------------------------------------------------------------
async function loadDevices() {
  try {
    const { devices } = await api('/v1/devices');
    $('device-list').replaceChildren(...devices.map((d) => el('tr', { 'data-id': d.id },
      el('td', {}, d.name, d.this_device ? el('span', { class: 'muted', text: ' (this device)' }) : ''),
      el('td', {}, el('span', { class: `badge ${d.status}`, text: d.status })),
      el('td', { text: d.this_device ? '—' : (d.last_sync ? new Date(d.last_sync).toLocaleString() : 'never') }),
      el('td', { class: 'id', text: d.id, title: d.id }))));
  } catch (e) { showError('pair-error', e); }
}

$('pair').addEventListener('click', async () => {
  showError('pair-error', null);
  $('pair').disabled = true;
  try {
    const { code } = await api('/v1/devices/pair', { body: {} });
    $('pair-command').textContent = `jarvis join ${code}`;
    $('pair-status').textContent = 'Waiting for the new device…';
    $('pairing').hidden = false;
  } catch (e) {
    showError('pair-error', e);
  } finally {
    $('pair').disabled = false;
  }
});
$('copy-code').addEventListener('click', () => navigator.clipboard?.writeText($('pair-command').textContent));

// ---- Peers and node info -------------------------------------------------------------------
async function loadStatus() {
  let status;
  try { status = await api('/v1/status'); } catch (e) { return; }
  nodeUp(status);
  $('peer-list').replaceChildren(...status.peers.map((p) => el('tr', { 'data-id': p.peer_id },
    el('td', { text: p.name || p.peer_id.slice(0, 12) + '…' }),
    el('td', { text: p.role || '—' }),
    el('td', {}, el('span', { class: `badge ${p.path}`, text: p.path })),
    el('td', {}, el('span', {
      class: `badge ${p.refused ? 'refused' : p.authenticated ? 'yes' : ''}`,
      text: p.refused ? `refused: ${p.refused}` : p.authenticated ? (p.syncing ? 'syncing' : 'authenticated') : 'connecting',
    }), p.last_refusal ? el('div', { class: 'small error', text: p.last_refusal }) : ''),
    el('td', { class: 'id', text: p.address || '', title: p.address || '' }))));
  $('no-peers').hidden = status.peers.length > 0;
  // Addresses the node keeps dialling and cannot reach: the org's relay above all (without it,
  // devices on other networks do not sync).
  const unreachable = (status.dialing || []).filter((d) => !d.connected && d.error);
  const refused = (d) => d.problem === 'refused-us';
  const notAccepted = (d) => d.problem === 'not-accepted';
  const why = (d) => (d.reason || d.error).replace(/\.?$/, '.');
  $('dial-problems').replaceChildren(...unreachable.map((d) => el('div', { class: 'error dial-problem', 'data-address': d.address },
    el('b', { text: refused(d)
      ? (d.kind === 'relay' ? 'Your org\'s relay refuses this device' : 'A peer you asked for refuses this device')
      : notAccepted(d)
        ? 'This device does not accept the peer at this address'
        : (d.kind === 'relay' ? 'Your org\'s relay is unreachable' : 'A peer you asked for is unreachable') }),
    ` (${d.address}): ${why(d)} `,
    refused(d)
      ? 'Your org\'s admin can see why with `jarvis admin members` (a revoked device, or an invite already used on another machine).'
      : notAccepted(d)
        ? 'It is not (or no longer) a member of your org: check the address, or ask your admin.'
      : d.kind === 'relay'
        ? 'Check this machine\'s network; if it persists, tell your admin (the relay may be down). Devices on this network still sync directly.'
        : 'Check the address (`jarvis up --peer`) and that the other device is running.')));
  if (unreachable.some((d) => d.kind === 'relay')) {
    $('node-state').textContent += unreachable.some((d) => d.kind === 'relay' && refused(d)) ? ' · refused by the relay'
      : unreachable.some((d) => d.kind === 'relay' && notAccepted(d)) ? ' · relay not accepted' : ' · relay unreachable';
  }
  renderGpus(status.offload || { policy: 'local', gpu_peers: [] });
  loadModelChoices();
  const info = [['Device', status.device_id], ['User', status.user], ['Org', status.org_id], ['API', status.api],
    ['Listening on', (status.listen || []).join('\n')], ['Conversations', status.documents],
    ['Revocations known', status.revocations], ['Model', (status.models || []).map((m) => `${m.name || ''} ${m.state || ''}`).join(', ')]];
  $('node-info').replaceChildren(...info.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: String(v ?? '') })]));
}

// The model picker: Automatic, or a model this computer or a GPU peer of the org serves (as
// `/v1/models` lists them), sent as `model` with the question.
async function loadModelChoices() {
  let list;
  try { list = await api('/v1/models'); } catch (e) { return; }
  const select = $('model-choice');
  const chosen = select.value;
  const models = (list.data || []).map((m) => el('option', {
    value: m.id,
    text: `${m.id} (${m.owned_by === 'jarvis-gpu-peer' ? 'GPU peer' : 'this computer'})`,
  }));
  // A chosen model that is gone stays listed (marked) so the choice is not changed silently.
  if (chosen && !(list.data || []).some((m) => m.id === chosen)) {
    models.push(el('option', { value: chosen, text: `${chosen} (not available now)` }));
  }
  select.replaceChildren(el('option', { value: '', text: 'Automatic' }), ...models);
  select.value = chosen;
}

$('model-choice').addEventListener('focus', loadModelChoices);
// GPU peers come and go: the list is read again every few seconds.
setInterval(() => { if (document.body.dataset.connected === 'true') loadModelChoices(); }, 5000);

const policyText = {
  local: 'Answers are made only on this computer (Settings → Where answers are made). GPU peers below are connected but not used.',
  auto: 'Automatic: a GPU peer answers when it runs a larger model, when this computer has no model or is busy, or for long prompts. Whoever runs a GPU peer can read what is sent to it.',
  gpu: 'GPU peers first: every answer goes to the one expected to finish first; this computer answers when none is reachable. Whoever runs a GPU peer can read what is sent to it.',
};
function renderGpus(offload) {
  $('gpu-policy').textContent = policyText[offload.policy] || '';
  const peers = offload.gpu_peers || [];
  $('gpu-list').replaceChildren(...peers.map((g) => el('tr', { 'data-id': g.peer_id },
    el('td', { text: g.name || g.peer_id.slice(0, 12) + '…', title: g.peer_id }),
    el('td', { text: g.model || '—', title: g.backend === 'openai' ? 'served by an OpenAI-compatible server behind the peer' : g.backend === 'llama.cpp' ? 'served by the peer\'s built-in llama.cpp' : '' },
      g.backend ? el('div', { class: 'small muted', text: g.backend === 'openai' ? 'OpenAI-compatible server' : 'built-in llama.cpp' }) : '',
      g.accelerator ? el('div', { class: 'small muted', text: `on ${g.accelerator}` }) : ''),
    el('td', { text: g.slots ? `${g.busy} busy of ${g.slots}` : '—' }),
    el('td', { text: g.expected_ms != null ? `${(g.expected_ms / 1000).toFixed(1)} s` : '—' }),
    el('td', { text: `${g.answers}${g.failures ? ` (${g.failures} failed)` : ''}` }),
    el('td', {}, el('span', {
      class: `badge ${g.in_flight ? 'in-use' : g.ready ? 'yes' : 'refused'}`,
      text: g.in_flight ? `answering now (${g.in_flight})` : g.ready ? (g.last_used ? `in use · last ${when(g.last_used * 1000)}` : 'ready') : 'not ready',
    }), g.last_error && !g.ready ? el('div', { class: 'small error', text: g.last_error }) : ''))));
  $('gpu-table').hidden = peers.length === 0;
  $('no-gpus').hidden = peers.length > 0;
}

// ---- Settings --------------------------------------------------------------------------------
// Changes the user made: a settings read that started before one must not undo it on screen.
let settingsEdits = 0;
async function loadSettings() {
  loadStatus();
  const edits = settingsEdits;
  let settings;
  try { settings = await api('/v1/settings'); } catch (e) { showError('offload-error', e); return; }
  if (edits !== settingsEdits) return;
  $('wake-word').checked = settings.wake_word;
  $('wake-threshold').value = String(settings.wake_threshold);
  if (![...$('wake-threshold').options].some((o) => o.selected)) $('wake-threshold').append(el('option', { value: String(settings.wake_threshold), selected: '' }, `custom (${settings.wake_threshold})`));
  $('voice-choice').replaceChildren(el('option', { value: 'default' }, 'Default'),
    ...settings.voice_choices.map((c) => el('option', { value: c.value, ...(c.value === settings.voice ? { selected: '' } : {}) }, c.label)));
  $('offload-form').replaceChildren(...settings.offload_choices.map((c) => el('label', { class: 'choice' },
    el('input', { type: 'radio', name: 'offload', value: c.value, ...(c.value === settings.offload ? { checked: '' } : {}) }),
    el('b', { text: c.label }), el('div', { class: 'small muted', text: c.detail }))));
}
$('offload-form').addEventListener('change', async (e) => {
  settingsEdits += 1;
  $('offload-error').hidden = true;
  try {
    const saved = await api('/v1/settings', { method: 'PUT', body: { offload: e.target.value } });
    $('offload-saved').textContent = `Saved: ${saved.offload_choices.find((c) => c.value === saved.offload)?.label}. The next answer follows it.`;
  } catch (err) {
    showError('offload-error', err);
    loadSettings();
  }
});

async function saveVoiceSettings(change, what) {
  settingsEdits += 1;
  $('voice-settings-error').hidden = true;
  try {
    await api('/v1/settings', { method: 'PUT', body: change });
    $('voice-saved').textContent = `Saved: ${what}.`;
  } catch (err) {
    showError('voice-settings-error', err);
    loadSettings();
  }
}
$('wake-word').addEventListener('change', (e) => saveVoiceSettings({ wake_word: e.target.checked },
  e.target.checked ? 'listening for “hey Jarvis”' : 'wake word off; use Talk or Ctrl+Shift+Space'));
$('wake-threshold').addEventListener('change', (e) => saveVoiceSettings({ wake_threshold: Number(e.target.value) }, `sensitivity ${e.target.selectedOptions[0].textContent.toLowerCase()}`));
$('voice-choice').addEventListener('change', (e) => saveVoiceSettings({ voice: e.target.value }, `the voice (from the next answer): ${e.target.selectedOptions[0].textContent}`));

// ---- Models --------------------------------------------------------------------------------
async function loadModels() {
  try {
    const { dir, models } = await api('/v1/local-models');
    $('models-dir').textContent = `In ${dir}, shared by every Jarvis home on this machine.`;
    $('model-list').replaceChildren(...models.map((m) => el('tr', { 'data-name': m.name },
      el('td', { text: m.name, title: m.description || '' }),
      el('td', { text: m.kind }),
      el('td', { class: 'state' }, m.present
        ? el('span', { class: 'badge yes', text: 'installed' })
        : downloading.has(m.name) ? progressCell(m.name)
          : el('button', { onclick: (e) => pullModel(m.name, e.target) }, 'Download')),
      el('td', { text: `${(m.size / 1e6).toFixed(0)} MB` }),
      el('td', { text: m.licence || '?' }))));
  } catch (e) {
    $('models-dir').textContent = e.message;
  }
}

const downloading = new Map(); // name -> last progress event
function progressCell(name) {
  const last = downloading.get(name) || {};
  const bar = el('progress', { max: String(last.total || 1), value: String(last.bytes || 0), 'aria-label': `Downloading ${name}` });
  const text = el('span', { class: 'small muted progress-text', text: last.total ? ` ${(last.bytes / 1e6).toFixed(1)} / ${(last.total / 1e6).toFixed(1)} MB` : ' starting…' });
  const cell = document.createDocumentFragment();
  cell.append(bar, text);
  return cell;
}
async function pullModel(name, button) {
  button.disabled = true;
  try {
    await api('/v1/models/pull', { body: { name } });
    downloading.set(name, {});
    button.replaceWith(progressCell(name));
  } catch (e) {
    button.disabled = false;
    $('models-dir').textContent = e.message;
  }
}
function onModelProgress(event) {
  downloading.set(event.name, event);
  const row = document.querySelector(`#model-list tr[data-name="${CSS.escape(event.name)}"]`);
  const bar = row?.querySelector('progress');
  if (!bar) return;
  if (event.total) { bar.max = event.total; bar.value = event.bytes; }
  row.querySelector('.progress-text').textContent = ` ${(event.bytes / 1e6).toFixed(1)} / ${(event.total / 1e6).toFixed(1)} MB`;
}

// ---- Admin ---------------------------------------------------------------------------------
async function loadMembers() {
  showError('admin-error', null);
  let members;
  try { ({ members } = await api('/v1/admin/members')); } catch (e) { showError('admin-error', e); return; }
  // The admin's records know users, relays and GPU peers; a user's devices are certified by the
  // user, so the devices come from what this node knows: this user's devices and its peers.
  const known = new Set(members.map((m) => m.id));
  const [devices, status] = await Promise.all([api('/v1/devices').catch(() => ({ devices: [] })), api('/v1/status').catch(() => ({ peers: [] }))]);
  const seen = [
    ...devices.devices.map((d) => ({ id: d.id, name: d.name, user: status.user, status: d.status })),
    ...status.peers.filter((p) => p.role === 'device' || p.role === 'own-device').map((p) => ({ id: p.peer_id, name: p.name, user: p.user, status: 'active' })),
  ];
  for (const d of seen) {
    const member = members.find((m) => m.id === d.id);
    if (member) {
      member.name ||= d.name;
      member.user ||= d.user;
    }
    if (known.has(d.id)) continue;
    known.add(d.id);
    members.push({ kind: 'device', name: d.name, user: d.user, id: d.id, status: d.status });
  }
  $('member-list').replaceChildren(...members.map((m) => el('tr', { 'data-id': m.id },
    el('td', { text: m.kind }), el('td', { text: m.name }), el('td', { text: m.user || '' }),
    el('td', {}, el('span', { class: `badge ${m.status}`, text: m.status })),
    el('td', { class: 'id', text: m.id, title: m.id }),
    el('td', {}, m.status === 'active' && ['device', 'user', 'relay', 'gpu'].includes(m.kind)
      ? el('button', { class: 'danger', onclick: () => revoke(m) }, 'Revoke') : ''))));
}

function revoke(member) {
  const dialog = $('confirm');
  $('confirm-text').textContent = `Revoke ${member.kind} “${member.name}”? It is refused by every node and relay from now on, and conversation keys are rotated away from it.`;
  $('confirm-reason').value = '';
  $('confirm-passphrase').value = '';
  dialog.onclose = async () => {
    if (dialog.returnValue !== 'ok') return;
    const flag = member.kind === 'device' ? 'device' : member.kind === 'user' ? 'user' : 'peer';
    const target = member.kind === 'user' ? member.name : member.id;
    try {
      await api('/v1/admin/revoke', { body: { [flag]: target, reason: $('confirm-reason').value || undefined, passphrase: $('confirm-passphrase').value } });
    } catch (e) { showError('admin-error', e); }
    loadMembers();
  };
  dialog.showModal();
}

$('invite-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  showError('invite-error', null);
  try {
    const invite = await api('/v1/admin/invite', { body: { user: $('invite-user').value.trim(), role: $('invite-role').value, passphrase: $('invite-passphrase').value } });
    $('invite-passphrase').value = '';
    $('invite-token').textContent = `Give this to ${$('invite-user').value.trim()} (single use, expires ${invite.expires_at}):\n\njarvis join ${invite.token}`;
    $('invite-token').hidden = false;
    loadMembers();
  } catch (err) { showError('invite-error', err); }
});

// ---- The event stream ----------------------------------------------------------------------
let refreshTimer;
const changed = new Set();
function onEvent(event) {
  switch (event.type) {
    case 'conversation':
      changed.add(event.id);
      texts.delete(event.id);
      clearTimeout(refreshTimer);
      // Coalesce bursts (an answer streaming from another device is many changes).
      refreshTimer = setTimeout(() => {
        loadConversations();
        if (changed.has(current)) openConversation(current);
        changed.clear();
      }, 60);
      break;
    case 'peer': loadStatus(); break;
    case 'voice': onVoice(event); break;
    case 'level': onLevel(event); break;
    case 'paired':
      $('pair-status').textContent = `Paired “${event.name}”. It syncs your conversations from now on.`;
      loadDevices();
      break;
    case 'pair_failed':
      $('pair-status').textContent = '';
      showError('pair-error', new Error(event.error));
      break;
    case 'model_progress': onModelProgress(event); break;
    case 'model_pulled': downloading.delete(event.name); loadModels(); break;
    case 'model_pull_failed': downloading.delete(event.name); loadModels().then(() => { $('models-dir').textContent = `Downloading ${event.name} failed: ${event.error}`; }); break;
    case 'lagged': loadConversations(); break;
    default: break;
  }
}

async function followEvents() {
  let delay = 500;
  for (;;) {
    try {
      const response = await api('/v1/events', { raw: true });
      if (response.ok) {
        delay = 500;
        await Promise.all([loadStatus(), loadConversations(), api('/v1/voice').then(onVoice).catch(() => {}),
          api('/v1/admin/members').then(() => { $('nav-admin').hidden = false; }).catch(() => {})]);
        document.body.dataset.connected = 'true';
        await readEvents(response, (_, data) => onEvent(JSON.parse(data)));
      } else if (response.status === 401) {
        // The banner says how to get the token; nothing works until then.
        document.body.dataset.connected = 'false';
        await new Promise((r) => setTimeout(r, 5000));
        continue;
      }
    } catch (e) { /* reconnect below */ }
    document.body.dataset.connected = 'false';
    nodeDown();
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

if (!token()) showNoToken();
followEvents();
