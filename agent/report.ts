// Human form of the probe report (`hvwatch probes`).
import type { ProbeStatus } from './loader.js';

export function formatProbeReport(status: readonly ProbeStatus[]): string {
  let out = '';
  for (const s of status) {
    const head = !s.enabled ? `off (${s.skipped})` : s.chosen ? `attached via ${s.chosen.attach}:${s.chosen.target}` : 'NOT ATTACHED';
    out += `${s.name} [${s.family}] ${head}\n`;
    for (const c of s.candidates) {
      out += `  ${c.ok ? '✓' : '✗'} ${c.attach.padEnd(14)} ${c.target}${c.ok ? '' : `: ${c.error}`}\n`;
      if (!c.ok && c.log?.length) out += c.log.slice(-3).map((l) => `      | ${l}\n`).join('');
    }
  }
  return out;
}
