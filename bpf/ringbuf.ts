// Main-thread side of ring-buffer consumption: records arrive in batches from a worker
// (bpf/ringbuf-worker.ts). Losses are counted in two places: records the kernel could
// not reserve (each BPF object's hv_errors[RINGBUF_FULL]) and poll errors here.
import { Worker } from 'node:worker_threads';

export interface RingBufferOptions {
  /** Poll errors and a dead worker: events after it are lost, so the caller must hear of it. */
  onError?: (message: string) => void;
  batchMs?: number;
  maxBatch?: number;
  pollMs?: number;
}

export class RingBufferReader {
  events = 0;
  batches = 0;
  errors: string[] = [];
  private worker: Worker | undefined;
  private readonly stopFlag = new SharedArrayBuffer(4);
  private stopped: Promise<void> | undefined;

  constructor(
    readonly mapFd: number,
    private readonly onBatch: (records: Buffer[]) => void,
    private readonly opts: RingBufferOptions = {},
  ) {}

  start(): void {
    const worker = new Worker(new URL('./ringbuf-worker.js', import.meta.url), {
      workerData: {
        mapFd: this.mapFd, stop: this.stopFlag,
        batchMs: this.opts.batchMs ?? 50, maxBatch: this.opts.maxBatch ?? 4096, pollMs: this.opts.pollMs ?? 100,
      },
    });
    this.worker = worker;
    this.stopped = new Promise((resolve) => {
      worker.on('message', (m: { type: string; count?: number; data?: ArrayBuffer; message?: string }) => {
        if (m.type === 'batch' && m.data) this.deliver(Buffer.from(m.data));
        else if (m.type === 'error' && m.message) this.fail(m.message);
      });
      worker.on('error', (e) => this.fail(String(e)));
      worker.on('exit', () => resolve());
    });
    worker.unref();
  }

  private fail(message: string): void {
    this.errors.push(message);
    this.opts.onError?.(message);
  }

  private deliver(buf: Buffer): void {
    const records: Buffer[] = [];
    for (let off = 0; off + 4 <= buf.length; ) {
      const len = buf.readUInt32LE(off);
      records.push(buf.subarray(off + 4, off + 4 + len));
      off += 4 + len;
    }
    this.events += records.length;
    this.batches++;
    this.onBatch(records);
  }

  async stop(): Promise<void> {
    Atomics.store(new Int32Array(this.stopFlag), 0, 1);
    this.worker?.ref(); // the caller awaits the drain: keep the process up until it ends
    await this.stopped;
  }
}
