/**
 * The faults of a schedule, applied to the simulated world at their time,
 * and healed after their duration. What each does to QEMU and the links
 * follows qemu.ts's sources: a killed QEMU on a live host resets its
 * connections, a host that loses power (or is paused) does not; a paused host
 * stops everything on it, its kernel included, and goes on where it was.
 */
import type { World } from './world.js';
import type { Fault } from './schedule-types.js';

export class Faults {
  constructor(private readonly w: World) {}

  schedule(faults: Fault[]): void {
    for (const f of faults) this.w.at(f.at, () => this.apply(f));
  }

  private apply(f: Fault): void {
    const w = this.w;
    w.trace(`FAULT ${JSON.stringify(f)}`);
    w.check.faultApplied(f);
    switch (f.kind) {
      case 'kill-qemu': {
        const h = w.hosts[f.node];
        const kill = () => h.qemu && w.qemu.end(h.qemu, h.up, 'kill -9');
        if (h.paused) h.onResume.push(kill);
        else kill();
        return;
      }
      case 'freeze-qemu': {
        const q = w.hosts[f.node].qemu;
        if (!q) return;
        q.frozen = true;
        w.after(f.ms, () => {
          q.frozen = false;
          w.qemu.answerQueries(q);
          w.qemu.resumeStalled(f.ms);
        });
        return;
      }
      case 'kill-agent': {
        w.agents.kill(f.node, 'kill -9');
        w.after(f.ms, () => {
          const h = w.hosts[f.node];
          if (h.up && !h.agent) w.agents.start(f.node);
        });
        return;
      }
      case 'power-loss':
      case 'reboot':
      case 'host-gone': {
        const h = w.hosts[f.node];
        if (!h.up) return;
        h.up = false;
        h.paused = false;
        h.onResume = [];
        w.agents.kill(f.node, f.kind);
        for (const q of [h.qemu, h.prepared]) if (q) w.qemu.end(q, f.kind === 'reboot', f.kind);
        if (f.kind === 'host-gone') {
          h.gone = true;
          return;
        }
        w.after(f.ms, () => {
          h.up = true;
          w.qemu.deliverSilentResets();
          w.agents.start(f.node);
        });
        return;
      }
      case 'host-pause': {
        const h = w.hosts[f.node];
        if (!h.up || h.paused) return;
        h.paused = true;
        w.after(f.ms, () => {
          if (!h.up || !h.paused) return;
          h.paused = false;
          // Its agent's event loop ran nothing meanwhile, as if blocked: it sees what it missed from its next tick on
          // (a timer may fire before the QMP data is read), and is judged from then, as a blocked agent is.
          if (h.agent) h.agent.blockedUntil = Math.max(h.agent.blockedUntil, w.now);
          for (const fn of h.onResume.splice(0)) fn();
          for (const q of [h.qemu, h.prepared]) if (q) w.qemu.answerQueries(q);
          w.qemu.resumeStalled(f.ms);
          w.qemu.deliverSilentResets();
        });
        return;
      }
      case 'cut':
        for (const l of f.links) w.net.cut(l, f.from);
        w.after(f.ms, () => {
          for (const l of f.links) w.net.heal(l, f.from);
        });
        return;
      case 'garbage':
        // The link refuses the line and closes the connection: what was in flight is lost; the ends reconnect.
        w.net.reset(f.link);
        return;
      case 'slow-link': {
        const l = w.net.links[f.link];
        l.delayMs = f.delayMs;
        w.after(f.ms, () => (l.delayMs = 0));
        return;
      }
      case 'witness-down':
        if (!w.sched.witness) return;
        w.witness.down();
        w.after(f.ms, () => w.witness.start());
        return;
      case 'witness-restart':
        if (!w.sched.witness) return;
        w.witness.down();
        w.witness.start();
        return;
      case 'witness-amnesia':
        if (!w.sched.witness) return;
        w.witness.down();
        w.witness.start(true);
        return;
      case 'witness-slow':
        w.witness.slowMs = f.delayMs;
        w.after(f.ms, () => (w.witness.slowMs = 0));
        return;
      case 'witness-lossy':
        w.witness.lossy = true;
        w.after(f.ms, () => (w.witness.lossy = false));
        return;
      case 'client-idle':
        w.client.idleUntil = Math.max(w.client.idleUntil, w.now + f.ms);
        return;
      case 'reset-replication': {
        const s = w.qemu.session;
        if (s && !s.over && w.net.up('replication')) {
          w.qemu.breakEnd(s, s.pq, 'the replication connection was reset');
          w.qemu.breakEnd(s, s.sq, 'the replication connection was reset');
        }
        return;
      }
      case 'disk-errors':
        w.hosts[f.node].diskErrors = { until: w.now + f.ms, p: f.p };
        return;
      case 'record-lost': {
        const h = w.hosts[f.node];
        h.record = { state: f.how };
        // Its agent reads the record when it starts: it is restarted (as after a reboot of the agent's host).
        if (h.up && h.agent) {
          w.agents.kill(f.node, 'restarted after its disk record was lost');
          w.after(w.rng.agent.range(200, 2000), () => h.up && !h.agent && w.agents.start(f.node));
        }
        return;
      }
      case 'qmp-late':
        w.hosts[f.node].qmpLate = { until: w.now + f.ms };
        return;
      case 'slow-disk':
        w.hosts[f.node].slowDisk = { until: w.now + f.ms, delayMs: f.delayMs };
        return;
    }
  }
}
