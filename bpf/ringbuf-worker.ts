// Worker thread that drains one BPF ring buffer with libbpf's ring_buffer__poll, so a
// burst of events never stalls the agent's event loop (scrapes, HTTP). It deliberately
// loads its own koffi handles and never calls libbpf_set_print: that hook is
// process-global and belongs to the main thread (bpf/libbpf.ts).
import { parentPort, workerData } from 'node:worker_threads';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const koffi = require('koffi') as typeof import('koffi');

interface Init { mapFd: number; stop: SharedArrayBuffer; batchMs: number; maxBatch: number; pollMs: number }
const init = workerData as Init;
const stop = new Int32Array(init.stop);

const lib = koffi.load('libbpf.so.1');
koffi.opaque('ring_buffer');
const SampleFn = koffi.proto('int ring_buffer_sample_fn(void *ctx, void *data, size_t size)');
const rbNew = lib.func('ring_buffer *ring_buffer__new(int fd, ring_buffer_sample_fn *cb, void *ctx, void *opts)');
const rbPoll = lib.func('int ring_buffer__poll(ring_buffer *rb, int timeout_ms)');
const rbFree = lib.func('void ring_buffer__free(ring_buffer *rb)');

let chunks: Buffer[] = [];
let bytes = 0;
let lastFlush = Date.now();

function flush(): void {
  if (chunks.length === 0) return;
  // One transferable buffer per batch: records are [u32 length][bytes] back to back.
  const out = Buffer.alloc(bytes + 4 * chunks.length);
  let off = 0;
  for (const c of chunks) {
    out.writeUInt32LE(c.length, off);
    c.copy(out, off + 4);
    off += 4 + c.length;
  }
  const ab = out.buffer.slice(out.byteOffset, out.byteOffset + out.length);
  parentPort!.postMessage({ type: 'batch', count: chunks.length, data: ab }, [ab as ArrayBuffer]);
  chunks = [];
  bytes = 0;
  lastFlush = Date.now();
}

const cb = koffi.register((_ctx: unknown, data: unknown, size: number) => {
  chunks.push(Buffer.from(koffi.view(data, size).slice(0)));
  bytes += size;
  if (chunks.length >= init.maxBatch) flush();
  return 0;
}, koffi.pointer(SampleFn));

const rb = rbNew(init.mapFd, cb, null, null);
if (!rb) {
  parentPort!.postMessage({ type: 'error', message: `ring_buffer__new failed: errno ${koffi.errno()}` });
} else {
  while (Atomics.load(stop, 0) === 0) {
    const r = rbPoll(rb, init.pollMs);
    if (r < 0 && r !== -4 /* EINTR */) {
      parentPort!.postMessage({ type: 'error', message: `ring_buffer__poll failed: errno ${-r}` });
      break;
    }
    if (Date.now() - lastFlush >= init.batchMs) flush();
  }
  flush();
  rbFree(rb);
}
koffi.unregister(cb);
parentPort!.postMessage({ type: 'stopped' });
// koffi keeps the worker's loop alive; in a worker, process.exit ends only this thread.
process.exit(0);
