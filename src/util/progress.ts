/**
 * Progress for long steps. On a terminal the current step is redrawn in place;
 * elsewhere (CI logs, pipes) each step is printed once and repeated updates
 * are thinned out so logs stay readable.
 */
export interface Progress {
  /** A new step starts. */
  step(msg: string): void;
  /** An update within the current step (e.g. "[812/1509]"). */
  update(msg: string): void;
  /** The current step ended well. */
  done(msg?: string): void;
}

export function createProgress(stream: NodeJS.WriteStream = process.stderr, opts: { quiet?: boolean } = {}): Progress {
  const tty = stream.isTTY === true;
  let current = '';
  let started = 0;
  let lastPrint = 0;
  const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)} s`;
  if (opts.quiet) return { step() {}, update() {}, done() {} };
  return {
    step(msg) {
      if (tty && current) stream.write(`\r\x1b[K✓ ${current} (${elapsed()})\n`);
      current = msg;
      started = Date.now();
      lastPrint = 0;
      if (tty) stream.write(`\r\x1b[K• ${msg}`);
      else stream.write(`• ${msg}\n`);
    },
    update(msg) {
      if (tty) {
        stream.write(`\r\x1b[K• ${current} ${msg} (${elapsed()})`);
      } else if (Date.now() - lastPrint > 15_000) {
        lastPrint = Date.now();
        stream.write(`  ${current}: ${msg} (${elapsed()})\n`);
      }
    },
    done(msg) {
      if (!current && !msg) return;
      const text = msg ?? current;
      if (tty) stream.write(`\r\x1b[K✓ ${text} (${elapsed()})\n`);
      else if (msg) stream.write(`✓ ${text} (${elapsed()})\n`);
      current = '';
    },
  };
}
