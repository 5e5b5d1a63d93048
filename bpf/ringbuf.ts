// Main-thread side of ring-buffer consumption: one worker thread (bpf/ringbuf-worker.ts)
// drains every added ring buffer from its mmap and posts the raw ring frames in batches;
// this side walks the frame headers and hands each ring's records to its owner. Losses are
// counted in three places: records the kernel could not reserve (each BPF object's
// hv_errors[RINGBUF_FULL]), a ring the worker could not map or poll (onError of that ring),
// and a dead worker (onError of every ring: their events are no longer read).
import { Worker } from 'node:worker_threads';
import { createRequire } from 'node:module';
import type { WorkerInit, WorkerMessage } from './ringbuf-worker.js';

const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');
const objInfo = koffi.load('libbpf.so.1').func('int bpf_obj_get_info_by_fd(int fd, _Inout_ uint8_t *info, _Inout_ uint32_t *len)');

// include/uapi/linux/bpf.h: struct bpf_map_info { __u32 type, id, key_size, value_size, max_entries; ... }
const BPF_MAP_TYPE_RINGBUF = 27;
// kernel/bpf/ringbuf.c, include/uapi/linux/bpf.h: frame header and its flag bits.
const BUSY_BIT = 0x80000000;
const DISCARD_BIT = 0x40000000;
const HDR_SZ = 8;

/** The data-area size of a BPF_MAP_TYPE_RINGBUF map (its max_entries), from the kernel. */
export function ringSize(fd: number): number {
  const info = Buffer.alloc(80);
  const r = objInfo(fd, info, [info.length]) as number;
  if (r < 0) throw new Error(`bpf_obj_get_info_by_fd(${fd}) failed (${r})`);
  const type = info.readUInt32LE(0);
  if (type !== BPF_MAP_TYPE_RINGBUF) throw new Error(`map fd ${fd} is of type ${type}, not a BPF ring buffer (${BPF_MAP_TYPE_RINGBUF})`);
  return info.readUInt32LE(16);
}

export interface RingBufferOptions {
  /** How long records may wait in the worker before they are sent (ms). */
  batchMs?: number;
  /** Largest batch the worker sends at once (bytes of ring frames). */
  maxBytes?: number;
  /** The worker's longest wait for a wake-up (ms); also how soon it sees stop(). */
  pollMs?: number;
}

export interface RingOptions {
  /** Poll errors and a dead worker: events after it are lost, so the owner must hear of it. */
  onError?: (message: string) => void;
}

/** One added ring buffer: its records go to `onBatch`, in order, in batches. */
export class Ring {
  events = 0;
  batches = 0;
  errors: string[] = [];
  constructor(
    readonly mapFd: number,
    readonly size: number,
    private readonly onBatch: (records: Buffer[]) => void,
    private readonly opts: RingOptions,
  ) {}

  /** Splits a batch of ring frames into records, skipping discarded ones. */
  deliver(data: ArrayBuffer): void {
    const u32 = new Uint32Array(data, 0, data.byteLength >>> 2);
    const records: Buffer[] = [];
    for (let off = 0; off + HDR_SZ <= data.byteLength;) {
      const hdr = u32[off >>> 2]!;
      const len = (hdr & ~(BUSY_BIT | DISCARD_BIT)) >>> 0;
      if (!(hdr & DISCARD_BIT)) records.push(Buffer.from(data, off + HDR_SZ, Math.min(len, data.byteLength - off - HDR_SZ)));
      off += (len + HDR_SZ + 7) & ~7;
    }
    if (records.length === 0) return;
    this.events += records.length;
    this.batches++;
    this.onBatch(records);
  }

  fail(message: string): void {
    this.errors.push(message);
    this.opts.onError?.(message);
  }
}

/** Every ring buffer of the process, read by one worker thread. Add the rings, then start. */
export class RingBufferReader {
  private readonly rings: Ring[] = [];
  private worker: Worker | undefined;
  private readonly stopFlag = new SharedArrayBuffer(4);
  private stopped: Promise<void> | undefined;
  private stopping = false;
  private markReady: (() => void) | undefined;
  /** Resolves once the worker has mapped every ring and waits on them (or has died):
   * until then nothing drains them, and a ring fills in about 33 ms at 100,000 events/s. */
  readonly ready: Promise<void> = new Promise((resolve) => (this.markReady = resolve));
  /** Errors that concern no single ring (the worker itself). */
  errors: string[] = [];

  constructor(private readonly opts: RingBufferOptions = {}) {}

  get ringCount(): number {
    return this.rings.length;
  }

  add(mapFd: number, onBatch: (records: Buffer[]) => void, opts: RingOptions = {}): Ring {
    if (this.worker) throw new Error('ring buffers are added before the reader starts');
    const ring = new Ring(mapFd, ringSize(mapFd), onBatch, opts);
    this.rings.push(ring);
    return ring;
  }

  start(): void {
    if (this.worker) return;
    if (this.rings.length === 0) {
      this.markReady?.();
      return;
    }
    const init: WorkerInit = {
      rings: this.rings.map((r) => ({ fd: r.mapFd, size: r.size })),
      stop: this.stopFlag,
      batchMs: this.opts.batchMs ?? 50,
      maxBytes: this.opts.maxBytes ?? 1 << 20,
      pollMs: this.opts.pollMs ?? 100,
    };
    const worker = new Worker(new URL('./ringbuf-worker.js', import.meta.url), { workerData: init });
    this.worker = worker;
    this.stopped = new Promise((resolve) => {
      worker.on('message', (m: WorkerMessage) => {
        if (m.type === 'batch') this.rings[m.ring]?.deliver(m.data);
        else if (m.type === 'ready') {
          this.markReady?.();
          if (!this.stopping) worker.unref(); // from here on the agent's own handles decide its life
        } else if (m.type === 'error') this.fail(m.message, m.ring);
      });
      worker.on('error', (e) => this.fail(`ring buffer worker died: ${String(e)}`));
      worker.on('exit', (code) => {
        this.markReady?.();
        if (!this.stopping) this.fail(`ring buffer worker exited (code ${code}) before it was stopped`);
        resolve();
      });
    });
  }

  private fail(message: string, ring?: number): void {
    if (ring !== undefined) {
      this.rings[ring]?.fail(message);
      return;
    }
    this.errors.push(message);
    for (const r of this.rings) r.fail(message);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    Atomics.store(new Int32Array(this.stopFlag), 0, 1);
    this.worker?.ref(); // the caller awaits the drain: keep the process up until it ends
    await this.stopped;
  }
}
