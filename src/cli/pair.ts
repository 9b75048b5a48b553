import { prepareForConfig } from '../lab/runtime.js';
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import { up } from '../pair/up.js';
import { pairStatus, type PairStatus } from '../pair/status.js';
import { down } from '../pair/down.js';
import { failover } from '../pair/failover.js';
import { resync } from '../pair/resync.js';
import { createProgress } from '../util/progress.js';
import { print } from './output.js';
import { loadHostFile } from '../config/host.js';
import { hostsToAsk, upOnHosts, vmOnHosts, vmsOnHosts, vmLine, downOnHosts, failoverOnHosts, resyncOnHosts } from '../daemon/orchestrate.js';
import { hostFileOf } from './host.js';
import { LockstepError } from '../util/errors.js';
import { watchStatus } from './watch.js';

/** `status NAME`'s exit code when the VM is not protected (0: protected; 1: an error). */
export const EXIT_NOT_PROTECTED = 3;

const CONFIG_HELP = 'the pair\'s YAML config (see examples/one-host.yaml)';

/**
 * What the agents spent on a takeover, as status can know it: the decision's time after the VM's last checkpoint (the
 * detection), then the procedure. What a client felt is longer (its requests wait from their own last answer); only a
 * client can measure that (npm run bench, the demo).
 */
function failoverTiming(f: NonNullable<PairStatus['lastFailover']>): string {
  const proc = `the procedure took ${(f.ms / 1000).toFixed(2)} s`;
  return f.sinceCheckpointMs === undefined ? proc : `decided ${(f.sinceCheckpointMs / 1000).toFixed(2)} s after the VM's last checkpoint, then ${proc}`;
}

