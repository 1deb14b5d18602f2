// lokal web chat page: plain browser JavaScript, no build step. It talks to the server that served it
// (POST /v1/chat/completions streamed as server-sent events, GET /v1/models) and keeps conversations in this
// browser's localStorage. Markdown is rendered by marked, sanitized by DOMPurify and code is coloured by
// highlight.js (Debian's packages, embedded in the binary at build time). docs/WEBUI.md describes it.
'use strict';
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const KEY = { convs: 'lokal.conversations', active: 'lokal.active', theme: 'lokal.theme', apiKey: 'lokal.apiKey', model: 'lokal.model' };
  const SETTINGS = ['temperature', 'top_p', 'top_k', 'min_p', 'max_tokens', 'seed'];
  const FIELD_IDS = { temperature: 'set-temperature', top_p: 'set-top-p', top_k: 'set-top-k', min_p: 'set-min-p', max_tokens: 'set-max-tokens', seed: 'set-seed' };
  const INTEGER = new Set(['top_k', 'max_tokens', 'seed']);

  // ---- state -------------------------------------------------------------------------------------------------------
  let convs = [];            // [{id, title, model, settings, messages, created, updated}]
  let activeId = null;
  let models = [];           // [{id, n_ctx}]
  let streaming = null;      // {conv, msg, controller, el}
  let pendingAfterKey = null; // what to retry once a key is saved

  const el = {
    app: $('#app'), sidebar: $('#sidebar'), backdrop: $('#backdrop'), list: $('#conv-list'), messages: $('#messages'),
    prompt: $('#prompt'), send: $('#send'), stop: $('#stop'), composer: $('#composer'), error: $('#error'),
    model: $('#model-select'), title: $('#conv-title'), settings: $('#settings'), keyDialog: $('#key-dialog'),
    keyInput: $('#key-input'), keyText: $('#key-text'), theme: $('#theme-toggle'), sidebarToggle: $('#sidebar-toggle'),
  };

  // ---- storage -----------------------------------------------------------------------------------------------------
  function loadConvs() {
    try {
      const v = JSON.parse(localStorage.getItem(KEY.convs) || '[]');
      return Array.isArray(v) ? v.filter(validConv) : [];
    } catch {
      return [];
    }
  }
  function validConv(c) {
    return c && typeof c === 'object' && typeof c.id === 'string' && Array.isArray(c.messages) &&
      c.messages.every((m) => m && typeof m.role === 'string' && (typeof m.content === 'string' || m.content == null));
  }
  let saveTimer = null;
  function save(now = true) {
    if (!now) {
      if (!saveTimer) saveTimer = setTimeout(() => { saveTimer = null; save(); }, 1000);
      return;
    }
    try {
      localStorage.setItem(KEY.convs, JSON.stringify(convs));
      if (activeId) localStorage.setItem(KEY.active, activeId);
    } catch (e) {
      showError(`The browser's storage is full or disabled, so this conversation is not saved (${e.name}). Export or delete old conversations.`);
    }
  }
  const newId = () => (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`);
  const activeConv = () => convs.find((c) => c.id === activeId) || null;

  function createConv() {
    const c = { id: newId(), title: 'New chat', model: localStorage.getItem(KEY.model) || (models[0] && models[0].id) || '',
      settings: {}, messages: [], created: Date.now(), updated: Date.now() };
    const cur = activeConv();
    if (cur) c.settings = JSON.parse(JSON.stringify(cur.settings || {})); // a new chat keeps the last settings
    convs.unshift(c);
    activeId = c.id;
    save();
    return c;
  }

  // ---- API ---------------------------------------------------------------------------------------------------------
  function headers() {
    const h = { 'Content-Type': 'application/json' };
    const k = localStorage.getItem(KEY.apiKey);
    if (k) h.Authorization = `Bearer ${k}`;
    return h;
  }
  async function errorOf(res) {
    let msg = '', code = '';
    try {
      const j = await res.json();
      const e = j.error || j;
      msg = (typeof e === 'string' ? e : e.message) || '';
      code = (e && e.code) || '';
    } catch { /* not JSON */ }
    return { status: res.status, msg, code, retry: res.headers.get('Retry-After') };
  }
  // One sentence a person can act on, per failure.
  function explain(e) {
    const retry = e.retry ? ` Try again in ${e.retry} s.` : '';
    const detail = e.msg ? `\nServer: ${e.msg}` : '';
    if (e.code === 'context_length_exceeded') {
      return `This conversation no longer fits the model's context. Start a new conversation, delete or edit earlier messages, or restart the server with a larger -c.${detail}`;
    }
    switch (e.status) {
      case 401: return `The server needs a valid API key (HTTP 401). Enter it when asked; it is kept in this browser only.${detail}`;
      case 403: return `This API key may not do that (HTTP 403).${detail}`;
      case 413: return `The request is too large for this server (HTTP 413: its --max-body limit). Shorten the message or start a new conversation.${detail}`;
      case 429: return `The server's rate limit was reached (HTTP 429).${retry}${detail}`;
      case 503:
        if (e.code === 'model_loading') return `The model is still loading (HTTP 503).${retry}`;
        if (e.code === 'shutting_down') return 'The server is shutting down (HTTP 503).';
        return `The server is busy: every slot and its queue are in use (HTTP 503).${retry}${detail}`;
      default: return `The server answered HTTP ${e.status}.${detail}`;
    }
  }
  function showError(text) {
    el.error.textContent = text;
    el.error.hidden = !text;
  }

  async function loadModels() {
    let res;
    try {
      res = await fetch('/v1/models', { headers: headers() });
    } catch (e) {
      showError(`Cannot reach the server: ${e.message}`);
      return;
    }
    if (res.status === 401 || res.status === 403) {
      askKey(await errorOf(res), loadModels);
      return;
    }
    if (!res.ok) {
      showError(explain(await errorOf(res)));
      if (res.status === 503) setTimeout(loadModels, 2000);
      return;
    }
    const j = await res.json();
    const data = Array.isArray(j.data) ? j.data : [];
    const ctx = (data.find((m) => m.meta && m.meta.n_ctx) || {}).meta;
    models = data.map((m) => ({ id: m.id, n_ctx: (m.meta && m.meta.n_ctx) || (ctx && ctx.n_ctx) || 0 }));
    if (el.error.textContent.includes('HTTP 401')) showError('');
    renderModels();
  }

  // ---- API key -----------------------------------------------------------------------------------------------------
  function askKey(err, retry) {
    pendingAfterKey = retry;
    const had = localStorage.getItem(KEY.apiKey);
    el.keyText.textContent = had
      ? 'The saved API key was refused. Enter another; it is kept in this browser only.'
      : 'This server needs an API key. Enter it once; it is kept in this browser only.';
    showError(explain(err));
    if (!el.keyDialog.open) el.keyDialog.showModal();
    el.keyInput.value = '';
    el.keyInput.focus();
  }
  $('#key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const k = el.keyInput.value.trim();
    if (!k) return;
    localStorage.setItem(KEY.apiKey, k);
    el.keyDialog.close();
    showError('');
    const again = pendingAfterKey;
    pendingAfterKey = null;
    if (again) again();
    if (!models.length && again !== loadModels) loadModels();
  });
  $('#key-cancel').addEventListener('click', () => {
    el.keyDialog.close();
    pendingAfterKey = null;
  });

  // ---- generation --------------------------------------------------------------------------------------------------
  function num(v, integer) {
    if (v === '' || v == null) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n)) return undefined;
    return integer ? Math.trunc(n) : n;
  }
  function apiMessages(conv, upto) {
    const out = [];
    const sys = (conv.settings && conv.settings.system || '').trim();
    if (sys) out.push({ role: 'system', content: sys });
    for (const m of conv.messages.slice(0, upto)) {
      if (m.role === 'user') out.push({ role: 'user', content: m.content });
      else if (m.role === 'assistant') {
        if (m.finish === 'error' && !m.content && !(m.tool_calls || []).length) continue;
        const a = { role: 'assistant', content: m.content || '' };
        if ((m.tool_calls || []).length) {
          a.tool_calls = m.tool_calls.map((t) => ({ id: t.id, type: 'function', function: { name: t.name, arguments: t.arguments } }));
        }
        out.push(a);
      } else if (m.role === 'tool') out.push({ role: 'tool', tool_call_id: m.tool_call_id, content: m.content });
    }
    return out;
  }
  function requestBody(conv, upto) {
    const s = conv.settings || {};
    const body = { model: conv.model || (models[0] && models[0].id) || undefined, messages: apiMessages(conv, upto), stream: true,
      stream_options: { include_usage: true } };
    for (const k of SETTINGS) {
      const v = num(s[k], INTEGER.has(k));
      if (v !== undefined) body[k] = v;
    }
    if (Array.isArray(s.tools) && s.tools.length) body.tools = s.tools;
    return body;
  }

  async function generate(conv) {
    if (streaming) return;
    showError('');
    const msg = { role: 'assistant', content: '', reasoning: '', tool_calls: [], model: conv.model };
    conv.messages.push(msg);
    conv.updated = Date.now();
    const controller = new AbortController();
    streaming = { conv, msg, controller };
    setStreamingUi(true);
    renderMessages();
    const t0 = performance.now();
    let tFirst = 0, usage = null, timings = null, finish = null;
    const body = requestBody(conv, conv.messages.length - 1);
    try {
      const res = await fetch('/v1/chat/completions', { method: 'POST', headers: headers(), body: JSON.stringify(body), signal: controller.signal });
      if (!res.ok) {
        const err = await errorOf(res);
        conv.messages.pop(); // nothing was generated
        streaming = null;
        setStreamingUi(false);
        renderMessages();
        if (err.status === 401) askKey(err, () => generate(conv));
        else showError(explain(err));
        save();
        return;
      }
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const event = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          for (const line of event.split('\n')) {
            if (!line.startsWith('data:')) continue;
            const data = line.slice(5).trim();
            if (data === '[DONE]') continue;
            let j;
            try { j = JSON.parse(data); } catch { continue; }
            if (j.error) throw Object.assign(new Error(j.error.message || 'error'), { api: j.error });
            if (j.usage) usage = j.usage;
            if (j.timings) timings = j.timings;
            const ch = j.choices && j.choices[0];
            if (!ch) continue;
            const d = ch.delta || {};
            if (d.reasoning_content) msg.reasoning += d.reasoning_content;
            if (d.content) msg.content += d.content;
            for (const tc of d.tool_calls || []) {
              const i = tc.index || 0;
              const t = msg.tool_calls[i] || (msg.tool_calls[i] = { id: '', name: '', arguments: '' });
              if (tc.id) t.id = tc.id;
              if (tc.function && tc.function.name) t.name += tc.function.name;
              if (tc.function && tc.function.arguments) t.arguments += tc.function.arguments;
            }
            if (!tFirst && (d.content || d.reasoning_content || (d.tool_calls || []).length)) tFirst = performance.now();
            if (ch.finish_reason) finish = ch.finish_reason;
          }
        }
        scheduleRender();
        save(false);
      }
      msg.finish = finish || 'stop';
    } catch (e) {
      if (e.name === 'AbortError') msg.finish = 'stopped';
      else {
        msg.finish = 'error';
        showError(e.api ? `The server stopped the answer: ${e.api.message}` : `The connection to the server failed: ${e.message}`);
      }
    }
    const tEnd = performance.now();
    msg.tool_calls = msg.tool_calls.filter(Boolean);
    msg.stats = statsOf(conv, usage, timings, t0, tFirst, tEnd);
    if (msg.finish === 'length') msg.note = lengthNote(conv, msg.stats);
    streaming = null;
    conv.updated = Date.now();
    setStreamingUi(false);
    save();
    renderList();
    renderMessages();
  }

  function statsOf(conv, usage, timings, t0, tFirst, tEnd) {
    const s = {};
    if (tFirst) s.ttft_ms = Math.round(tFirst - t0);
    if (timings && timings.predicted_per_second) s.tps = timings.predicted_per_second;
    if (usage) {
      s.completion_tokens = usage.completion_tokens;
      s.context_used = (usage.prompt_tokens || 0) + (usage.completion_tokens || 0);
      if (!s.tps && tFirst && usage.completion_tokens > 1) s.tps = (usage.completion_tokens - 1) / ((tEnd - tFirst) / 1000);
    }
    const m = models.find((x) => x.id === conv.model) || models[0];
    if (m && m.n_ctx) s.n_ctx = m.n_ctx;
    s.seconds = (tEnd - t0) / 1000;
    return s;
  }
  function lengthNote(conv, s) {
    const max = num(conv.settings && conv.settings.max_tokens, true);
    if (s.n_ctx && s.context_used >= s.n_ctx - 1) {
      return `The context is full (${s.context_used} of ${s.n_ctx} tokens): the answer was cut off. Start a new conversation or delete earlier messages.`;
    }
    if (max && s.completion_tokens >= max) return `Stopped at the max tokens setting (${max}).`;
    return 'The answer was cut off (length limit).';
  }
  function statsText(s) {
    if (!s) return '';
    const parts = [];
    if (s.tps) parts.push(`${s.tps.toFixed(1)} tokens/s`);
    if (s.ttft_ms != null) parts.push(`TTFT ${s.ttft_ms} ms`);
    if (s.context_used != null) parts.push(`context ${s.context_used} / ${s.n_ctx || '?'}`);
    if (s.completion_tokens != null) parts.push(`${s.completion_tokens} tokens`);
    else if (s.seconds != null) parts.push(`${s.seconds.toFixed(1)} s`);
    return parts.join(' · ');
  }

  function setStreamingUi(on) {
    el.stop.hidden = !on;
    el.send.disabled = on;
    el.messages.dataset.streaming = on ? 'true' : 'false';
  }

  // ---- rendering ---------------------------------------------------------------------------------------------------
  function escapeHtml(s) {
    return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  }
  const haveMarked = () => typeof window.marked !== 'undefined' && typeof window.DOMPurify !== 'undefined';
  if (haveMarked()) {
    // Raw HTML in an answer is shown as text, never interpreted.
    window.marked.use({ gfm: true, breaks: true, headerIds: false, mangle: false,
      renderer: { html(h) { return escapeHtml(typeof h === 'string' ? h : (h && h.text) || ''); } } });
  }
  function renderMarkdown(target, text) {
    if (!haveMarked()) {
      target.classList.add('plain');
      target.textContent = text;
      return;
    }
    target.innerHTML = window.DOMPurify.sanitize(window.marked.parse(text));
    for (const a of target.querySelectorAll('a[href]')) {
      a.rel = 'noopener noreferrer';
      a.target = '_blank';
    }
    for (const code of target.querySelectorAll('pre > code')) {
      const lang = codeLang(code);
      code.classList.add('hljs');
      if (window.hljs) highlight(code, lang);
      else loadHighlighter();
      const pre = code.parentElement;
      const b = button('Copy', 'code-copy', `Copy code${lang ? ` (${lang})` : ''}`);
      b.addEventListener('click', () => copyText(code.textContent, b));
      pre.appendChild(b);
    }
  }
  // highlight.js (846 KB, 269 KB gzip) loads only when the first code block appears, so the page itself loads fast.
  const assetVersion = (document.currentScript && new URL(document.currentScript.src).searchParams.get('v')) || '';
  let highlighterLoading = false;
  function loadHighlighter() {
    if (highlighterLoading) return;
    highlighterLoading = true;
    const sc = document.createElement('script');
    sc.src = `/ui/vendor/highlight.min.js?v=${encodeURIComponent(assetVersion)}`;
    sc.addEventListener('load', () => {
      for (const code of document.querySelectorAll('.msg-content pre > code.hljs:not([data-highlighted])')) {
        highlight(code, codeLang(code));
      }
    });
    document.head.appendChild(sc);
  }
  // The language a Markdown code block names (```python -> class "language-python"), or ''.
  function codeLang(code) {
    return ((code.className.match(/language-([\w+#.-]+)/) || [])[1] || '').toLowerCase();
  }
  function highlight(code, lang) {
    try {
      const r = lang && window.hljs.getLanguage(lang) ? window.hljs.highlight(lang, code.textContent, true) : window.hljs.highlightAuto(code.textContent);
      code.innerHTML = r.value; // highlight.js escapes the code it returns
      code.dataset.highlighted = 'true';
    } catch { /* leave it plain */ }
  }
  // An element with a class and a text (both optional).
  function make(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function button(text, cls, label) {
    const b = make('button', cls, text);
    b.type = 'button';
    if (label) b.setAttribute('aria-label', label);
    return b;
  }
  // The box of a tool call or a tool result: "LABEL name" and the body in a <pre>.
  function toolBox(cls, label, name, body, bodyCls) {
    const box = make('div', cls);
    box.append(make('span', 'tool-label', label), make('span', 'tool-name', name), make('pre', bodyCls, body));
    return box;
  }
  async function copyText(text, b) {
    try {
      if (navigator.clipboard && window.isSecureContext) await navigator.clipboard.writeText(text);
      else {
        const t = document.createElement('textarea');
        t.value = text;
        t.setAttribute('aria-hidden', 'true');
        document.body.appendChild(t);
        t.select();
        document.execCommand('copy');
        t.remove();
      }
      const old = b.textContent;
      b.textContent = 'Copied';
      setTimeout(() => { b.textContent = old; }, 1200);
    } catch (e) {
      showError(`Could not copy: ${e.message}`);
    }
  }
  function prettyArgs(s) {
    try { return JSON.stringify(JSON.parse(s), null, 2); } catch { return s; }
  }

  function messageEl(conv, m, i) {
    const div = make('div', 'msg');
    div.dataset.role = m.role;
    div.dataset.index = String(i);
    const isStreaming = streaming && streaming.msg === m;
    if (isStreaming) div.dataset.streaming = 'true';
    else if (m.role === 'assistant' && m.finish) div.dataset.finish = m.finish;
    div.appendChild(make('div', 'msg-head', m.role === 'user' ? 'You' : m.role === 'tool' ? 'Tool result' : (m.model || 'Assistant')));

    if (m.role === 'tool') {
      div.appendChild(toolBox('tool-result', 'Result of ', m.name || m.tool_call_id || 'tool', m.content));
    } else {
      if (m.role === 'assistant' && m.reasoning) {
        const det = make('details', 'msg-reasoning');
        det.open = !!isStreaming && !m.content;
        det.append(make('summary', '', isStreaming && !m.content ? 'Reasoning…' : 'Reasoning'),
          make('div', 'reasoning-body', m.reasoning.trim()));
        div.appendChild(det);
      }
      const content = make('div', 'msg-content');
      if (m.role === 'user') {
        content.classList.add('plain');
        content.textContent = m.content;
      } else {
        renderMarkdown(content, m.content || '');
      }
      div.appendChild(content);
      if (m.role === 'assistant') {
        (m.tool_calls || []).forEach((t) => div.appendChild(toolCallEl(conv, m, i, t, isStreaming)));
      }
    }
    if (editing && editing.conv === conv && editing.index === i) {
      div.appendChild(editEl(conv, m, i));
      return div;
    }
    if (m.role === 'assistant' && !isStreaming) {
      const note = m.note || (m.finish === 'stopped' ? 'Stopped.' : '');
      if (note) div.appendChild(make('div', 'finish-note', note));
      const st = statsText(m.stats);
      if (st) div.appendChild(make('div', 'msg-stats', st));
    }
    if (!isStreaming) {
      const actions = make('div', 'msg-actions');
      const copy = button('Copy', 'msg-copy', 'Copy message');
      copy.addEventListener('click', () => copyText(m.content || '', copy));
      actions.appendChild(copy);
      if (m.role === 'user') {
        const ed = button('Edit', 'msg-edit', 'Edit message');
        ed.disabled = !!streaming;
        ed.addEventListener('click', () => { editing = { conv, index: i }; renderMessages(); focusEdit(); });
        actions.appendChild(ed);
      }
      if (m.role === 'assistant' && i === lastIndex(conv, 'assistant')) {
        const rg = button('Regenerate', 'msg-regenerate', 'Regenerate answer');
        rg.disabled = !!streaming;
        rg.addEventListener('click', () => {
          if (streaming) return;
          conv.messages.splice(i);
          save();
          generate(conv);
        });
        actions.appendChild(rg);
      }
      div.appendChild(actions);
    }
    return div;
  }
  function lastIndex(conv, role) {
    for (let i = conv.messages.length - 1; i >= 0; i--) if (conv.messages[i].role === role) return i;
    return -1;
  }
  function toolCallEl(conv, m, i, t, isStreaming) {
    const box = toolBox('tool-call', 'Tool call: ', t.name, prettyArgs(t.arguments), 'tool-args');
    const answered = conv.messages.some((x) => x.role === 'tool' && x.tool_call_id === t.id);
    if (!isStreaming && !answered && i === lastIndex(conv, 'assistant')) {
      const row = make('div', 'tool-answer');
      const ta = make('textarea', 'tool-result-input');
      ta.rows = 1;
      ta.placeholder = 'Result (JSON or text)';
      ta.setAttribute('aria-label', `Result of ${t.name}`);
      const send = button('Send result', 'tool-result-send', `Send the result of ${t.name}`);
      send.addEventListener('click', () => {
        if (streaming) return;
        conv.messages.push({ role: 'tool', tool_call_id: t.id, name: t.name, content: ta.value });
        conv.updated = Date.now();
        save();
        const open = (m.tool_calls || []).some((c) => !conv.messages.some((x) => x.role === 'tool' && x.tool_call_id === c.id));
        if (open) renderMessages(); // wait for the other calls' results
        else generate(conv);
      });
      row.append(ta, send);
      box.appendChild(row);
    }
    return box;
  }

  let editing = null; // {conv, index}
  function editEl(conv, m, i) {
    const wrap = document.createElement('div');
    const ta = document.createElement('textarea');
    ta.className = 'msg-edit-input';
    ta.value = m.content;
    ta.setAttribute('aria-label', 'Edit message');
    const row = document.createElement('div');
    row.className = 'msg-actions';
    const saveB = button('Save & send', 'msg-edit-save', 'Save the edit and answer again');
    const cancel = button('Cancel', 'msg-edit-cancel', 'Cancel editing');
    saveB.addEventListener('click', () => {
      if (streaming || !ta.value.trim()) return;
      m.content = ta.value;
      conv.messages.splice(i + 1);
      editing = null;
      save();
      generate(conv);
    });
    cancel.addEventListener('click', () => { editing = null; renderMessages(); });
    ta.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') cancel.click();
      else if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); saveB.click(); }
    });
    row.append(saveB, cancel);
    wrap.append(ta, row);
    return wrap;
  }
  function focusEdit() {
    const t = $('.msg-edit-input');
    if (t) { t.focus(); t.setSelectionRange(t.value.length, t.value.length); }
  }

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      if (!streaming || streaming.conv.id !== activeId) return;
      const nearBottom = el.messages.scrollHeight - el.messages.scrollTop - el.messages.clientHeight < 80;
      const idx = streaming.conv.messages.indexOf(streaming.msg);
      const old = el.messages.querySelector(`.msg[data-index="${idx}"]`);
      const fresh = messageEl(streaming.conv, streaming.msg, idx);
      if (old) {
        const det = old.querySelector('details.msg-reasoning');
        const fdet = fresh.querySelector('details.msg-reasoning');
        if (det && fdet) fdet.open = det.open;
        old.replaceWith(fresh);
      } else el.messages.appendChild(fresh);
      if (nearBottom) el.messages.scrollTop = el.messages.scrollHeight;
    });
  }

  function renderMessages() {
    const conv = activeConv();
    el.messages.textContent = '';
    el.title.textContent = conv ? conv.title : '';
    if (!conv || !conv.messages.length) {
      const e = document.createElement('p');
      e.className = 'empty';
      e.textContent = models.length ? `Ask ${conv && conv.model ? conv.model : models[0].id} anything.` : 'Ask anything.';
      el.messages.appendChild(e);
    } else {
      conv.messages.forEach((m, i) => el.messages.appendChild(messageEl(conv, m, i)));
    }
    el.messages.scrollTop = el.messages.scrollHeight;
    renderModels();
  }

  function renderModels() {
    const conv = activeConv();
    const want = (conv && conv.model) || localStorage.getItem(KEY.model) || (models[0] && models[0].id) || '';
    const ids = models.map((m) => m.id);
    if (want && !ids.includes(want)) ids.push(want); // a conversation's model that this server no longer lists
    el.model.textContent = '';
    for (const id of ids) {
      const o = document.createElement('option');
      o.value = id;
      o.textContent = models.some((m) => m.id === id) ? id : `${id} (not served)`;
      el.model.appendChild(o);
    }
    el.model.value = want;
    if (conv && !conv.model && want) conv.model = want;
  }

  function renderList() {
    el.list.textContent = '';
    const sorted = [...convs].sort((a, b) => (b.updated || 0) - (a.updated || 0));
    for (const c of sorted) {
      const li = document.createElement('li');
      li.className = 'conv';
      li.dataset.id = c.id;
      if (c.id === activeId) li.setAttribute('aria-current', 'true');
      const open = button(c.title || 'Untitled', 'conv-open');
      open.title = c.title || 'Untitled';
      open.addEventListener('click', () => { activate(c.id); closeSidebar(); });
      const ren = button('✎', 'conv-rename', `Rename ${c.title}`);
      ren.addEventListener('click', () => startRename(li, c));
      const exp = button('⤓', 'conv-export', `Export ${c.title}`);
      exp.addEventListener('click', () => download(fileName(c.title), exportable(c)));
      const del = button('✕', 'conv-delete', `Delete ${c.title}`);
      del.addEventListener('click', () => {
        if (!del.classList.contains('armed')) {
          del.classList.add('armed');
          del.textContent = 'Confirm delete';
          del.setAttribute('aria-label', 'Confirm delete');
          setTimeout(() => { if (del.isConnected) renderList(); }, 4000);
          return;
        }
        deleteConv(c.id);
      });
      li.append(open, ren, exp, del);
      el.list.appendChild(li);
    }
  }
  function startRename(li, c) {
    const input = document.createElement('input');
    input.className = 'conv-rename-input';
    input.value = c.title;
    input.setAttribute('aria-label', 'New title');
    li.textContent = '';
    li.appendChild(input);
    input.focus();
    input.select();
    let done = false;
    const finish = (keep) => {
      if (done) return;
      done = true;
      if (keep && input.value.trim()) {
        c.title = input.value.trim().slice(0, 200);
        save();
      }
      renderList();
      el.title.textContent = (activeConv() || {}).title || '';
    };
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') { ev.preventDefault(); finish(true); }
      else if (ev.key === 'Escape') finish(false);
    });
    input.addEventListener('blur', () => finish(true));
  }
  function deleteConv(id) {
    if (streaming && streaming.conv.id === id) streaming.controller.abort();
    convs = convs.filter((c) => c.id !== id);
    if (activeId === id) activeId = convs.length ? [...convs].sort((a, b) => (b.updated || 0) - (a.updated || 0))[0].id : null;
    save();
    if (!activeId) localStorage.removeItem(KEY.active);
    renderList();
    renderMessages();
  }
  function activate(id) {
    activeId = id;
    editing = null;
    localStorage.setItem(KEY.active, id);
    renderList();
    renderMessages();
    el.prompt.focus();
  }

  // ---- export / import ---------------------------------------------------------------------------------------------
  function exportable(c) {
    return { format: 'lokal-chat', version: 1, id: c.id, title: c.title, model: c.model, settings: c.settings, messages: c.messages,
      created: c.created, updated: c.updated };
  }
  function fileName(title) {
    return `lokal-chat-${(title || 'chat').replace(/[^\w-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40) || 'chat'}.json`;
  }
  function download(name, obj) {
    const blob = new Blob([JSON.stringify(obj, null, 2)], { type: 'application/json' });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }
  $('#export-all').addEventListener('click', () => download('lokal-chats.json', convs.map(exportable)));
  $('#import-file').addEventListener('change', async (ev) => {
    const file = ev.target.files && ev.target.files[0];
    ev.target.value = '';
    if (!file) return;
    let data;
    try {
      data = JSON.parse(await file.text());
    } catch (e) {
      showError(`${file.name} is not JSON: ${e.message}`);
      return;
    }
    const list = Array.isArray(data) ? data : Array.isArray(data.conversations) ? data.conversations : [data];
    const ok = [];
    for (const c of list) {
      if (!c || typeof c !== 'object' || !Array.isArray(c.messages) ||
          !c.messages.every((m) => m && ['user', 'assistant', 'tool', 'system'].includes(m.role) && (typeof m.content === 'string' || m.content == null))) continue;
      const id = typeof c.id === 'string' && !convs.some((x) => x.id === c.id) ? c.id : newId();
      ok.push({ id, title: String(c.title || 'Imported chat').slice(0, 200), model: typeof c.model === 'string' ? c.model : '',
        settings: c.settings && typeof c.settings === 'object' ? c.settings : {},
        messages: c.messages.filter((m) => m.role !== 'system').map((m) => ({ ...m, content: m.content || '' })),
        created: Number(c.created) || Date.now(), updated: Date.now() });
    }
    if (!ok.length) {
      showError(`${file.name} holds no conversation this page can read (an export of this page: an object or an array with "messages").`);
      return;
    }
    convs.unshift(...ok);
    save();
    showError('');
    activate(ok[0].id);
  });

  // ---- settings ----------------------------------------------------------------------------------------------------
  $('#settings-open').addEventListener('click', () => {
    const c = activeConv() || createConv();
    const s = c.settings || {};
    $('#set-system').value = s.system || '';
    for (const k of SETTINGS) $(`#${FIELD_IDS[k]}`).value = s[k] != null ? String(s[k]) : '';
    $('#set-tools').value = Array.isArray(s.tools) && s.tools.length ? JSON.stringify(s.tools, null, 2) : '';
    $('#settings-error').hidden = true;
    el.settings.showModal();
  });
  $('#settings-cancel').addEventListener('click', () => el.settings.close());
  $('#settings-save').addEventListener('click', () => {
    const c = activeConv() || createConv();
    const err = $('#settings-error');
    const s = { system: $('#set-system').value };
    for (const k of SETTINGS) {
      const raw = $(`#${FIELD_IDS[k]}`).value.trim();
      if (raw === '') continue;
      const v = num(raw, INTEGER.has(k));
      if (v === undefined) {
        err.textContent = `${k} must be a number.`;
        err.hidden = false;
        return;
      }
      s[k] = v;
    }
    const toolsRaw = $('#set-tools').value.trim();
    if (toolsRaw) {
      let tools;
      try {
        tools = JSON.parse(toolsRaw);
      } catch (e) {
        err.textContent = `Tools: not valid JSON (${e.message}).`;
        err.hidden = false;
        return;
      }
      if (!Array.isArray(tools)) tools = [tools];
      if (!tools.every((t) => t && typeof t === 'object' && t.function && typeof t.function.name === 'string')) {
        err.textContent = 'Tools: each entry needs {"type": "function", "function": {"name": ..., "parameters": {...}}}.';
        err.hidden = false;
        return;
      }
      s.tools = tools.map((t) => ({ type: 'function', ...t }));
    }
    c.settings = s;
    save();
    el.settings.close();
  });

  // ---- composer, buttons, theme, sidebar ---------------------------------------------------------------------------
  function submit() {
    const text = el.prompt.value;
    if (!text.trim() || streaming) return;
    const conv = activeConv() || createConv();
    conv.messages.push({ role: 'user', content: text });
    if (conv.title === 'New chat' || !conv.title) conv.title = text.trim().replace(/\s+/g, ' ').slice(0, 40);
    if (!conv.model) conv.model = el.model.value;
    el.prompt.value = '';
    autosize();
    save();
    renderList();
    generate(conv);
  }
  el.composer.addEventListener('submit', (ev) => { ev.preventDefault(); submit(); });
  el.prompt.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      submit();
    }
  });
  function autosize() {
    el.prompt.style.height = 'auto';
    el.prompt.style.height = `${Math.min(el.prompt.scrollHeight + 2, window.innerHeight * 0.4)}px`;
  }
  el.prompt.addEventListener('input', autosize);
  el.stop.addEventListener('click', () => { if (streaming) streaming.controller.abort(); });
  $('#new-chat').addEventListener('click', () => {
    const cur = activeConv();
    if (cur && !cur.messages.length) { el.prompt.focus(); closeSidebar(); return; } // already on an empty one
    createConv();
    renderList();
    renderMessages();
    closeSidebar();
    el.prompt.focus();
  });
  el.model.addEventListener('change', () => {
    const c = activeConv() || createConv();
    c.model = el.model.value;
    localStorage.setItem(KEY.model, c.model);
    save();
    renderList();
  });

  function applyTheme(t) {
    document.documentElement.dataset.theme = t;
    el.theme.setAttribute('aria-label', t === 'dark' ? 'Switch to light theme' : 'Switch to dark theme');
    el.theme.textContent = t === 'dark' ? '☀' : '☾';
  }
  el.theme.addEventListener('click', () => {
    const t = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
    localStorage.setItem(KEY.theme, t);
    applyTheme(t);
  });
  function closeSidebar() {
    el.app.classList.remove('sidebar-open');
    el.backdrop.hidden = true;
    el.sidebarToggle.setAttribute('aria-expanded', 'false');
  }
  el.sidebarToggle.addEventListener('click', () => {
    const open = !el.app.classList.contains('sidebar-open');
    el.app.classList.toggle('sidebar-open', open);
    el.backdrop.hidden = !open;
    el.sidebarToggle.setAttribute('aria-expanded', String(open));
    if (open) $('#new-chat').focus();
  });
  el.backdrop.addEventListener('click', closeSidebar);
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && el.app.classList.contains('sidebar-open')) closeSidebar();
  });
  window.addEventListener('storage', (ev) => { // another tab changed the conversations
    if (ev.key === KEY.convs && !streaming) {
      convs = loadConvs();
      if (!activeConv()) activeId = convs[0] ? convs[0].id : null;
      renderList();
      renderMessages();
    }
  });

  // ---- start -------------------------------------------------------------------------------------------------------
  applyTheme(localStorage.getItem(KEY.theme) || (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'));
  convs = loadConvs();
  activeId = localStorage.getItem(KEY.active);
  if (!activeConv()) activeId = convs.length ? convs[0].id : null;
  renderList();
  renderMessages();
  setStreamingUi(false);
  loadModels().then(() => renderMessages());
  el.prompt.focus();
})();
