// `check`, `record` and `replay`: each owns its options; errors are one line, exit 2.
import { checkCommand } from './check.js';
import { CommandError } from './common.js';
import { recordCommand } from './record.js';
import { replayCommand } from './replay.js';

export const COMMANDS = { check: checkCommand, record: recordCommand, replay: replayCommand } as const;

export function isCommand(name: string | undefined): name is keyof typeof COMMANDS {
  return name !== undefined && Object.hasOwn(COMMANDS, name);
}

/** Runs a command; returns its exit status (one line on stderr for status 2 errors). */
export async function runCommand(name: keyof typeof COMMANDS, argv: string[]): Promise<number> {
  try {
    return await COMMANDS[name](argv);
  } catch (e) {
    if (e instanceof CommandError) {
      process.stderr.write(`hvwatch: ${e.message}\n`);
      return e.code;
    }
    throw e;
  }
}