function formatStatus(s: PairStatus): string {
  if (s.nodes.length === 0) return `pair "${s.name}": not started (lockstep up -c FILE starts it)`;
  const lines = [`pair "${s.name}": ${s.protected ? 'PROTECTED' : s.running ? 'NOT PROTECTED' : 'stopped'}${s.accel ? ` (${s.accel.toUpperCase()})` : ''}`];
  if (s.upMs !== null && s.protected) lines.push(`  protected since ${s.protectedAt}${s.lastResync ? ' (resync)' : ` (up took ${(s.upMs / 1000).toFixed(1)} s)`}`);
  if (s.lastFailover) {
    const f = s.lastFailover;
    lines.push(`  last failover ${f.at}: ${f.from} → ${f.to} (${f.reason}): ${failoverTiming(f)}`);
  }
  if (s.lastResync) {
    const r = s.lastResync;
    const f = s.lastFailover;
    const window = f && Date.parse(r.at) > Date.parse(f.at) ? `; unprotected for ${((Date.parse(r.at) - Date.parse(f.at)) / 1000).toFixed(1)} s after the failover` : '';
    lines.push(`  last resync ${r.at}: ${r.from} → ${r.to} in ${(r.ms / 1000).toFixed(1)} s (mirror ${(r.mirrorBytes / 2 ** 20).toFixed(0)} MiB in ${(r.mirrorMs / 1000).toFixed(1)} s, VM stopped ${r.stoppedMs.toFixed(0)} ms)${window}`);
  }
  if (s.lastRestart) lines.push(`  last restart ${s.lastRestart.at}: the whole pair was down; ${s.lastRestart.node} started the VM alone from ${s.lastRestart.disk}`);
  for (const n of s.nodes) {
    const w = n.agent?.work;
    if (!w || w.kind !== 'reprotect') continue;
    const pct = w.mirror ? ` ${((100 * w.mirror.offset) / Math.max(1, w.mirror.len)).toFixed(0)}% of ${(w.mirror.len / 2 ** 20).toFixed(0)} MiB mirrored;` : '';
    lines.push(`  RESYNC in progress: ${n.name} → ${n.agent!.peer.name} for ${(w.runningMs / 1000).toFixed(1)} s;${pct} ${w.step ?? w.phase ?? ''}`);
  }
  // Everything an agent sees amiss, once per pair (both nodes often see the same).
  const degraded = [...new Set(s.nodes.flatMap((n) => (n.agent?.degraded ?? []).map((d) => `${n.name}: ${d}`)))];
  for (const d of degraded) lines.push(`  ! ${d}`);
  if (!s.protected && s.lastFailover && s.running) lines.push(`  to protect the VM again: lockstep resync -c FILE`);
  lines.push('  node  role       pid      run state   COLO mode   migration');
  for (const n of s.nodes) {
    lines.push(
      `  ${n.name.padEnd(5)} ${n.role.padEnd(10)} ${String(n.pid ?? '-').padEnd(8)} ${(n.runState ?? (n.alive ? '?' : 'not running')).padEnd(11)} ${(n.colo?.mode ?? '-').padEnd(11)} ${n.migration ?? '-'}`,
    );
    if (n.error) lines.push(`        ${n.error}`);
    if (n.agent === null) lines.push('        agent: not running');
    else if (n.agent) {
      const a = n.agent;
      const seen = a.peer.paths.map((p, i) => `path ${i + 1} ${p.lastHeardMs === null ? 'never' : `${p.lastHeardMs} ms ago`}`).join(', ');
      const disk = a.disk.epoch ? `disk epoch ${a.disk.epoch.gen}/${a.disk.epoch.by}` : 'disk epoch unknown';
      const checkpoint = a.qemu.checkpointAgeMs === null ? '' : `; last checkpoint ${a.qemu.checkpointAgeMs} ms ago`;
      lines.push(
        `        agent: ${a.role}${a.protected ? ' (protected)' : ''}, ${disk}${checkpoint}; heartbeat from ${a.peer.name}: ${seen}; rtt ${a.peer.rttMs ?? '-'} ms` +
          (a.lease.witness ? `; lease ${a.lease.held ? `held (${a.lease.remainingMs} ms left)` : 'not held'}` : ''),
      );
      if (a.work) lines.push(`        doing: ${a.work.kind}${a.work.phase ? ` (${a.work.phase})` : ''} for ${(a.work.runningMs / 1000).toFixed(1)} s: ${a.work.why}`);
      if (a.lastDecision) lines.push(`        last decision: ${a.lastDecision}`);
      if (a.waiting && !a.work) lines.push(`        waiting: ${a.waiting}`);
    }
  }
  return lines.join('\n');
}

/** Said by every up whose VM runs its data plane without TLS (replication.tls: false). */
const PLAIN_DATA_PLANE_WARNING =
  "WARNING: replication.tls is off: this VM's migration stream, disk writes and packets cross the replication network " +
  'in plain TCP; anyone who reaches its ports can read them and write its secondary\'s disk.';

