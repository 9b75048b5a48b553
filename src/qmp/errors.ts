import { LockstepError, TimeoutError } from '../util/errors.js';

/** Could not open the QMP socket at all. */
export class QmpConnectError extends LockstepError {
  constructor(readonly address: string, cause: unknown) {
    super(`cannot connect to QMP at ${address}: ${(cause as Error)?.message ?? String(cause)}`, {
      cause,
      hint: 'check that the QEMU process is running and that its -qmp socket path is the one configured',
    });
    this.name = 'QmpConnectError';
  }
}

/** The socket opened, but the greeting or qmp_capabilities went wrong. */
export class QmpNegotiationError extends LockstepError {
  constructor(readonly address: string, detail: string) {
    super(`QMP negotiation with ${address} failed: ${detail}`, {
      hint: 'is this socket a QMP monitor (-qmp) and not an HMP monitor or a chardev? Only one client may use a QMP socket at a time',
    });
    this.name = 'QmpNegotiationError';
  }
}

/** QEMU answered a command with {"error": {...}}. */
export class QmpCommandError extends LockstepError {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QMP ${command} failed: ${errorClass}: ${desc}`);
    this.name = 'QmpCommandError';
  }
}

/** The connection closed while something was waiting on it. */
export class QmpDisconnectedError extends LockstepError {
  constructor(readonly address: string, what: string) {
    super(`QMP connection to ${address} closed while ${what}`, {
      hint: 'the QEMU process probably exited; look at its log for the reason',
    });
    this.name = 'QmpDisconnectedError';
  }
}

/** A command got no answer in time. The connection stays usable. */
export class QmpTimeoutError extends TimeoutError {
  constructor(readonly command: string, ms: number) {
    super(`an answer to QMP ${command}`, ms, 'QEMU may be hung (a stuck checkpoint or migration); status and yank can tell');
    this.name = 'QmpTimeoutError';
  }
}
