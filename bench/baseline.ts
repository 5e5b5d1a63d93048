// The agent as it was before a change, built from git in the same bench run, so that a
// figure and the one it replaces are measured side by side on the same machine state
// (this shared VM moves absolute times between runs; a ratio from one run does not).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { progress, REPO_ROOT, type Scratch } from './common.js';

/** The last revision before the fleet-scale export work (issue 15): prom-client exposition,
 * full log2 bucket ranges, key-by-key map walks. Override with --baseline REV. */
export const DEFAULT_BASELINE_REV = '87bf4e6';

export interface Baseline {
  rev: string;
  /** bin/hvwatch of the built revision. */
  bin: string;
  cleanup(): void;
}

/** A git worktree of `rev` under the scratch dir, set up with its own scripts/setup.sh
 * (its npm packages, BPF objects, TypeScript build). Throws a one-line reason when this is
 * not a git checkout, the revision is not in it (a shallow clone), or the build fails. */
export function buildBaseline(scratch: Scratch, rev: string): Baseline {
  const git = (...args: string[]): string => {
    const r = spawnSync('git', ['-C', REPO_ROOT, ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`git ${args.join(' ')}: ${(r.stderr || r.error?.message || '').trim().split('\n')[0]}`);
    return r.stdout.trim();
  };
  const full = git('rev-parse', '--verify', `${rev}^{commit}`);
  const dir = path.join(scratch.dir, `baseline-${full.slice(0, 12)}`);
  git('worktree', 'add', '--detach', '--force', dir, full);
  const cleanup = (): void => void spawnSync('git', ['-C', REPO_ROOT, 'worktree', 'remove', '--force', dir]);
  progress(`agent: building baseline ${full.slice(0, 12)} (its own scripts/setup.sh)`);
  const log = path.join(scratch.dir, 'baseline-setup.log');
  const r = spawnSync('bash', ['scripts/setup.sh'], { cwd: dir, stdio: ['ignore', fs.openSync(log, 'w'), fs.openSync(log, 'a')] });
  if (r.status !== 0) {
    cleanup();
    const tail = fs.readFileSync(log, 'utf8').trim().split('\n').slice(-1)[0];
    throw new Error(`baseline ${rev} did not build (exit ${r.status}): ${tail}`);
  }
  return { rev: full.slice(0, 12), bin: path.join(dir, 'bin/hvwatch'), cleanup };
}
