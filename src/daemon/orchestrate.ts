/**
 * What the CLI does with the daemons of a VM's two hosts: `up -f` hands the
 * VM's definition to both (each keeps its copy), has the secondary's host
 * start its agent and the primary's host start the VM alone, then follows
 * both until the agents say the VM is protected (the first sync goes over
 * the replication network); `status NAME` asks every host it knows.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { HostConfig } from '../config/host.js';
import { parseVmFile, choosePortBlock, portsOfVmFile, PORT_BLOCK } from '../config/vm.js';
import { LockstepError } from '../util/errors.js';
import { pollUntil } from '../util/time.js';
import { ApiClient } from './client.js';
import type { VmStatus } from './api-types.js';
import type { PlacedVm } from './vm-host.js';

/** This host's daemon over its socket, another over TLS. */
export function clientFor(host: HostConfig, name: string, timeoutMs?: number): ApiClient {
  return name === host.name ? ApiClient.local(host, timeoutMs) : ApiClient.remote(host, name, timeoutMs);
}

export interface UpOnHostsResult {
  name: string;
  hosts: [string, string];
  ms: number;
  status: Record<string, VmStatus>;
  /** Whether the VM's data plane runs TLS (replication.tls), as the VM file says. */
  dataPlaneTls: boolean;
}

const POLL_MS = 500;

/** One line of what a host is doing with the VM, for progress. */
export function vmLine(host: string, s: VmStatus | undefined): string {
  if (!s) return `${host}: no such VM`;
  const a = s.agent;
  if (s.phase !== 'running' || !a) return `${host}: ${s.phase}${s.detail ? ` (${s.detail})` : ''}`;
  const work = a.work ? `, ${a.work.kind}${a.work.step ? `: ${a.work.step}` : ''}${a.work.mirror ? ` ${((100 * a.work.mirror.offset) / Math.max(1, a.work.mirror.len)).toFixed(0)}%` : ''}` : '';
  return `${host}: ${a.role}${a.protected ? ' (protected)' : ''}${work}`;
}

export async function upOnHosts(host: HostConfig, file: string, o: UpOptions = {}): Promise<UpOnHostsResult> {
  const step = o.onStep ?? (() => {});
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new LockstepError(`cannot read the VM file ${file}: ${(err as Error).message}`, { hint: 'pass it with -f FILE' });
  }
  const vm = parseVmFile(text, file);
  const [p, s] = vm.hosts;
  const clients = { [p]: clientFor(host, p), [s]: clientFor(host, s) };
  step(`asking hosts ${p} and ${s} where they listen`);
  const infos = Object.fromEntries(await Promise.all(vm.hosts.map(async (h) => [h, await clients[h]!.host()] as const)));
  for (const h of vm.hosts) if (infos[h]!.name !== h) throw new LockstepError(`the daemon reached as "${h}" says it is "${infos[h]!.name}"`, { hint: 'fix the peers in this host file' });
  const current = await Promise.all(vm.hosts.map((h) => clients[h]!.vm(vm.name)));
  if (current.every((c) => c?.phase === 'stopped')) {
    if (!vm.agents.reprotect) {
      throw new LockstepError(`VM "${vm.name}" is stopped, and with agents.reprotect off its agents do not restart it from the newest disk by themselves`, {
        hint: 'turn agents.reprotect on in the VM file, or start it again from scratch (lockstep down does not remove a definition yet)',
      });
    }
    return { ...(await startStopped(vm.name, vm.hosts, clients, o, vm.replication.resyncTimeoutMs)), dataPlaneTls: vm.replication.tls };
  }
  for (const [i, cur] of current.entries()) {
    if (cur && cur.phase !== 'defined') throw new LockstepError(`VM "${vm.name}" is ${cur.phase} on host ${vm.hosts[i]} already`, { hint: cur.phase === 'stopped' ? `it is stopped there but not on the other host: see lockstep status ${vm.name}` : `see lockstep status ${vm.name}` });
  }
  // The ports the VM file gives, else the lowest block free on both hosts (each daemon checks again, and records them).
  const ports = vm.ports ? portsOfVmFile(vm) : choosePortBlock(vm.hosts.map((h) => infos[h]!.ports));
  if (!ports) {
    throw new LockstepError(`hosts ${p} and ${s} have no block of ${PORT_BLOCK} ports free on both for VM "${vm.name}"`, {
      hint: vm.hosts.map((h) => `${h}: ${infos[h]!.ports.first}-${infos[h]!.ports.last}, ${infos[h]!.ports.used.length} in use`).join('; ') + ': widen ports in the host files, or end a VM',
    });
  }
  const placed: PlacedVm = {
    vm,
    hosts: Object.fromEntries(vm.hosts.map((h) => [h, { replication: infos[h]!.addresses.replication, heartbeat: infos[h]!.addresses.heartbeat, heartbeatPort: infos[h]!.addresses.heartbeatPort }])),
    run: crypto.randomUUID(),
    secret: vm.agents.secret ?? crypto.randomBytes(24).toString('base64url'),
    ports,
    definedAt: new Date().toISOString(),
  };
  step(`handing the definition of "${vm.name}" to ${p} and ${s}`);
  for (const h of vm.hosts) await clients[h]!.defineVm(vm.name, placed);
  const t0 = performance.now();
  step(`starting: the agent on ${s}, the VM alone on ${p}`);
  await clients[s]!.startVm(vm.name);
  await clients[p]!.startVm(vm.name);
  step('protecting it: a new secondary on ' + s + ', synced from ' + p + ' over the replication network');
  // With re-protection off the agents protect only when asked: the first protection is asked for here.
  if (!vm.agents.reprotect) await askResyncWhenAlone(clients[p]!, vm.name, p);
  return { ...(await followUntilProtected(vm.name, vm.hosts, clients, o, t0, vm.replication.resyncTimeoutMs)), dataPlaneTls: vm.replication.tls };
}

