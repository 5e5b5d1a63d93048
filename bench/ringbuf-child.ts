// The agent side of the ring-buffer benchmark (bench/ringbuf.ts), in its own process as in
// production: every family loaded with its ring-buffer reader and event handler, at the
// agent's default log level (a race event is one log line on stderr, which the parent sends
// to a file). No probe attaches, so only the benchmark's records arrive.
// stdout: one JSON line with each event family's map ids; then on each "stats" line on
// stdin, one JSON line of counters; "quit" stops the agent.
import { createInterface } from 'node:readline';
import { createRequire } from 'node:module';
import { Agent } from '../agent/agent.js';
import type { LiveSource } from '../agent/sources/live.js';
import { configSchema } from '../agent/config.js';
import { M } from '../agent/catalog.js';
import { allProbeNames } from '../agent/families.js';
import { procCpuMs } from './common.js';

const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');
const objInfo = koffi.load('libbpf.so.1').func('int bpf_obj_get_info_by_fd(int fd, _Out_ uint8_t *info, _Inout_ uint32_t *len)');

/** struct bpf_map_info starts { __u32 type; __u32 id; } (include/uapi/linux/bpf.h). */
function mapId(fd: number): number {
  const info = Buffer.alloc(80);
  const r = objInfo(fd, info, [info.length]) as number;
  if (r < 0) throw new Error(`bpf_obj_get_info_by_fd(${fd}) failed (${r})`);
  return info.readUInt32LE(4);
}

const agent = new Agent(configSchema.parse({ probes: { disable: allProbeNames() } }));
agent.start();
// The worker thread boots after start() returns; a ring emitted into before it drains
// would measure the boot (the ring holds ~33 ms at 100,000/s), not the reader.
await (agent.source as LiveSource).eventsReady();
const families = agent.loader.families.filter((f) => f.spec.events);
const ids = Object.fromEntries(
  families.map((f) => [
    f.spec.name,
    {
      events: mapId(f.maps.get(f.spec.events!.map)!.fd),
      eventsSize: f.maps.get(f.spec.events!.map)!.maxEntries,
      errors: f.maps.has('hv_errors') ? mapId(f.maps.get('hv_errors')!.fd) : undefined,
      object: f.path,
      struct: f.spec.events!.struct,
    },
  ]),
);
process.stdout.write(JSON.stringify({ ready: true, families: ids }) + '\n');

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (line === 'stats') {
    void agent.collect().then(() => {
      const out = Object.fromEntries(
        families.map((f) => [
          f.spec.name,
          {
            received: agent.store.get(M.ringbufEvents, { family: f.spec.name })?.value ?? 0,
            dropped: agent.store.get(M.ringbufDropped, { family: f.spec.name })?.value ?? 0,
          },
        ]),
      );
      process.stdout.write(JSON.stringify({ cpuMs: procCpuMs('self'), families: out, races: agent.races.length }) + '\n');
    });
  } else if (line === 'quit') {
    rl.close();
    void agent.stop().then(() => process.exit(0));
  }
});
