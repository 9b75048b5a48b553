/**
 * What lockstep's own builds left on this machine, found, never made: the lab
 * QEMU of a line and the demo guest, as `lockstep lab prepare` (or `lab
 * build-qemu`, `lab build-guest`) published them in the cache. Production
 * code (the daemon, `up`, the agents) only looks them up here; building is
 * the lab's and the CLI's job (src/lab/), never a daemon's: a daemon on a
 * real server downloads and compiles nothing.
 *
 * Each build publishes a small pointer beside its results
 * (<cache>/qemu/current-LINE.json, <cache>/guest/current.json) naming what
 * it made; a pointer whose files are gone counts as nothing built.
 */
import fs from 'node:fs';
import path from 'node:path';
import { cacheDir } from '../util/paths.js';
import { writeFileAtomic } from '../util/files.js';
import { LockstepError } from '../util/errors.js';

/** The QEMU lines lockstep has a patch set for. */
export const QEMU_LINES = ['7.2', '10.0'] as const;
export type QemuLine = (typeof QEMU_LINES)[number];

/** Firmware lockstep's QEMU loads at run time, from Debian's packages (its build ships no blobs). */
export const FIRMWARE_DIRS = ['/usr/share/qemu', '/usr/share/seabios', '/usr/lib/ipxe/qemu'];

/** The line the lab and lockstep's own build use unless told otherwise: $LOCKSTEP_LAB_QEMU, else 7.2. */
export function defaultQemuLine(): QemuLine {
  const v = process.env.LOCKSTEP_LAB_QEMU;
  return v === undefined || v === '' ? '7.2' : parseQemuLine(v, `LOCKSTEP_LAB_QEMU=${v}`);
}

/** `v` as a QEMU line, or an error naming `what` and the lines there are. */
export function parseQemuLine(v: string, what: string): QemuLine {
  if ((QEMU_LINES as readonly string[]).includes(v)) return v as QemuLine;
  throw new LockstepError(`${what}: lockstep has patches for QEMU ${QEMU_LINES.join(' and ')} only`, { hint: `one of ${QEMU_LINES.join(', ')}` });
}

/** A published build of lockstep's QEMU. */
export interface OwnQemuBuild {
  binary: string;
  /** Firmware directories to pass with -L. */
  dataDirs: string[];
  line: QemuLine;
  /** The build's key in the cache (its line, patch set and recipe). */
  key: string;
}

/** The demo guest: Debian's cloud kernel and a busybox initramfs (src/lab/guest.ts builds it). */
export interface GuestImage {
  kernel: string;
  initrd: string;
  kernelVersion: string;
  /** Marker the guest prints on its serial console once its services listen. */
  readyMarker: string;
}

export const GUEST_READY_MARKER = 'LOCKSTEP-GUEST-READY';

function qemuPointer(line: QemuLine): string {
  return path.join(cacheDir(), 'qemu', `current-${line}.json`);
}

function guestPointer(): string {
  return path.join(cacheDir(), 'guest', 'current.json');
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
  } catch {
    return undefined;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** lockstep's own QEMU of `line` if a lab build published it (its binary still there); never builds. */
export function findOwnQemu(line: QemuLine = defaultQemuLine()): OwnQemuBuild | undefined {
  const p = readJson(qemuPointer(line));
  if (!isObject(p) || typeof p.binary !== 'string' || typeof p.key !== 'string' || !Array.isArray(p.dataDirs)) return undefined;
  if (!fs.existsSync(p.binary)) return undefined;
  return { binary: p.binary, dataDirs: p.dataDirs.filter((d): d is string => typeof d === 'string'), line, key: p.key };
}

/** The demo guest if it was built here (its files still there); never builds. */
export function findDemoGuest(): GuestImage | undefined {
  const p = readJson(guestPointer());
  if (!isObject(p)) return undefined;
  const { kernel, initrd, kernelVersion, readyMarker } = p;
  if (typeof kernel !== 'string' || typeof initrd !== 'string' || typeof kernelVersion !== 'string' || typeof readyMarker !== 'string') return undefined;
  if (!fs.existsSync(kernel) || !fs.existsSync(initrd)) return undefined;
  return { kernel, initrd, kernelVersion, readyMarker };
}

/** Called by the lab's QEMU build (the full patch set of a line): what findOwnQemu(line) returns from now on. */
export function publishOwnQemu(b: OwnQemuBuild): void {
  writeFileAtomic(qemuPointer(b.line), JSON.stringify(b, null, 2) + '\n');
}

/** Called by the demo guest's build: what findDemoGuest() returns from now on. */
export function publishDemoGuest(g: GuestImage): void {
  writeFileAtomic(guestPointer(), JSON.stringify(g, null, 2) + '\n');
}

/** What to do on a host that lacks lockstep's QEMU, for errors. */
export const INSTALL_QEMU_HINT =
  'install lockstep\'s QEMU on this host (apt install ./lockstep-qemu-LINE_*.deb, made with "lockstep qemu package"), ' +
  'or name one in the host file (qemu: { binary: PATH }) or the VM file; in a lab on this machine, run "lockstep lab prepare" first';

/** What to do on a host that lacks the demo guest, for errors. */
export const BUILD_GUEST_HINT =
  'the demo guest is built by "lockstep lab prepare" (or "lockstep lab build-guest") on this machine; on a real host give the VM ' +
  'a kernel of its own (vm.kernel and vm.initrd) or boot it from its disk';