/**
 * A VM stopped by down on both hosts: the hosts keep its definition, and
 * each its disk. Only the agents start; with no VM running anywhere, their
 * rule restarts it from the newest disk, then they protect it again.
 */
async function startStopped(name: string, hosts: [string, string], clients: Record<string, ApiClient>, o: UpOptions, resyncTimeoutMs: number): Promise<Omit<UpOnHostsResult, 'dataPlaneTls'>> {
  o.onStep?.(`VM "${name}" was stopped: starting the agents on ${hosts.join(' and ')} (the definition the hosts keep is used); they restart it from the newest disk`);
  const t0 = performance.now();
  for (const h of hosts) await clients[h]!.startVm(name);
  return followUntilProtected(name, hosts, clients, o, t0, resyncTimeoutMs);
}

type UpOptions = { onStep?: (m: string) => void; onUpdate?: (m: string) => void; timeoutMs?: number };

async function followUntilProtected(name: string, hosts: [string, string], clients: Record<string, ApiClient>, o: UpOptions, t0: number, resyncTimeoutMs: number): Promise<Omit<UpOnHostsResult, 'dataPlaneTls'>> {
  const timeoutMs = o.timeoutMs ?? resyncTimeoutMs + 300_000;
  let shown = '';
  const read = async () => {
    const st: Record<string, VmStatus> = {};
    for (const h of hosts) {
      const x = await clients[h]!.vm(name);
      if (!x) throw new LockstepError(`host ${h} forgot VM "${name}"`, { hint: 'see its log: journalctl -u lockstepd' });
      if (x.phase === 'failed') throw new LockstepError(`starting VM "${name}" failed on host ${h}: ${x.detail ?? 'no detail'}`, { hint: `see its log (journalctl -u lockstepd) and ${name}'s agent.log there` });
      st[h] = x;
    }
    const line = hosts.map((h) => vmLine(h, st[h])).join('; ');
    if (line !== shown) o.onUpdate?.(line);
    shown = line;
    return st;
  };
  const r = await pollUntil(read, (st) => hosts.every((h) => st[h]!.agent?.protected), { timeoutMs, intervalMs: POLL_MS });
  if (!r.done) throw new LockstepError(`VM "${name}" was not protected within ${Math.round(timeoutMs / 1000)} s: ${shown}`, { hint: `see lockstep status ${name}` });
  return { name, hosts, ms: performance.now() - t0, status: r.last };
}

