// Markdown links that do not resolve: a relative file that does not exist, or a #section
// that no heading of the target .md file produces (GitHub's anchor rules: lower case,
// punctuation dropped, spaces to dashes).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize } from 'node:path';
import { ROOT } from './agent.js';

export function anchors(markdown: string): Set<string> {
  const out = new Set<string>();
  let fence = false;
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) fence = !fence;
    const m = !fence && /^#{1,6} (.*)$/.exec(line);
    if (!m) continue;
    out.add(
      m[1]!
        .trim()
        .toLowerCase()
        .replace(/[^\p{L}\p{N} _-]/gu, '')
        .replace(/ /g, '-'),
    );
  }
  return out;
}

/** Links of `file` (relative to the repository root) that do not resolve, as "target: why". */
export function brokenLinks(file: string): string[] {
  const text = readFileSync(join(ROOT, file), 'utf8').replace(/```[\s\S]*?```/g, '');
  const bad: string[] = [];
  for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
    const target = m[1]!;
    if (/^[a-z]+:/.test(target)) continue; // http:, https:, mailto:
    const [path, anchor] = target.split('#') as [string, string | undefined];
    const abs = path ? normalize(join(ROOT, dirname(file), path)) : join(ROOT, file);
    if (!existsSync(abs)) {
      bad.push(`${target}: no such file`);
      continue;
    }
    if (anchor && statSync(abs).isFile() && abs.endsWith('.md') && !anchors(readFileSync(abs, 'utf8')).has(anchor)) {
      bad.push(`${target}: no section #${anchor}`);
    }
  }
  return bad;
}
