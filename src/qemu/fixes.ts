/**
 * The fixes COLO needs in QEMU, and which of them a binary has.
 *
 * lockstep's own (P1-P3 and P5, patches/qemu-LINE/, one series per QEMU line) are not
 * upstream: a build that carries them names them in its package string
 * (configure --with-pkgversion; `-version` and query-version show it), as
 * "lockstep-fixes=P1,P2,P3". A C fix cannot be seen from outside any other
 * way, so a binary without that marker is counted as having none of them. An
 * upstream fix is known by the releases that have it.
 *
 * Which fixes a binary needs depends on the accelerator it runs with: P1 and
 * P2 are TCG's (KVM neither deadlocks there nor tracks dirty pages that way),
 * P3, P5 and the upstream COLO transition fix are needed whatever runs the guest.
 */
import { LockstepError } from '../util/errors.js';

export type FixId = 'P1' | 'P2' | 'P3' | 'P4' | 'P5' | 'U1';

export interface Fix {
  id: FixId;
  title: string;
  /** What happens without it, for the error and the README. */
  without: string;
  /** Under which accelerator COLO needs it; 'none': not needed for safety, only for something faster (P4). */
  neededUnder: 'tcg' | 'any' | 'none';
  origin: string;
}

export const FIXES: readonly Fix[] = [
  {
    id: 'P1',
    title: 'migration/colo: hold the BQL while saving the live state of a checkpoint',
    without: 'the first checkpoint deadlocks the primary (its main loop, QMP included, stops for good)',
    neededUnder: 'tcg',
    origin: 'lockstep patch 0001 (not upstream)',
  },
  {
    id: 'P2',
    title: 'physmem: reset TCG dirty tracking whenever the migration bitmap sync clears bits',
    without: "pages written through stale TLB entries are left out of checkpoints: the secondary's memory silently diverges (guest oopses after a failover)",
    neededUnder: 'tcg',
    origin: 'lockstep patch 0002 (7.2: with the backport of upstream 03bfc2188f; not upstream)',
  },
  {
    id: 'P3',
    title: 'virtio: reset the device flags before loading its state',
    without: "a flag set once (e.g. disabled while the guest resets the NIC) stays set on the secondary across checkpoints: its NIC can die for good, about one start in eight",
    neededUnder: 'any',
    origin: 'lockstep patch 0003 (not upstream)',
  },
  {
    id: 'P4',
    title: 'migration: enter COLO after a pause before switchover',
    without: 'each re-protection stops the VM while its whole memory goes to the new secondary (about a second per 128 MiB) instead of only for the last pass',
    neededUnder: 'none',
    origin: 'lockstep patch 0004 for 7.2 (upstream enters COLO from the device state since; 10.0 has it)',
  },
  {
    id: 'P5',
    title: "replication: report a primary's failed forwarded write, and fail its next checkpoint",
    without: "a write the secondary's disk failed (full, failing) is reported done and silently missing there; the next checkpoint releases the output that depends on it, and a failover to the secondary loses that acknowledged write",
    neededUnder: 'any',
    origin: 'lockstep patch 0005 (not upstream)',
  },
  {
    id: 'U1',
    title: 'migration: Fix transition to COLO state from precopy (upstream 0b5bf4ea76, Li Zhijian)',
    without: 'the migration completes as a plain one and the pair never gets into COLO (the secondary logs "Can\'t receive COLO message")',
    neededUnder: 'any',
    origin: 'upstream, in 10.0.7 and 10.2; broken since 10.0.0',
  },
];

/** The marker a build with lockstep's fixes `ids` carries in its package string. */
export function fixesMarker(ids: readonly string[]): string {
  return `lockstep-fixes=${ids.join(',')}`;
}

/** The fix ids of a build from the patch files it applied ("0001-..." → P1), in order. */
export function fixIdsOfPatches(patches: readonly string[]): FixId[] {
  return patches.map((p) => {
    const n = /^(\d{4})-/.exec(p)?.[1];
    const id = `P${Number(n)}`;
    if (!n || !FIXES.some((f) => f.id === id)) throw new LockstepError(`patch ${p} is no fix lockstep knows (expected one of ${FIXES.filter((f) => f.id.startsWith('P')).map((f) => `${f.id.slice(1).padStart(4, '0')}-...`).join(', ')})`);
    return id as FixId;
  });
}

interface Version {
  major: number;
  minor: number;
  micro: number;
}

/** Whether an upstream fix is in this release (or the bug is not). */
function upstreamHas(id: FixId, v: Version): boolean | undefined {
  if (id === 'P4') return v.major >= 10 ? true : undefined; // 10.0 enters COLO from the device state (migration_completion)
  if (id !== 'U1') return undefined;
  if (v.major < 10) return true; // the bug came with 10.0
  if (v.major === 10 && v.minor === 0) return v.micro >= 7;
  if (v.major === 10 && v.minor === 1) return false; // not known to be in any 10.1 release
  return true; // 10.2 and later
}

export interface FixState {
  id: FixId;
  title: string;
  without: string;
  /** Whether this binary, with this accelerator, needs it. */
  needed: boolean;
  present: boolean;
  /** How `present` was decided. */
  how: 'marker' | 'release' | 'no marker';
}

/** Each fix: whether the binary has it and whether it needs it under `accel` (undefined: say for both). */
export function fixesOf(info: { version: Version; package: string }, accel?: 'kvm' | 'tcg'): FixState[] {
  const m = /\blockstep-fixes=([A-Z0-9,]*)/.exec(info.package);
  const marked = new Set((m?.[1] ?? '').split(',').filter(Boolean));
  return FIXES.map((f) => {
    const release = upstreamHas(f.id, info.version);
    const present = marked.has(f.id) || release === true;
    return {
      id: f.id,
      title: f.title,
      without: f.without,
      needed: f.neededUnder === 'any' || (f.neededUnder === 'tcg' && accel !== 'kvm'),
      present,
      how: marked.has(f.id) ? 'marker' : release !== undefined ? 'release' : 'no marker',
    };
  });
}

/**
 * Refuses a binary that lacks a fix COLO needs under `accel`, naming each and
 * what breaks without it, unless `allowMissing` (then returns the warnings).
 */
export function assertColoFixes(info: { binary: string; version: Version; package: string }, accel: 'kvm' | 'tcg', allowMissing: boolean): string[] {
  const missing = fixesOf(info, accel).filter((f) => f.needed && !f.present);
  if (!missing.length) return [];
  const v = `${info.version.major}.${info.version.minor}.${info.version.micro}${info.package ? ` (${info.package})` : ''}`;
  const list = missing.map((f) => `${f.id} (${f.title}): without it ${f.without}`);
  if (allowMissing) return list.map((l) => `QEMU ${v} lacks ${l}; running anyway (qemu.allowMissingFixes)`);
  throw new LockstepError(`QEMU ${info.binary} ${v} lacks ${missing.length === 1 ? 'a fix' : `${missing.length} fixes`} COLO needs under ${accel.toUpperCase()}:\n  ${list.join('\n  ')}`, {
    hint: "use lockstep's build of QEMU, which has them (lockstep lab build-qemu --qemu 7.2|10.0; lockstep qemu info lists a binary's fixes), or set qemu.allowMissingFixes: true to run with the risk",
  });
}