/** VM `name`'s agent on `host`, as its daemon says (undefined: none, or no such VM). */
function agentOn(host: HostConfig, on: string, name: string): () => Promise<VmStatus['agent'] | undefined> {
  return async () => (await clientFor(host, on, 5000).vm(name))?.agent ?? undefined;
}

/** The hosts a command asks: `only`, else this host (if its daemon runs: a management host has none) and every peer. */
export function hostsToAsk(host: HostConfig, only?: string): string[] {
  return only ? [only] : [...(fs.existsSync(host.api.socket) ? [host.name] : []), ...Object.keys(host.peers)];
}

/** The VM as every host this one knows (itself, its peers) runs it; hosts that cannot be asked say why. */
export async function vmOnHosts(host: HostConfig, name: string, o: { only?: string } = {}): Promise<Array<{ host: string; status?: VmStatus; error?: string }>> {
  const names = hostsToAsk(host, o.only);
  const out = await Promise.all(
    names.map(async (h) => {
      try {
        return { host: h, status: await clientFor(host, h, 5000).vm(name) };
      } catch (err) {
        return { host: h, error: (err as Error).message };
      }
    }),
  );
  // Hosts that answered without the VM are not part of it.
  return out.filter((x) => x.error !== undefined || x.status !== undefined);
}

export interface DownOnHostsResult {
  name: string;
  hosts: Array<{ host: string; role: string | null; qemu: string }>;
}

/**
 * lockstep down NAME: the secondary's host first, agent and QEMU (it must
 * not take over and write its buffers); the primary's agent then sees its
 * secondary gone and carries on alone in a new disk epoch, recorded at the
 * witness, as after any loss of its secondary: so its disk, which may take
 * writes after the secondary stopped, is known as the newest, and a later
 * `up` restarts the VM from it. Then the primary's host, agent and QEMU. A
 * host that cannot be reached is named, and nothing is stopped.
 */
export async function downOnHosts(host: HostConfig, name: string, o: { onStep?: (m: string) => void; epochTimeoutMs?: number } = {}): Promise<DownOnHostsResult> {
  const step = o.onStep ?? (() => {});
  const answers = await vmOnHosts(host, name);
  const known = answers.find((a) => a.status)?.status;
  if (!known) throw new LockstepError(`no host knows a VM "${name}"`, { hint: answers.length ? answers.map((a) => `${a.host}: ${a.error}`).join('; ') : 'see lockstep status NAME' });
  const unreachable = known.hosts.filter((h) => !answers.some((a) => a.host === h && a.status));
  if (unreachable.length) throw new LockstepError(`VM "${name}": host ${unreachable.join(' and ')} cannot be asked`, { hint: 'stop what runs there when it is back; nothing was stopped' });
  const role = (h: string) => answers.find((a) => a.host === h)?.status?.agent?.role ?? null;
  const writer = (h: string) => role(h) === 'primary' || role(h) === 'alone';
  const stop = (h: string) => clientFor(host, h, 30_000).stopVm(name);
  const order = [...known.hosts].sort((x, y) => Number(writer(x)) - Number(writer(y)));
  const [first, last] = order as [string, string];
  const out: DownOnHostsResult = { name, hosts: [] };
  step(`stopping the VM on ${first} (${role(first) ?? 'no agent'})`);
  out.hosts.push({ host: first, role: role(first), qemu: (await stop(first)).qemu });
  if (role(last) === 'primary') {
    step(`waiting for ${last} to carry on alone in a new disk epoch (recorded at the witness)`);
    const before = answers.find((a) => a.host === last)?.status?.agent?.disk.epoch;
    const epochTimeoutMs = o.epochTimeoutMs ?? 30_000;
    const moved = (a: VmStatus['agent'] | undefined) =>
      !!a && a.role === 'alone' && a.disk.pending === null && a.disk.epoch !== null && (before === null || before === undefined || a.disk.epoch.gen > before.gen);
    const r = await pollUntil(agentOn(host, last, name), moved, { timeoutMs: epochTimeoutMs, intervalMs: POLL_MS });
    if (!r.done) {
      const a = r.last;
      step(`${last} did not begin a new epoch within ${Math.round(epochTimeoutMs / 1000)} s (${a ? `${a.role}, ${a.degraded.join('; ')}` : 'no agent'}): stopping it anyway; check the disks' epochs before the next up`);
    }
  }
  step(`stopping the VM on ${last} (${role(last) ?? 'no agent'})`);
  out.hosts.push({ host: last, role: role(last), qemu: (await stop(last)).qemu });
  return out;
}

