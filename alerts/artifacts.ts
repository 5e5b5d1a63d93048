// Writing and checking generated, committed files. `--check` is what CI and the tests use:
// a rule or panel changed in TypeScript without regenerating shows up as a failure.
import * as fs from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (this file runs from dist/alerts/). */
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Paths whose committed content differs from `want` (missing files included). */
export function staleArtifacts(want: ReadonlyMap<string, string>, root = REPO_ROOT): string[] {
  const stale: string[] = [];
  for (const [rel, content] of want) {
    let have: string | undefined;
    try {
      have = fs.readFileSync(join(root, rel), 'utf8');
    } catch {
      /* missing */
    }
    if (have !== content) stale.push(rel);
  }
  return stale;
}

export function writeArtifacts(want: ReadonlyMap<string, string>, root = REPO_ROOT): void {
  for (const [rel, content] of want) {
    fs.mkdirSync(dirname(join(root, rel)), { recursive: true });
    fs.writeFileSync(join(root, rel), content);
  }
}

/** The CLI of a generator: write the artifacts, or with --check exit 1 naming stale ones. */
export function generatorMain(name: string, want: ReadonlyMap<string, string>, argv = process.argv.slice(2)): void {
  if (argv.includes('--check')) {
    const stale = staleArtifacts(want);
    if (stale.length) {
      process.stderr.write(`${name}: out of date (run npm run build): ${stale.join(', ')}\n`);
      process.exitCode = 1;
    }
    return;
  }
  writeArtifacts(want);
  process.stderr.write(`${name}: wrote ${[...want.keys()].join(', ')}\n`);
}

/** True when the module at `url` is the script node was started with. */
export function isMain(url: string): boolean {
  return process.argv[1] !== undefined && fileURLToPath(url) === fs.realpathSync(process.argv[1]);
}
