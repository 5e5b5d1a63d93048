// Human form of the probe report (`hvwatch probes`).
import type { ProbeStatus } from './loader.js';

export function formatProbeReport(status: readonly ProbeStatus[]): string {
  let out = '';
  for (const s of status) {
    const c = s.chosen;
    const how = c && [c.state && `state in ${c.state}`, ...(c.chained ?? []).map((h) => `runs after ${h.after} on ${h.hook}`)].filter(Boolean).join('; ');
    const head = !s.enabled ? `off (${s.skipped})` : c ? `attached via ${c.attach}:${c.target}${how ? ` (${how})` : ''}` : 'NOT ATTACHED';
    out += `${s.name} [${s.family}] ${head}\n`;
    for (const r of s.candidates) {
      out += `  ${r.ok ? '✓' : '✗'} ${r.attach.padEnd(14)} ${r.target}${r.state ? ` [${r.state}]` : ''}${r.ok ? '' : `: ${r.error}`}\n`;
      if (!r.ok && r.log?.length)
        out += r.log
          .slice(-3)
          .map((l) => `      | ${l}\n`)
          .join('');
    }
  }
  return out;
}
