// gzip for /metrics when the scraper asks for it. Prometheus sends `Accept-Encoding: gzip` on every
// scrape, and the Go exporters (promhttp: node_exporter, ebpf_exporter) answer in gzip by default;
// the classic text at 2,000 cgroups is megabytes, which a fleet would otherwise carry uncompressed.
// Level 1: the exposition is repetitive enough that the fastest level keeps most of the gain
// (docs/cost.md), and zlib runs on libuv's pool, not on the event loop.
import { createGzip, constants, type Gzip } from 'node:zlib';

/** Whether an Accept-Encoding header admits gzip (RFC 9110 12.5.3: a coding, or "*", with q > 0;
 * an explicit q=0 for gzip refuses it even when "*" would take it). Malformed parts are ignored. */
export function acceptsGzip(header: string | undefined): boolean {
  if (!header) return false;
  let gzip: number | undefined;
  let star: number | undefined;
  for (const part of header.split(',')) {
    const [coding = '', ...params] = part.split(';').map((s) => s.trim().toLowerCase());
    let q = 1;
    for (const p of params) {
      const m = /^q=([01](?:\.\d{0,3})?)$/.exec(p);
      if (m) q = Number(m[1]);
    }
    if (coding === 'gzip' || coding === 'x-gzip') gzip = Math.max(gzip ?? 0, q);
    else if (coding === '*') star = q;
  }
  return (gzip ?? star ?? 0) > 0;
}

export function gzipStream(): Gzip {
  return createGzip({ level: 1, memLevel: 8, flush: constants.Z_NO_FLUSH });
}
