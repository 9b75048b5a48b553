/**
 * What a VM's definition may name on this host: a definition comes over the
 * API from any trusted host (`up -f` anywhere), and the daemon runs it as
 * root, so what it may touch is the host's decision, written in its host
 * file (`allow:`), not the sender's:
 *
 * - qemu: the QEMU binaries a VM file may name (a file, or a directory whose
 *   files): default the lockstep-qemu packages (/usr/lib/lockstep), lockstep's
 *   own build (the cache's qemu/) and the host file's own qemu.binary;
 * - images: the directories its disk image may be in (and where disk.create
 *   makes one): default STATEDIR/images;
 * - kernels: the directories of vm.kernel and vm.initrd: default
 *   STATEDIR/kernels (the demo guest, `kernel: demo`, is always allowed);
 * - buffers: the directories replication.bufferDir may be: default /dev/shm;
 * - taps: the existing interfaces a VM file may name as its tap on this host:
 *   default none (a tap the VM file names that does not exist is made by the
 *   daemon and is then lockstep's; one that exists and that lockstep did not
 *   make may be another VM's or a real NIC, which attaching and detaching
 *   would take off its bridge).
 *
 * Paths are compared after resolving "..", and, where they exist, symbolic
 * links: a path inside an allowed directory that leads outside it is outside.
 * Every refusal names the line of the host file that would allow it.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { HostConfig } from '../config/host.js';
import type { VmFile } from '../config/vm.js';
import { PACKAGE_PREFIX } from '../qemu/discover.js';
import { cacheDir } from '../util/paths.js';

export type AllowKind = 'qemu' | 'images' | 'kernels' | 'buffers' | 'taps';

/** What this host allows, each list with where it comes from (the host file's line, or the default). */
export interface Allowed {
  qemu: string[];
  images: string[];
  kernels: string[];
  buffers: string[];
  taps: string[];
  /** Which lists the host file gives (the others are defaults). */
  given: Set<AllowKind>;
}

/** This host's lists: the host file's `allow:`, each list it leaves out its default. */
export function allowedFor(host: HostConfig): Allowed {
  const a = host.allow ?? {};
  const given = new Set<AllowKind>((Object.keys(a) as AllowKind[]).filter((k) => a[k] !== undefined));
  return {
    qemu: a.qemu ?? [PACKAGE_PREFIX, path.join(cacheDir(), 'qemu'), ...(host.qemu.binary ? [host.qemu.binary] : [])],
    images: a.images ?? [path.join(host.stateDir, 'images')],
    kernels: a.kernels ?? [path.join(host.stateDir, 'kernels')],
    buffers: a.buffers ?? ['/dev/shm'],
    taps: a.taps ?? [],
    given,
  };
}

/** `p` with "..", and the symbolic links of its longest existing part, resolved. */
function realish(p: string): string {
  let head = path.resolve(p);
  const rest: string[] = [];
  for (;;) {
    try {
      return path.join(fs.realpathSync(head), ...rest);
    } catch {
      const parent = path.dirname(head);
      if (parent === head) return path.join(head, ...rest);
      rest.unshift(path.basename(head));
      head = parent;
    }
  }
}

/** Whether `p` is `dir` or inside it, both resolved. */
export function isInside(p: string, dir: string): boolean {
  const rp = realish(p);
  const rd = realish(dir);
  return rp === rd || rp.startsWith(rd.endsWith(path.sep) ? rd : rd + path.sep);
}

/** The host file line that allows `value` under `kind`: what a refusal shows. */
function allowLine(host: HostConfig, allowed: Allowed, kind: AllowKind, value: string): string {
  const list = [...allowed[kind], value];
  return `allow: { ${kind}: [${list.join(', ')}] } in ${host.file}`;
}

/** A refusal: what is outside, and the host file line that would allow it. */
export interface Refusal {
  field: string;
  message: string;
  hint: string;
}

/**
 * Everything VM file `v` names on this host that the host does not allow:
 * empty when it may run here. `existingTap`: whether an interface of that
 * name exists here and is not one the daemon made for this VM.
 */
export function confinementProblems(v: VmFile, host: HostConfig, o: { existingTap?: (name: string) => boolean } = {}): Refusal[] {
  const allowed = allowedFor(host);
  const out: Refusal[] = [];
  const now = allowed.given.size ? `this host's allow lists` : 'the defaults of allow (the host file has none)';
  const check = (field: string, kind: AllowKind, p: string | undefined, what: string) => {
    if (p === undefined) return;
    if (!path.isAbsolute(p)) {
      out.push({ field, message: `${field}: "${p}" must be an absolute path`, hint: 'every path in a VM file is a path on its hosts' });
      return;
    }
    if (allowed[kind].some((d) => (kind === 'qemu' ? p === d || isInside(p, d) : isInside(p, d)))) return;
    out.push({
      field,
      message: `${field}: ${p} is not among the ${what} host ${host.name} allows VM definitions to name (${kind}: ${allowed[kind].join(', ') || 'none'}, from ${now})`,
      hint: `put it in one of those, or allow it on host ${host.name}: ${allowLine(host, allowed, kind, kind === 'qemu' ? p : path.dirname(p))}`,
    });
  };
  check('qemu.binary', 'qemu', v.qemu.binary, 'QEMU binaries');
  check('vm.disk.image', 'images', v.vm.disk.image, 'image directories');
  check('vm.kernel', 'kernels', v.vm.kernel === 'demo' ? undefined : v.vm.kernel, 'kernel directories');
  check('vm.initrd', 'kernels', v.vm.kernel === 'demo' ? undefined : v.vm.initrd, 'kernel directories');
  check('replication.bufferDir', 'buffers', v.replication.bufferDir, 'buffer directories');
  const net = v.vm.network;
  const tap = net.mode === 'tap' ? net.taps[host.name] : undefined;
  if (tap !== undefined && o.existingTap?.(tap) && !allowed.taps.includes(tap)) {
    out.push({
      field: `vm.network.taps.${host.name}`,
      message: `vm.network.taps.${host.name}: interface ${tap} exists on host ${host.name} and lockstep did not make it (another VM's tap, or a NIC: attaching and detaching it would take it off its bridge)`,
      hint: `leave the tap out (the daemon makes one), name one that does not exist yet, or allow it on host ${host.name}: ${allowLine(host, allowed, 'taps', tap)}`,
    });
  }
  return out;
}