export function registerPairCommands(program: Command): void {
  program
    .command('up')
    .summary('start a COLO-protected VM: -f on two hosts\' daemons, or -c both nodes from here')
    .description(
      'With -f VM-FILE (two real hosts, each running lockstepd): hands the VM\'s definition to the daemons of the two ' +
        'hosts it names, has the first host start the VM alone from its image, and waits while the agents protect it: ' +
        'a new secondary on the other host, its disk synced over the replication network. Nothing is read from the ' +
        'other host\'s files. Run it on either host, or on any host that both trust. ' +
        'With -c CONFIG (both nodes on this machine, or the lab): starts the secondary, then the primary, the documented ' +
        'QMP start-up steps on each, and returns once both report COLO running. The VMs keep running after this command ends.\n\n' +
        "The data plane (the migration stream with the VM's memory, its disk writes over NBD, the proxy's packets) runs " +
        "TLS with a key only the VM's two hosts have. replication.tls: false turns it off, and is safe only on a " +
        'replication network nobody else can reach: without it, anyone who reaches those ports reads the VM\'s memory ' +
        'and traffic, writes its secondary\'s disk, and can feed a waiting secondary a state of their own.',
    )
    .option('-f, --file <vm-file>', 'the VM file: the VM and its two hosts (hosts: [primary, secondary])')
    .option('-c, --config <file>', CONFIG_HELP)
    .option('--host-file <file>', 'with -f: this host\'s settings (default: $LOCKSTEP_HOST_FILE, else /etc/lockstep/host.yaml)')
    .option('--adopt-newest', 'with -c: after a failover, first copy the survivor\'s disk (the newest data) over vm.disk.image')
    .option('--json', 'print the resulting status as JSON')
    .action(async (opts: { file?: string; config?: string; hostFile?: string; adoptNewest?: boolean; json?: boolean }) => {
      if (!!opts.file === !!opts.config) throw new LockstepError('give either -f VM-FILE (two hosts with daemons) or -c CONFIG (both nodes from here)', { hint: 'lockstep up --help explains both' });
      const progress = createProgress(process.stderr, { quiet: opts.json === true });

      if (opts.file) {
        const host = loadHostFile(hostFileOf(opts.hostFile));
        const r = await upOnHosts(host, opts.file, { onStep: (m) => progress.step(m), onUpdate: (m) => progress.update(m) });
        progress.done(`VM "${r.name}" protected in ${(r.ms / 1000).toFixed(1)} s`);
        if (!r.dataPlaneTls) process.stderr.write(`${PLAIN_DATA_PLANE_WARNING}\n`);
        print(opts.json, r, () => [`VM "${r.name}": PROTECTED`, ...r.hosts.map((h) => `  ${vmLine(h, r.status[h])}`), '', `see it with: lockstep status ${r.name}`].join('\n'));
        return;
      }
      const c = loadConfig(opts.config!);
      await prepareForConfig(c, { onStep: (m) => progress.step(m), onUpdate: (m) => progress.update(m) });
      const r = await up(c, { detached: true, adoptNewest: opts.adoptNewest, onStep: (m) => progress.step(m), onUpdate: (m) => progress.update(m) });
      progress.done(`pair "${c.name}" protected in ${((r.state.upMs ?? 0) / 1000).toFixed(1)} s`);
      if (!c.replication.tls) process.stderr.write(`${PLAIN_DATA_PLANE_WARNING}\n`);
      const st = await pairStatus(c);
      print(opts.json, st, () => {
        const fw = r.state.forwards.map((f) => `  guest port ${f.guestPort} → ${f.hostAddr}:${f.hostPort}`);
        return [formatStatus(st), ...(fw.length ? ['', 'forwarded:', ...fw] : []), '', `stop it with: lockstep down -c ${opts.config}`].join('\n');
      });
    });

  program
    .command('status')
    .summary('whether a VM is protected, and what each node does')
    .description(
      'lockstep status NAME asks the daemons of this host and of every host it trusts (or --host H only) how they run ' +
        'VM NAME; lockstep status without NAME lists every VM they run or keep, one line each.\n\n' +
        "lockstep status -c CONFIG shows a pair started from here: each node's role, QEMU pid, run state and COLO state.\n\n" +
        `Exit code: 0 protected (without NAME: every VM), ${EXIT_NOT_PROTECTED} not protected (without NAME: some VM), 1 an error ` +
        '(a host cannot be asked, bad input).',
    )
    .argument('[vm]', 'the VM\'s name (with daemons)')
    .option('-c, --config <file>', CONFIG_HELP)
    .option('--host <name>', 'ask this host only')
    .option('--host-file <file>', 'this host\'s settings (default: $LOCKSTEP_HOST_FILE, else /etc/lockstep/host.yaml)')
    .option('-w, --watch', 'the live view, redrawn every second until Ctrl-C (with daemons): every VM (or NAME) with its two hosts, why it is not protected, resync progress, checkpoint pauses, recent events')
    .option('--interval <seconds>', 'with --watch: redraw this often', '1')
    .option('--count <n>', 'with --watch: stop after this many views')
    .option('--json', 'print as JSON (with --watch: one view per line)')
    .action(async (vm: string | undefined, opts: { config?: string; host?: string; hostFile?: string; json?: boolean; watch?: boolean; interval: string; count?: string }) => {
      if (vm && opts.config) throw new LockstepError('give either a VM name (with daemons) or -c CONFIG (a pair started from here), not both', { hint: 'lockstep status --help' });
      if (opts.watch) {
        if (opts.config) throw new LockstepError('--watch follows VMs run by daemons, not a pair started with -c', { hint: 'lockstep status NAME --watch' });
        const intervalMs = Number(opts.interval) * 1000;
        const count = opts.count === undefined ? undefined : Number(opts.count);
        if (!(intervalMs >= 200 && intervalMs <= 3_600_000)) throw new LockstepError(`--interval ${opts.interval}: expected seconds between 0.2 and 3600`);
        if (count !== undefined && !(Number.isInteger(count) && count > 0)) throw new LockstepError(`--count ${opts.count}: expected a whole number above 0`);
        await watchStatus(loadHostFile(hostFileOf(opts.hostFile)), { vm, only: opts.host, intervalMs, count, json: opts.json === true, out: process.stdout });
        return;
      }
      if (!vm && !opts.config) {
        const all = await vmsOnHosts(loadHostFile(hostFileOf(opts.hostFile)), { only: opts.host });
        print(opts.json, all, () =>
          [
            ...(all.vms.length === 0 ? ['no VMs (lockstep up -f FILE starts one)'] : []),
            ...all.vms.map((v) => `${v.name.padEnd(16)} ${(v.protected ? 'PROTECTED' : 'NOT PROTECTED').padEnd(14)} ${v.status.map((s) => vmLine(s.host, s.status)).join('; ')}`),
            ...all.unreachable.map((u) => `host ${u.host}: cannot ask: ${u.error}`),
          ].join('\n'),
        );
        if (all.unreachable.length) process.exitCode = 1;
        else if (all.vms.some((v) => !v.protected)) process.exitCode = EXIT_NOT_PROTECTED;
        return;
      }
      if (opts.config) {
        const c = loadConfig(opts.config);
        const st = await pairStatus(c);
        print(opts.json, st, () => formatStatus(st));
        if (!st.protected) process.exitCode = EXIT_NOT_PROTECTED;
        return;
      }
      const host = loadHostFile(hostFileOf(opts.hostFile));
      const answers = await vmOnHosts(host, vm!, { only: opts.host });
      if (answers.length === 0) {
        const asked = hostsToAsk(host, opts.host);
        if (asked.length === 0) throw new LockstepError('no daemon to ask: none runs on this host, and it trusts no other host', { hint: 'start lockstepd here (systemctl start lockstepd), or trust the VM\'s hosts: lockstep host trust' });
        throw new LockstepError(`no host knows a VM "${vm}" (asked: ${asked.join(', ')})`, { hint: 'start it with lockstep up -f FILE' });
      }
      const isProtected = answers.length === 2 && answers.every((a) => a.status?.agent?.protected);
      const plane = answers.find((a) => a.status?.dataPlane)?.status?.dataPlane;
      print(opts.json, { name: vm, protected: isProtected, hosts: answers }, () =>
        [
          `VM "${vm}": ${isProtected ? 'PROTECTED' : 'NOT PROTECTED'}`,
          ...(plane ? [`  data plane: ${plane === 'tls' ? "TLS with the pair's key" : 'plain TCP (replication.tls: false): readable and writable by anyone on the replication network'}`] : []),
          ...answers.flatMap((a) => [
            `  ${a.error ? `${a.host}: cannot ask: ${a.error}` : vmLine(a.host, a.status)}`,
            ...(a.status?.agent?.degraded ?? []).map((d) => `    ! ${d}`),
            ...(a.status?.agent?.lastDecision ? [`    last decision: ${a.status.agent.lastDecision}`] : []),
            ...(a.status?.agent?.waiting && !a.status.agent.work ? [`    waiting: ${a.status.agent.waiting}`] : []),
          ]),
        ].join('\n'),
      );
      if (answers.some((a) => a.error)) process.exitCode = 1;
      else if (!isProtected) process.exitCode = EXIT_NOT_PROTECTED;
    });

  program
    .command('failover')
    .summary('make one node carry the VM on alone')
    .description(
      'With NAME (two hosts with daemons): --to names the protected secondary that takes the VM over; the other ' +
        'host\'s QEMU is ended, the agents fail over as after any loss of the primary, then re-protect the VM. ' +
        'With -c (a pair started from here): run the documented failover on the survivor: "Secondary Failover" when the ' +
        'primary is gone, "Primary Failover" when the secondary is gone. With both nodes running, --to names the node ' +
        'that carries on; the other is stopped first. With the node agents running, they do every failover: --to then ' +
        'ends the other node\'s QEMU and waits for the agents.',
    )
    .argument('[vm]', 'the VM\'s name (with daemons)')
    .option('-c, --config <file>', CONFIG_HELP)
    .option('--to <node>', 'the node that carries on (needed with NAME, and when both run)')
    .option('--host-file <file>', 'this host\'s settings (default: $LOCKSTEP_HOST_FILE, else /etc/lockstep/host.yaml)')
    .option('--json', 'print the result as JSON')
    .action(async (vm: string | undefined, opts: { config?: string; to?: string; hostFile?: string; json?: boolean }) => {
      if (!!vm === !!opts.config) throw new LockstepError('give either a VM name (with daemons) or -c CONFIG (a pair started from here)', { hint: 'lockstep failover --help' });
      const progress = createProgress(process.stderr, { quiet: opts.json === true });
      if (vm) {
        if (!opts.to) throw new LockstepError('--to HOST is needed: the protected secondary that takes the VM over', { hint: `see lockstep status ${vm}` });
        const r = await failoverOnHosts(loadHostFile(hostFileOf(opts.hostFile)), vm, opts.to, { onStep: (m) => progress.step(m) });
        progress.done();
        print(opts.json, r, () => `${r.to} carries VM "${r.name}" on (${r.ms.toFixed(0)} ms); the agents protect it again on ${r.from}: see lockstep status ${r.name}`);
        return;
      }
      const c = loadConfig(opts.config!);
      const r = await failover(c, { to: opts.to, onStep: (m) => progress.step(m) });
      progress.done();
      print(opts.json, r, () => `${r.to} carries the VM on (${r.procedure}, ${r.ms.toFixed(0)} ms); it is not protected until a new secondary joins`);
    });

  program
    .command('resync')
    .summary('protect the VM again after a failover: a new secondary, synced from the survivor')
    .description(
      'after a failover the VM runs alone on the survivor. resync starts a new secondary on the other node (a fresh ' +
        'replica: that node\'s old disk is stale and is not read), mirrors the survivor\'s disk to it while the VM runs, ' +
        'then stops the VM for a moment and re-enters COLO ("resume replication" in the COLO documentation). ' +
        'It never resyncs the wrong way: the node whose disk epoch is older is always the target. On failure the ' +
        'survivor runs on alone, as before, and resync can be run again.\n\n' +
        'With NAME (two hosts with daemons): the host that runs the VM alone is asked to resync the other now. Its ' +
        'agent does it under the same rules as its own resyncs (with agents.reprotect on, which is the default, they ' +
        'resync by themselves: this only skips their wait between attempts). If it cannot begin (the other host\'s ' +
        'daemon is down, its disk is newer, no lease), the error says what it waits for; the request stands. ' +
        'With -c: a pair started from here, without agents.',
    )
    .argument('[vm]', 'the VM\'s name (with daemons)')
    .option('-c, --config <file>', CONFIG_HELP)
    .option('--host-file <file>', 'this host\'s settings (default: $LOCKSTEP_HOST_FILE, else /etc/lockstep/host.yaml)')
    .option('--json', 'print the result as JSON')
    .action(async (vm: string | undefined, opts: { config?: string; hostFile?: string; json?: boolean }) => {
      if (!!vm === !!opts.config) throw new LockstepError('give either a VM name (with daemons) or -c CONFIG (a pair started from here)', { hint: 'lockstep resync --help' });
      const progress = createProgress(process.stderr, { quiet: opts.json === true });
      if (vm) {
        const r = await resyncOnHosts(loadHostFile(hostFileOf(opts.hostFile)), vm, { onStep: (m) => progress.step(m), onUpdate: (m) => progress.update(m) });
        progress.done();
        print(opts.json, r, () =>
          r.alreadyProtected ? `VM "${r.name}" is protected already (${r.from} primary, ${r.to} secondary): nothing to do` : `protected again: ${r.from} primary, ${r.to} secondary, ${(r.ms / 1000).toFixed(1)} s after the request`,
        );
        return;
      }
      const c = loadConfig(opts.config!);
      const r = await resync(c, {
        onStep: (m) => progress.step(m),
        onUpdate: (m) => progress.update(m),
        onMirror: (p) => progress.update(`${((100 * p.offset) / Math.max(p.len, 1)).toFixed(0)}% (${(p.offset / 2 ** 20).toFixed(0)} of ${(p.len / 2 ** 20).toFixed(0)} MiB)`),
      });
      progress.done();
      print(opts.json, r, () =>
        `protected again: ${r.from} primary, ${r.to} secondary, ${(r.ms / 1000).toFixed(1)} s in all ` +
        `(mirror ${(r.mirrorBytes / 2 ** 20).toFixed(0)} MiB in ${(r.mirrorMs / 1000).toFixed(1)} s, VM stopped ${r.stoppedMs.toFixed(0)} ms; disk generation ${r.generation})`,
      );
    });

  program
    .command('down')
    .summary('stop a VM cleanly: NAME on its hosts\' daemons, or -c a pair started from here')
    .description(
      'stop both VMs cleanly: the agents first, then the secondary, then the primary (whose disk holds every ' +
        'acknowledged write). Disks are kept. With NAME: through the daemons of the VM\'s two hosts.',
    )
    .argument('[vm]', 'the VM\'s name (with daemons)')
    .option('-c, --config <file>', CONFIG_HELP)
    .option('--host-file <file>', 'this host\'s settings (default: $LOCKSTEP_HOST_FILE, else /etc/lockstep/host.yaml)')
    .option('--json', 'print the result as JSON')
    .action(async (vm: string | undefined, opts: { config?: string; hostFile?: string; json?: boolean }) => {
      if (!!vm === !!opts.config) throw new LockstepError('give either a VM name (with daemons) or -c CONFIG (a pair started from here)', { hint: 'lockstep down --help' });
      const progress = createProgress(process.stderr, { quiet: opts.json === true });
      if (vm) {
        const r = await downOnHosts(loadHostFile(hostFileOf(opts.hostFile)), vm, { onStep: (m) => progress.step(m) });
        progress.done();
        print(opts.json, r, () => r.hosts.map((h) => `${h.host} (${h.role ?? 'no agent'}): ${h.qemu}`).join('\n'));
        return;
      }
      const c = loadConfig(opts.config!);
      const r = await down(c, (m) => progress.step(m));
      progress.done();
      print(opts.json, r, () =>
        r.nodes.length === 0 ? `pair "${c.name}" was not started` : r.nodes.map((n) => `${n.role} ${n.name}: ${n.result}`).join('\n'),
      );
    });
}
