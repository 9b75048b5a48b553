import type { Command } from 'commander';

export function registerQemuCommands(_program: Command): void {}