export interface FailoverOnHostsResult {
  name: string;
  from: string;
  to: string;
  /** From the request until `to` ran the VM. */
  ms: number;
}

/**
 * lockstep failover NAME --to HOST: HOST must be the protected secondary;
 * the primary's host ends its QEMU, the agents fail over to HOST as after
 * any loss of the primary, and then re-protect the VM on the other host.
 */
export async function failoverOnHosts(host: HostConfig, name: string, to: string, o: { onStep?: (m: string) => void; timeoutMs?: number } = {}): Promise<FailoverOnHostsResult> {
  const step = o.onStep ?? (() => {});
  const answers = await vmOnHosts(host, name);
  const target = answers.find((a) => a.host === to);
  if (!target?.status) throw new LockstepError(`host ${to} ${target?.error ? `cannot be asked: ${target.error}` : `does not run VM "${name}"`}`, { hint: `see lockstep status ${name}` });
  const hosts = target.status.hosts;
  const from = hosts.find((h) => h !== to)!;
  const source = answers.find((a) => a.host === from)?.status;
  const ta = target.status.agent;
  if (ta?.role === 'primary' || ta?.role === 'alone') throw new LockstepError(`${to} runs VM "${name}" already`, { hint: 'nothing to do' });
  if (!ta?.protected || ta.role !== 'secondary') throw new LockstepError(`${to} is not a protected secondary of VM "${name}" (${ta ? ta.role : 'no agent'}): a failover to it would lose the VM's state`, { hint: `wait until lockstep status ${name} says PROTECTED` });
  if (!source) throw new LockstepError(`host ${from} cannot be asked: if it is gone, the agents fail over by themselves`, { hint: `see lockstep status ${name}` });
  step(`ending the VM's QEMU on ${from}: ${to} takes over`);
  const t0 = performance.now();
  await clientFor(host, from, 30_000).endQemu(name);
  const timeoutMs = o.timeoutMs ?? 60_000;
  const r = await pollUntil(agentOn(host, to, name), (a) => a?.role === 'alone' || a?.role === 'primary', { timeoutMs, intervalMs: POLL_MS });
  if (!r.done) {
    const a = r.last;
    throw new LockstepError(`${to} did not take VM "${name}" over within ${Math.round(timeoutMs / 1000)} s (${a ? `${a.role}: ${a.degraded.join('; ')}` : 'no agent'})`, { hint: `see lockstep status ${name} and the agent logs` });
  }
  return { name, from, to, ms: performance.now() - t0 };
}

/** Waits until `host`'s agent runs VM `name` alone, then asks it to resync its peer. */
async function askResyncWhenAlone(client: ApiClient, name: string, host: string, timeoutMs = 60_000): Promise<void> {
  const r = await pollUntil(async () => (await client.vm(name))?.agent ?? undefined, (a) => a?.role === 'alone', { timeoutMs, intervalMs: POLL_MS });
  if (!r.done) {
    const a = r.last;
    throw new LockstepError(`${host} did not run VM "${name}" within ${Math.round(timeoutMs / 1000)} s (${a ? `${a.role}: ${a.waiting ?? a.degraded.join('; ')}` : 'no agent'})`, { hint: `see lockstep status ${name} and ${name}'s agent.log on ${host}` });
  }
  await client.resync(name);
}

export interface ResyncOnHostsResult {
  name: string;
  /** The host that ran the VM alone, now its primary. */
  from: string;
  /** The host resynced as its new secondary. */
  to: string;
  /** From the request until both hosts said protected (0 when it was already). */
  ms: number;
  alreadyProtected: boolean;
}

/**
 * lockstep resync NAME: the host that runs the VM alone is asked to resync
 * the other as its new secondary now (with agents.reprotect off the agents
 * wait for this; with it on, this only skips their back-off). Its agent
 * decides under the rules of every resync; when it does not begin within
 * `beginTimeoutMs`, what it waits for is the error (the request stands).
 */
