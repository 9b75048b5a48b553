/**
 * Debian's chromium, headless, driven with playwright-core (which downloads
 * no browser): a new empty profile per launch, no network of its own beyond
 * what the page asks, every console error and page error collected.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { LockstepError } from '../../src/util/errors.js';

export const CHROMIUM = '/usr/bin/chromium';

export interface Headless {
  page: Page;
  /** Console errors and uncaught page errors, as they came. */
  errors: string[];
  close(): Promise<void>;
}

export async function headless(o: { width?: number; height?: number } = {}): Promise<Headless> {
  if (!fs.existsSync(CHROMIUM)) throw new LockstepError(`${CHROMIUM} is missing`, { hint: 'scripts/setup.sh installs Debian\'s chromium' });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-chromium-'));
  let browser: Browser | undefined;
  let context: BrowserContext | undefined;
  try {
    // A persistent context is how playwright takes a --user-data-dir of our own: a new, empty one.
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: o.width ?? 1280, height: o.height ?? 900 },
      deviceScaleFactor: 1,
    });
    browser = context.browser() ?? undefined;
  } catch (err) {
    fs.rmSync(profile, { recursive: true, force: true });
    throw err;
  }
  const page = context.pages()[0] ?? (await context.newPage());
  const errors: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => errors.push(`page: ${e.message}`));
  const ctx = context;
  return {
    page,
    errors,
    close: async () => {
      await ctx.close().catch(() => undefined);
      await browser?.close().catch(() => undefined);
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}
