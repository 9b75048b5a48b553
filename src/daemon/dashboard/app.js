// lockstep dashboard: follows the daemon's live view (server-sent events on
// /v1/overview/stream) and draws every VM with its two hosts. Plain
// JavaScript, no dependencies; everything it keeps is bounded.
'use strict';

(() => {
  /** The chart covers this much time, and keeps at most this many points per VM and host. */
  const WINDOW_MS = 5 * 60 * 1000;
  const POINTS_MAX = 600;
  /** No frame for this long: the view is shown as stale. */
  const STALE_MS = 2000;
  const EVENTS_SHOWN = 30;
  const VM_EVENTS_SHOWN = 8;

  const $ = (id) => document.getElementById(id);
  /** Recent checkpoint pauses per "vm@host": [wall-clock ms, pause ms], oldest first. */
  const pauses = new Map();
  let view = null;
  let lastFrameAt = 0;

  const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  const secs = (ms) => (ms == null ? '–' : ms < 1000 ? `${Math.round(ms)} ms` : ms < 60_000 ? `${(ms / 1000).toFixed(1)} s` : ms < 3_600_000 ? `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s` : `${(ms / 3_600_000).toFixed(1)} h`);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  const clock = (iso) => {
    const d = new Date(iso);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  };
  const mib = (b) => `${(b / 2 ** 20).toFixed(0)} MiB`;

  const STATE_TEXT = { protected: 'PROTECTED', resyncing: 'RESYNCING', 'failing-over': 'FAILING OVER', unprotected: 'NOT PROTECTED', stopped: 'STOPPED', unknown: 'UNKNOWN' };
  const KIND_TONE = {
    failover: 'warn', fence: 'bad', unfence: 'info', restart: 'warn', resync: 'ok', 'resync-step': 'info', protection: 'info', decision: 'warn',
    lease: 'info', heartbeat: 'info', witness: 'info', qemu: 'bad', error: 'bad', operator: 'info', daemon: 'info', agent: 'info', role: 'info', waiting: '',
  };

  function toneOf(r) {
    if (r.kind === 'protection') return r.figures.protected ? 'ok' : 'bad';
    if (r.kind === 'heartbeat') return r.figures.heard ? 'ok' : 'bad';
    if (r.kind === 'witness') return r.figures.reachable ? 'ok' : 'bad';
    if (r.kind === 'lease') return r.figures.held ? 'ok' : 'warn';
    return KIND_TONE[r.kind] ?? '';
  }

  // ---- what arrives ----

  function take(frame) {
    view = frame;
    lastFrameAt = Date.now();
    for (const vm of frame.vms) {
      for (const p of vm.parts) {
        if (!p.vm) continue;
        const key = `${vm.name}@${p.host}`;
        const ring = pauses.get(key) ?? [];
        const newest = ring.length ? ring[ring.length - 1][0] : 0;
        for (const pt of p.vm.pauses) if (pt[0] > newest) ring.push(pt);
        const from = frame.atMs - WINDOW_MS;
        while (ring.length && (ring.length > POINTS_MAX || ring[0][0] < from)) ring.shift();
        pauses.set(key, ring);
      }
    }
    render();
  }

  // ---- drawing ----

  function render() {
    if (!view) return;
    const host = view.hosts.find((h) => h.host === view.by);
    $('where').innerHTML = `host <b>${esc(view.by)}</b>${host?.version ? ` · lockstep ${esc(host.version)}` : ''}`;
    const n = view.vms.length;
    const prot = view.vms.filter((v) => v.protected).length;
    $('summary').innerHTML = [
      `<span class="chip dim">${n} VM${n === 1 ? '' : 's'}</span>`,
      prot ? `<span class="chip ok">${prot} protected</span>` : '',
      n - prot ? `<span class="chip bad" data-testid="unprotected-count">${n - prot} not protected</span>` : '',
    ].join('');
    $('hosts').innerHTML = view.hosts
      .map((h) => `<div class="hostpill" data-host="${esc(h.host)}" data-reachable="${h.reachable}"><span class="dot"></span><b>${esc(h.host)}</b>${h.reachable ? (h.healthy === false ? `<span class="chip warn">${esc(h.healthProblems.join('; '))}</span>` : '<span>answers</span>') : `<span>${esc(h.problem)}</span>`}</div>`)
      .join('');
    $('vms').innerHTML = n ? view.vms.map(vmCard).join('') : '<p class="empty">This host runs no protected VM (lockstep up -f FILE starts one).</p>';
    $('events').innerHTML = [...view.events].reverse().slice(0, EVENTS_SHOWN).map((r) => eventRow(r, true)).join('') || '<li><span class="ev-text">no events yet</span></li>';
  }

  function vmCard(v) {
    // The writer among the hosts that answer (a host that does not answer may still say it was the primary).
    const primaryIdx = v.parts.findIndex((p) => p.reachable && (p.vm?.agent?.role === 'primary' || p.vm?.agent?.role === 'alone'));
    const plane = v.parts.find((p) => p.vm?.dataPlane)?.vm?.dataPlane;
    const cps = v.parts.map((p) => p.vm?.checkpoints ?? 0);
    const why = v.why.length ? `<ul class="why" data-testid="why">${v.why.map((w) => `<li>${esc(w)}</li>`).join('')}</ul>` : '';
    return `<article class="vm" data-vm="${esc(v.name)}" data-state="${esc(v.state)}">
      <div class="vm-head">
        <span class="vm-name">${esc(v.name)}</span>
        <span class="state" data-state="${esc(v.state)}" data-testid="state">${STATE_TEXT[v.state] ?? esc(v.state)}</span>
        <div class="vm-meta">
          ${plane ? `<span class="chip ${plane === 'tls' ? 'dim' : 'warn'}">data plane ${plane === 'tls' ? 'TLS' : 'plain TCP'}</span>` : ''}
          <span class="chip dim">${v.hosts.map(esc).join(' ⇄ ')}</span>
        </div>
      </div>
      ${why}
      <div class="pair">
        ${part(v, 0)}
        ${middle(v, primaryIdx, cps)}
        ${part(v, 1)}
      </div>
      ${resync(v)}
      <div class="lower">
        ${chart(v)}
        <div class="vm-events"><div class="box-head"><h3>Events</h3></div><ol>${[...v.events].reverse().slice(0, VM_EVENTS_SHOWN).map((r) => eventRow(r, false)).join('') || '<li><span class="ev-text">none yet</span></li>'}</ol></div>
      </div>
    </article>`;
  }

  function part(v, i) {
    const p = v.parts[i];
    const s = p.vm;
    const a = s?.agent;
    const role = !p.reachable ? 'unreachable' : a ? a.role : 'none';
    const roleText = !p.reachable ? 'not answering' : a ? a.role : s ? s.phase : 'no such VM';
    const head = `<div class="part-head"><span class="part-host"><span class="swatch h${i} ${i ? 'h1' : 'h0'}"></span>${esc(p.host)}</span><span class="role" data-role="${esc(role)}" data-testid="role">${esc(roleText)}</span></div>`;
    const unreach = p.reachable ? '' : `<div class="unreach">${esc(p.problem)}${s ? ' — last known below' : ''}</div>`;
    if (!a) {
      return `<div class="part" data-host="${esc(p.host)}" data-reachable="${p.reachable}">${head}${unreach}<dl class="facts"><dt>phase</dt><dd>${esc(s?.phase ?? '–')}</dd>${s?.detail ? `<dt>detail</dt><dd>${esc(s.detail)}</dd>` : ''}</dl></div>`;
    }
    const qemu = a.qemu.state === 'alive' ? `<span class="good">running</span> <span class="muted">pid ${a.qemuPid}</span>${a.qemu.paused ? ' <span class="warn">(stopped)</span>' : ''}` : `<span class="bad">${esc(a.qemu.state)}</span>`;
    const colo = a.qemu.checkpointAgeMs == null ? (a.role === 'alone' ? '<span class="warn">alone: no replication</span>' : '–') : `last checkpoint ${secs(a.qemu.checkpointAgeMs)} ago${a.qemu.inCheckpointMs != null ? ` <span class="warn">(one under way ${secs(a.qemu.inCheckpointMs)})</span>` : ''}`;
    const hbTimeout = s.heartbeatTimeoutMs ?? 500;
    const paths = a.peer.paths
      .map((x, k) => `<span class="path" data-up="${x.lastHeardMs != null && x.lastHeardMs < hbTimeout}" title="path ${k + 1}"><span class="dot"></span>${x.lastHeardMs == null ? 'never' : secs(x.lastHeardMs)}</span>`)
      .join('');
    const lease = !a.lease.witness
      ? '<span class="muted">no witness</span>'
      : a.lease.held
        ? `<span class="good">held</span>, ${secs(a.lease.remainingMs)} left`
        : `<span class="muted">not held</span>${a.lease.lastRefusal ? ` <span class="warn">(${esc(a.lease.lastRefusal)})</span>` : ''}`;
    const leaseMeter = a.lease.held && a.lease.remainingMs != null ? `<meter min="0" max="1000" low="250" high="500" optimum="1000" value="${Math.min(1000, a.lease.remainingMs)}"></meter>` : '';
    const witness = !a.lease.witness ? '' : witnessReachable(a, s.leaseMs ?? 1000) ? `answers${a.lease.witnessAnswerMs != null ? ` (${secs(a.lease.witnessAnswerMs)} ago)` : ''}` : '<span class="bad">does not answer</span>';
    const epoch = a.disk.epoch ? `${a.disk.epoch.gen} <span class="muted">by ${esc(a.disk.epoch.by)}</span>${a.disk.pending ? ` <span class="warn">→ ${a.disk.pending.gen} pending</span>` : ''}` : '<span class="bad">unknown</span>';
    const doing = a.work ? `<dt>doing</dt><dd class="warn">${esc(a.work.kind)}${a.work.phase ? ` (${esc(a.work.phase)})` : ''} for ${secs(a.work.runningMs)}</dd>` : a.waiting ? `<dt>waits</dt><dd>${esc(a.waiting)}</dd>` : '';
    return `<div class="part" data-host="${esc(p.host)}" data-reachable="${p.reachable}" data-protected="${a.protected}">
      ${head}${unreach}
      <dl class="facts">
        <dt>${a.protected ? 'protected' : 'not protected'}</dt><dd class="${a.protected ? 'good' : 'bad'}">${a.protected ? 'yes' : 'no'} <span class="muted">· ${esc(a.role)} for ${secs(a.roleForMs)}</span></dd>
        <dt>QEMU</dt><dd>${qemu}</dd>
        <dt>COLO</dt><dd>${colo}</dd>
        <dt>heartbeat</dt><dd><span class="paths">${paths}</span>${a.peer.rttMs != null ? ` <span class="muted">· rtt ${a.peer.rttMs} ms</span>` : ''}</dd>
        <dt>lease</dt><dd>${lease}${leaseMeter}</dd>
        ${witness ? `<dt>witness</dt><dd>${witness}</dd>` : ''}
        <dt>disk epoch</dt><dd>${epoch}</dd>
        ${doing}
      </dl>
    </div>`;
  }

  /** As the daemon's metrics say it (observe.ts: witnessReachable): the last answer within the query interval and some slack. */
  function witnessReachable(a, leaseMs) {
    if (a.lease.held) return true;
    if (a.lease.witnessAnswerMs == null) return !a.degraded.some((d) => d.startsWith('witness unreachable'));
    return a.lease.witnessAnswerMs <= 2 * leaseMs + Math.max(1000, leaseMs);
  }

  function middle(v, primaryIdx, cps) {
    const flowing = v.protected;
    const right = primaryIdx !== 1;
    // An arrow from the primary to the secondary while checkpoints flow; a broken line otherwise.
    const arrow = !flowing ? '' : right ? '<polygon points="92,9 84,4 84,14"/>' : '<polygon points="8,9 16,4 16,14"/>';
    const stats = v.parts.map((p) => p.vm?.pauseStats).find((s) => s && s.count > 0);
    const label = flowing ? 'checkpoints' : v.state === 'resyncing' ? 'resyncing' : 'no replication';
    return `<div class="link-mid">
      <span>${label}</span>
      <svg class="flow" viewBox="0 0 100 18" data-flowing="${flowing}" aria-hidden="true"><line x1="8" y1="9" x2="92" y2="9"/>${arrow}</svg>
      <span>${stats ? `${stats.count} in the last minute` : `${Math.max(...cps)} since the daemon started`}</span>
    </div>`;
  }

  function resync(v) {
    const p = v.parts.find((x) => x.vm?.agent?.work?.kind === 'reprotect');
    const w = p?.vm?.agent?.work;
    if (!w) return '';
    const m = w.mirror;
    const pct = m ? Math.min(100, (100 * m.offset) / Math.max(1, m.len)) : null;
    return `<div class="resync" data-testid="resync">
      <div class="line"><span class="pct">${pct == null ? '…' : `${pct.toFixed(0)}%`}</span><span>resync from <b>${esc(p.host)}</b> to <b>${esc(v.hosts.find((h) => h !== p.host))}</b>: ${esc(w.step ?? w.phase ?? '')}${m ? ` · ${mib(m.offset)} of ${mib(m.len)}` : ''} · ${secs(w.runningMs)}</span></div>
      <progress max="100" value="${pct ?? 0}"></progress>
    </div>`;
  }

  function chart(v) {
    const W = 640;
    const H = 180;
    const L = 46;
    const B = 18;
    const now = view.atMs;
    const series = v.parts.map((p, i) => ({ i, host: p.host, pts: (pauses.get(`${v.name}@${p.host}`) ?? []).filter(([at]) => at >= now - WINDOW_MS) }));
    const all = series.flatMap((s) => s.pts.map(([, ms]) => ms)).sort((a, b) => a - b);
    const p99 = all.length ? all[Math.min(all.length - 1, Math.ceil(0.99 * all.length) - 1)] : 0;
    const top = niceMax(Math.max(50, p99 * 1.25));
    const x = (at) => L + ((at - (now - WINDOW_MS)) / WINDOW_MS) * (W - L - 6);
    const y = (ms) => H - B - (Math.min(ms, top) / top) * (H - B - 8);
    const grid = [0, 0.25, 0.5, 0.75, 1]
      .map((f) => `<line class="grid" x1="${L}" x2="${W - 4}" y1="${y(top * f).toFixed(1)}" y2="${y(top * f).toFixed(1)}"/><text class="axis" x="${L - 6}" y="${(y(top * f) + 3).toFixed(1)}" text-anchor="end">${Math.round(top * f)} ms</text>`)
      .join('');
    const ticks = [5, 4, 3, 2, 1, 0].map((m) => `<text class="axis" x="${x(now - m * 60_000).toFixed(1)}" y="${H - 4}" text-anchor="middle">${m ? `−${m} min` : 'now'}</text>`).join('');
    const dots = series.map((s) => s.pts.map(([at, ms]) => `<circle class="h${s.i}" cx="${x(at).toFixed(1)}" cy="${y(ms).toFixed(1)}" r="2"/>`).join('')).join('');
    const empty = all.length ? '' : `<text class="nodata" x="${(L + W) / 2}" y="${(H - B) / 2}" text-anchor="middle">no checkpoint in the last 5 minutes</text>`;
    const stats = v.parts
      .map((p, i) => {
        const s = p.vm?.pauseStats;
        return s && s.count ? `<span><span class="swatch h${i}"></span>${esc(p.host)} p50 <b>${Math.round(s.p50Ms)} ms</b> · p99 <b>${Math.round(s.p99Ms)} ms</b></span>` : '';
      })
      .filter(Boolean)
      .join(' &nbsp; ');
    return `<div class="chart-box">
      <div class="box-head"><h3>Checkpoint pauses</h3><span class="stats">${stats || 'last minute: none'}</span></div>
      <svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="checkpoint pauses of ${esc(v.name)}, last 5 minutes">${grid}${ticks}${dots}${empty}</svg>
      <div class="legend">${v.parts.map((p, i) => `<span><span class="swatch h${i}"></span>${esc(p.host)}</span>`).join('')}<span>each dot: one checkpoint, how long the VM was stopped</span></div>
    </div>`;
  }

  function niceMax(x) {
    const steps = [50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000];
    return steps.find((s) => s >= x) ?? Math.ceil(x / 1000) * 1000;
  }

  function eventRow(r, withVm) {
    return `<li><span class="ev-time" title="${esc(r.at)}">${clock(r.at)}</span><span class="ev-host">${esc(r.host)}</span><span class="ev-kind" data-tone="${toneOf(r)}">${esc(r.kind)}</span><span class="ev-text">${withVm && r.vm ? `<span class="ev-vm">${esc(r.vm)}</span>` : ''}${esc(r.reason)}</span></li>`;
  }

  // ---- the connection ----

  function linkState() {
    const el = $('link');
    const age = Date.now() - lastFrameAt;
    if (!lastFrameAt) {
      el.dataset.state = 'connecting';
      $('link-text').textContent = 'connecting';
    } else if (age > STALE_MS) {
      el.dataset.state = 'stale';
      $('link-text').textContent = `no update for ${secs(age)}`;
    } else {
      el.dataset.state = 'live';
      $('link-text').textContent = 'live';
    }
    $('clock').textContent = view ? `Last update ${clock(new Date(view.atMs).toISOString())}.` : '';
  }

  function connect() {
    const es = new EventSource('/v1/overview/stream');
    es.addEventListener('view', (e) => {
      try {
        take(JSON.parse(e.data));
      } catch (err) {
        $('link-text').textContent = `a frame could not be read: ${err.message}`;
      }
    });
    // EventSource reconnects by itself after a dropped connection, but not after an error answer (a daemon
    // restarting, a proxy that cannot reach it): then a new one, a little later. The link state says so meanwhile.
    es.addEventListener('error', () => {
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
    });
  }

  connect();
  setInterval(linkState, 250);
})();