export async function resyncOnHosts(
  host: HostConfig,
  name: string,
  o: UpOptions & { beginTimeoutMs?: number } = {},
): Promise<ResyncOnHostsResult> {
  const answers = await vmOnHosts(host, name);
  const known = answers.find((a) => a.status)?.status;
  if (!known) throw new LockstepError(`no host knows a VM "${name}"`, { hint: answers.length ? answers.map((a) => `${a.host}: ${a.error}`).join('; ') : 'see lockstep status NAME' });
  const hosts = known.hosts;
  const roleOf = (h: string) => answers.find((a) => a.host === h)?.status?.agent ?? undefined;
  if (hosts.every((h) => roleOf(h)?.protected)) {
    const p = hosts.find((h) => roleOf(h)?.role === 'primary') ?? hosts[0];
    return { name, from: p, to: hosts.find((h) => h !== p)!, ms: 0, alreadyProtected: true };
  }
  const from = hosts.find((h) => roleOf(h)?.role === 'alone');
  if (!from) {
    const seen = hosts.map((h) => `${h}: ${roleOf(h)?.role ?? answers.find((a) => a.host === h)?.error ?? 'no agent'}`).join(', ');
    throw new LockstepError(`no host runs VM "${name}" alone, so there is nothing to resync from (${seen})`, { hint: `see lockstep status ${name}` });
  }
  const to = hosts.find((h) => h !== from)!;
  const clients = { [from]: clientFor(host, from), [to]: clientFor(host, to) };
  o.onStep?.(`asking ${from}, which runs the VM alone, to resync ${to} as its new secondary`);
  const t0 = performance.now();
  await clients[from]!.resync(name);
  const begin = o.beginTimeoutMs ?? 15_000;
  const began = await pollUntil(agentOn(host, from, name), (a) => a?.work?.kind === 'reprotect' || a?.protected === true, { timeoutMs: begin, intervalMs: POLL_MS });
  if (!began.done) {
    const a = began.last;
    throw new LockstepError(`${from} did not begin the resync within ${Math.round(begin / 1000)} s: ${a?.waiting ?? a?.degraded.join('; ') ?? 'its agent stopped'}`, {
      hint: `the request stands: ${from}'s agent resyncs as soon as that changes (see lockstep status ${name})`,
    });
  }
  o.onStep?.(`resyncing: ${to}'s disk mirrored from ${from} over the replication network, then COLO again`);
  const r = await followUntilProtected(name, [from, to], clients, o, t0, o.timeoutMs ?? 600_000);
  return { name, from, to, ms: r.ms, alreadyProtected: false };
}

export interface HostVmsView {
  /** Every VM the asked hosts run or keep, by name, with what each of its hosts that answered says. */
  vms: Array<{ name: string; hosts: [string, string]; protected: boolean; status: Array<{ host: string; status: VmStatus }> }>;
  /** Hosts that could not be asked, and why. */
  unreachable: Array<{ host: string; error: string }>;
}

/**
 * lockstep status (no NAME): every VM of this host and of every host it
 * trusts (or of `only`). A VM counts as protected when every one of its
 * hosts that was asked says so, and (unless one host was asked) both were.
 */
export async function vmsOnHosts(host: HostConfig, o: { only?: string } = {}): Promise<HostVmsView> {
  const names = hostsToAsk(host, o.only);
  const answers = await Promise.all(
    names.map(async (h) => {
      try {
        return { host: h, vms: await clientFor(host, h, 5000).vms() };
      } catch (err) {
        return { host: h, error: (err as Error).message };
      }
    }),
  );
  const byName = new Map<string, HostVmsView['vms'][number]>();
  for (const a of answers) {
    for (const v of a.vms ?? []) {
      const e = byName.get(v.name) ?? { name: v.name, hosts: v.hosts, protected: false, status: [] };
      e.status.push({ host: a.host, status: v });
      byName.set(v.name, e);
    }
  }
  const vms = [...byName.values()].sort((x, y) => x.name.localeCompare(y.name));
  for (const v of vms) v.protected = v.status.every((s) => s.status.agent?.protected) && (o.only !== undefined || v.hosts.every((h) => v.status.some((s) => s.host === h)));
  return { vms, unreachable: answers.flatMap((a) => (a.error !== undefined ? [{ host: a.host, error: a.error }] : [])) };
}
