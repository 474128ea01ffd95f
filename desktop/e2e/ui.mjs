// The Jarvis UI end to end: Playwright driving the system's headless Chromium against real,
// running nodes. Run by cli/tests/ui.rs, which makes the org, the devices and the microphone,
// starts the nodes, and passes what it made in the environment:
//
//   JARVIS_BIN     the `jarvis` binary        UI_ORIGIN   the laptop node's UI, http://127.0.0.1:PORT
//   UI_TOKEN       its API token              LAPTOP_HOME / PHONE_HOME / NEW_HOME / ADMIN_HOME
//   PHONE_ID       the phone's device id      SCREENSHOTS a folder for the screenshots
//
// Prints one JSON line (what it saw) and exits 0, or prints why and exits 1.
import { execFile } from 'node:child_process';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run this through cli/tests/ui.rs)`);
  return v;
};
const ORIGIN = env('UI_ORIGIN');
const TOKEN = env('UI_TOKEN');
const SHOTS = env('SCREENSHOTS');
const report = {};

const run = promisify(execFile);
async function jarvis(home, ...args) {
  const childEnv = { ...process.env };
  delete childEnv.JARVIS_HOME;
  const { stdout } = await run(env('JARVIS_BIN'), ['--home', home, ...args, '--json'], {
    env: childEnv,
    timeout: 120_000,
  });
  return JSON.parse(stdout.trim().split('\n').pop());
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

async function until(what, f, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  // (a fresh temporary profile each run: Playwright's own --user-data-dir)
});
const shot = (page, name) => page.screenshot({ path: join(SHOTS, `${name}.png`) });

try {
  // ---- Without the token nothing works; other origins are refused --------------------------
  {
    const page = await browser.newPage();
    await page.goto(`${ORIGIN}/`);
    await page.locator('#banner').filter({ hasText: 'needs the node' }).waitFor();
    const status = await page.evaluate(async () => (await fetch('/v1/status')).status);
    check(status === 401, `a request without the token is refused (got ${status})`);
    check(await page.locator('#conversation-list li[data-id]').count() === 0, 'no conversation is shown without the token');
    await shot(page, 'no-token');
    await page.close();
    report.without_token = status;

    // A page on another origin (a site the user visits) that somehow knows the token. (The
    // browser's own CORS rules would block reading the answer anyway; cli/tests/ui.rs checks on a
    // raw socket that the node itself refuses such requests, preflights included.)
    const foreign = createServer((_, res) => { res.setHeader('Content-Type', 'text/html'); res.end('<title>elsewhere</title>'); });
    await new Promise((r) => foreign.listen(0, '127.0.0.1', r));
    const other = await browser.newPage();
    await other.goto(`http://127.0.0.1:${foreign.address().port}/`);
    const outcome = await other.evaluate(async ({ origin, token }) => {
      try {
        const r = await fetch(`${origin}/v1/status`, { headers: { Authorization: `Bearer ${token}` } });
        return `answered ${r.status}`;
      } catch (e) {
        return 'refused';
      }
    }, { origin: ORIGIN, token: TOKEN });
    check(outcome === 'refused', `a page on another origin cannot call the API (${outcome})`);
    await other.close();
    foreign.close();
    report.other_origin = outcome;
  }

  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${ORIGIN}/#token=${TOKEN}`);
  await page.locator('body[data-connected="true"]').waitFor();
  check(!(await page.url()).includes(TOKEN), 'the token is taken out of the address bar');
  await page.evaluate(() => { window.jarvisNotReloaded = true; });

  // ---- Ask by typing: the answer streams in -------------------------------------------------
  // Every length the answer's text takes on screen, recorded in the page as it changes.
  await page.evaluate(() => {
    window.answerLengths = new Set();
    new MutationObserver(() => {
      const text = document.querySelector('.msg.assistant.streaming .text');
      if (text) window.answerLengths.add(text.textContent.length);
    }).observe(document.getElementById('messages'), { childList: true, subtree: true, characterData: true });
  });
  await page.fill('#question', 'What is the capital of France?');
  await page.press('#question', 'Enter');
  const answer = page.locator('.msg.assistant').last();
  await until('the answer to finish streaming', async () => {
    const text = (await answer.locator('.text').textContent()) || '';
    return !(await answer.getAttribute('class')).includes('streaming') && text.length > 0;
  }, 120_000);
  const answerText = await answer.locator('.text').textContent();
  const lengths = await page.evaluate(() => [...window.answerLengths]);
  // Seen growing before it was complete: part of the text on screen first. (Tokens that arrive
  // in one network read are drawn in one task, which the observer sees once: on a busy machine
  // a short answer may show in as few as two steps.)
  const partial = lengths.filter((n) => n > 0 && n < answerText.length);
  check(partial.length >= 1, `the answer streamed in (lengths seen: ${lengths.join(',')}, final ${answerText.length})`);
  const conversation = await until('the conversation in the list', () =>
    page.locator('#conversation-list li.active').getAttribute('data-id').catch(() => null));
  await page.check('#show-timings');
  await until('the saved answer with its timings', async () =>
    ((await page.locator('.msg.assistant .timings').last().textContent()) || '').includes('ms'));
  await shot(page, 'conversation');
  report.answer = answerText;
  report.answer_lengths_seen = lengths.length;

  // ---- An answer added on the phone appears here without a reload ---------------------------
  const fromPhone = await jarvis(env('PHONE_HOME'), 'ask', 'And the capital of Germany?', '--conversation', conversation);
  check(fromPhone.answer, `the phone answered (${JSON.stringify(fromPhone)})`);
  await page.locator('.msg.user .text', { hasText: 'And the capital of Germany?' }).waitFor({ timeout: 30_000 });
  await until('the phone\'s answer', async () =>
    (await page.locator('.msg.assistant .text').last().textContent()) === fromPhone.answer, 30_000);
  check(await page.evaluate(() => window.jarvisNotReloaded === true), 'the page was not reloaded');
  report.phone_answer_shown = true;

  // ---- Search ------------------------------------------------------------------------------
  await page.keyboard.press('Control+n');
  await page.fill('#question', 'Tell me a word that rhymes with cat.');
  await page.press('#question', 'Enter');
  await until('the second conversation', async () => (await page.locator('#conversation-list li[data-id]').count()) === 2, 120_000);
  await until('the second answer', async () => !(await page.locator('.msg.assistant.streaming').count()), 120_000);
  await page.fill('#search', 'Germany');
  await until('the search to find the first conversation by its text', async () => {
    const ids = await page.locator('#conversation-list li[data-id]').evaluateAll((l) => l.map((e) => e.dataset.id));
    return ids.length === 1 && ids[0] === conversation;
  });
  await shot(page, 'search');
  await page.fill('#search', '');

  // ---- The microphone: level and voice state ------------------------------------------------
  await until('voice to be on', async () => {
    const state = await page.locator('#voice-state').getAttribute('data-state');
    if (state === 'off') throw new Error(`voice is off: ${await page.locator('#voice-problem').textContent()}`);
    return state !== 'starting';
  }, 120_000);
  const sample = async (ms) => {
    const seen = [];
    const end = Date.now() + ms;
    while (Date.now() < end) {
      seen.push(Number(await page.locator('#meter').getAttribute('data-level')));
      await new Promise((r) => setTimeout(r, 50));
    }
    return seen;
  };
  const levels = await sample(4000);
  const [low, high] = [Math.min(...levels), Math.max(...levels)];
  // The test's microphone plays a tone for a second, then silence for a second, over and over.
  check(high > 0.1 && low < 0.01, `the level follows the microphone (min ${low}, max ${high})`);
  await shot(page, 'voice');
  // Push-to-talk: listening at once, no wake word (the tone is not speech, so it times out).
  // Every state the voice bar shows, recorded in the page (a state can be brief on a busy
  // machine).
  await page.evaluate(() => {
    window.voiceStates = [];
    const pill = document.getElementById('voice-state');
    new MutationObserver(() => window.voiceStates.push(pill.dataset.state))
      .observe(pill, { attributes: true, attributeFilter: ['data-state'] });
  });
  await until('the voice loop to be idle (waiting for the wake word)', async () =>
    (await page.locator('#voice-state').getAttribute('data-state')) === 'idle', 60_000);
  await page.click('#talk');
  await until('the node to listen after Talk', async () => {
    const seen = await page.evaluate(() => window.voiceStates);
    const problem = await page.locator('#voice-problem').textContent();
    if (problem) throw new Error(`Talk was refused: ${problem}`);
    return seen.includes('listening');
  }, 30_000);
  report.push_to_talk = 'listening';
  await page.click('#mute');
  await page.locator('#voice-state', { hasText: 'muted' }).waitFor();
  await new Promise((r) => setTimeout(r, 500));
  const muted = await sample(2500);
  check(Math.max(...muted) < 0.001, `muted, the level is silence (max ${Math.max(...muted)})`);
  await page.click('#mute');
  await page.locator('#voice-state', { hasText: 'muted' }).waitFor({ state: 'detached' }).catch(() => {});
  report.levels = { low, high, muted_max: Math.max(...muted) };

  // ---- Pair a new device through the UI -----------------------------------------------------
  await page.keyboard.press('Alt+2');
  await page.locator('#device-list tr').first().waitFor();
  const phoneSync = await page.locator(`#device-list tr[data-id="${env('PHONE_ID')}"] td`).nth(2).textContent();
  check(!Number.isNaN(Date.parse(phoneSync)) || /\d/.test(phoneSync), `the phone's last sync is a time (${phoneSync})`);
  check(!phoneSync.includes('Invalid'), `the phone's last sync reads well (${phoneSync})`);
  await page.click('#pair');
  await page.locator('#pair-command', { hasText: 'jarvis join jvpair_' }).waitFor({ timeout: 60_000 });
  await shot(page, 'pairing');
  const code = (await page.locator('#pair-command').textContent()).replace('jarvis join ', '').trim();
  const joined = await jarvis(env('NEW_HOME'), 'join', code, '--device-name', 'tablet');
  await page.locator('#pair-status', { hasText: 'Paired “tablet”' }).waitFor({ timeout: 30_000 });
  await page.locator('#device-list tr', { hasText: 'tablet' }).waitFor();
  await shot(page, 'devices');
  report.paired = joined;

  // ---- Peers, models, settings ---------------------------------------------------------------
  await page.keyboard.press('Alt+3');
  const phoneRow = page.locator(`#peer-list tr[data-id="${env('PHONE_ID')}"]`);
  await phoneRow.waitFor();
  const problem = page.locator('.dial-problem', { hasText: 'unreachable' });
  await problem.waitFor({ timeout: 30_000 });
  report.unreachable_peer = await problem.textContent();
  report.phone_path = await phoneRow.locator('.badge').first().textContent();
  check(report.phone_path === 'direct', `the phone is reached directly on loopback (${report.phone_path})`);
  // The org's GPU peer: its model and load, ready to answer.
  const gpuRow = page.locator('#gpu-list tr', { hasText: 'gpu-1' });
  await gpuRow.locator('.badge', { hasText: 'ready' }).waitFor({ timeout: 30_000 });
  report.gpu_row = await gpuRow.textContent();
  check(report.gpu_row.includes('smollm2-on-gpu'), `the GPU peer's model is shown (${report.gpu_row})`);
  await shot(page, 'peers');
  await page.keyboard.press('Alt+4');
  await page.locator('#model-list tr', { hasText: 'smollm2-135m-instruct' }).locator('.badge', { hasText: 'installed' }).waitFor();
  await shot(page, 'models');
  await page.keyboard.press('Alt+5');
  await page.selectOption('#theme', 'dark');
  await page.locator('#node-info dd').first().waitFor();
  const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  check(background === 'rgb(17, 19, 24)', `the dark theme applies (${background})`);
  await shot(page, 'settings-dark');
  // Where answers are made: GPU peers first, then an answer that says it came from gpu-1.
  await page.locator('#offload-form input[value="gpu"]').check();
  await page.locator('#offload-saved', { hasText: 'Prefer GPU peers' }).waitFor();
  await shot(page, 'settings-offload');
  await page.keyboard.press('Alt+1');
  await page.keyboard.press('Control+n');
  await page.fill('#question', 'What is the capital of France?');
  await page.keyboard.press('Enter');
  const offloaded = page.locator('#messages .msg.assistant .meta', { hasText: 'on GPU peer gpu-1' });
  await offloaded.waitFor({ timeout: 60_000 });
  report.offloaded = await offloaded.textContent();
  await shot(page, 'conversation-dark');
  await page.keyboard.press('Alt+5');
  await page.locator('#offload-form input[value="auto"]').check();
  await page.locator('#offload-saved', { hasText: 'Automatic' }).waitFor();
  // The model picker: the GPU peer's model, chosen for a question, is answered there even under
  // Automatic (this computer does not run it); this computer's model is offered too.
  await page.keyboard.press('Alt+1');
  await page.keyboard.press('Control+n');
  await page.locator('#model-choice option', { hasText: 'smollm2-on-gpu (GPU peer)' }).waitFor({ state: 'attached', timeout: 30_000 });
  report.model_choices = await page.locator('#model-choice option').allTextContents();
  check(report.model_choices.some((t) => t.includes('(this computer)')), `this computer's model is offered (${report.model_choices})`);
  await page.selectOption('#model-choice', 'smollm2-on-gpu');
  await page.fill('#question', 'What is the capital of Italy?');
  await page.keyboard.press('Enter');
  const pinned = page.locator('#messages .msg.assistant .meta', { hasText: 'on GPU peer gpu-1' });
  await pinned.waitFor({ timeout: 60_000 });
  report.pinned = await pinned.textContent();
  await shot(page, 'model-picker');
  await page.selectOption('#model-choice', '');
  await page.keyboard.press('Alt+5');
  // The wake word off: the voice bar says to press Talk; the installed voices are offered.
  await page.locator('#wake-word').uncheck();
  await page.locator('#voice-saved', { hasText: 'wake word off' }).waitFor();
  await page.locator('#voice-state', { hasText: 'press Talk' }).waitFor();
  report.voice_choices = await page.locator('#voice-choice option').allTextContents();
  check(report.voice_choices.some((t) => t.includes('en_US-joe-medium')), `the Piper voice is offered (${report.voice_choices})`);
  await page.locator('#voice-card').scrollIntoViewIfNeeded();
  await shot(page, 'settings-voice');
  await page.locator('#wake-word').check();
  await page.locator('#voice-saved', { hasText: 'listening for' }).waitFor();
  await page.keyboard.press('Alt+1');
  await page.keyboard.press('Alt+5');
  await page.selectOption('#theme', 'light');

  // ---- Admin: revoke the phone -------------------------------------------------------------
  await page.keyboard.press('Alt+6');
  const row = page.locator(`#member-list tr[data-id="${env('PHONE_ID')}"]`);
  await row.locator('.badge', { hasText: 'active' }).waitFor();
  await shot(page, 'admin');
  await row.locator('button', { hasText: 'Revoke' }).click();
  await page.fill('#confirm-reason', 'lost on a train');
  // Admin actions ask for the admin passphrase again (the token alone is not enough).
  await page.fill('#confirm-passphrase', process.env.JARVIS_PASSPHRASE);
  await page.click('#confirm-ok');
  await row.locator('.badge', { hasText: 'revoked' }).waitFor({ timeout: 30_000 });
  await shot(page, 'admin-revoked');
  const members = await jarvis(env('ADMIN_HOME'), 'admin', 'members');
  const phone = members.members.find((m) => m.id === env('PHONE_ID'));
  check(phone?.status === 'revoked', `the admin's records show the phone revoked (${JSON.stringify(phone)})`);
  report.revoked = phone;

  check(errors.length === 0, `no script errors on the page: ${errors.join('; ')}`);
  console.log(JSON.stringify(report));
} catch (e) {
  console.error(`${e.stack || e}\nseen so far: ${JSON.stringify(report)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
