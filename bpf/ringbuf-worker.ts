// The one worker thread that drains every family's BPF ring buffer, so a burst of events
// never stalls the agent's event loop (scrapes, HTTP) and the process pays for one extra V8
// isolate, not one per family. It reads each ring straight from its mmap instead of through
// libbpf's ring_buffer__poll, whose C->JS callback per record (koffi) and per-record copy
// cost more than the rest of the pipeline: committed records are copied out in contiguous
// spans (headers included) into one transferable ArrayBuffer per ring and batch, and the
// main thread (bpf/ringbuf.ts) walks the headers.
//
// Ring layout and protocol (kernel/bpf/ringbuf.c, libbpf src/ringbuf.c, libbpf 1.1):
//   mmap offset 0: the consumer page, one page, writable: consumer_pos (u64) at its start;
//   mmap offset page_size: the producer page (producer_pos, u64), then the data area of
//   max_entries bytes, mapped twice back to back, so a record that wraps is contiguous.
//   Each record: u32 len with BPF_RINGBUF_BUSY_BIT (1<<31, not committed yet) and
//   BPF_RINGBUF_DISCARD_BIT (1<<30), u32 pg_off, then len bytes; BPF_RINGBUF_HDR_SZ = 8
//   and the next record starts at the total rounded up to 8. The consumer load-acquires
//   producer_pos and each header, and store-releases consumer_pos once it is done with
//   the bytes; the kernel wakes the epoll waiter when it commits the record the consumer
//   is waiting for (cons_pos == rec_pos in bpf_ringbuf_commit's ringbuf notify).
// It deliberately loads its own koffi handles and never calls libbpf_set_print: that hook
// is process-global and belongs to the main thread (bpf/libbpf.ts).
import { parentPort, workerData } from 'node:worker_threads';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const koffi = require('koffi') as typeof import('koffi');

export interface WorkerRing {
  fd: number;
  size: number;
}
export interface WorkerInit {
  rings: WorkerRing[];
  stop: SharedArrayBuffer;
  batchMs: number;
  maxBytes: number;
  pollMs: number;
}
export type WorkerMessage =
  { type: 'batch'; ring: number; data: ArrayBuffer } | { type: 'error'; ring?: number; message: string } | { type: 'ready' } | { type: 'stopped' };

const init = workerData as WorkerInit;
const stop = new Int32Array(init.stop);
const post = (m: WorkerMessage, transfer?: ArrayBuffer[]): void => parentPort!.postMessage(m, transfer);

const libc = koffi.load('libc.so.6');
const mmap = libc.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, long off)');
const munmap = libc.func('int munmap(void *addr, size_t len)');
const sysconf = libc.func('long sysconf(int name)');
const epollCreate1 = libc.func('int epoll_create1(int flags)');
const epollCtl = libc.func('int epoll_ctl(int epfd, int op, int fd, uint8_t *ev)');
const epollWait = libc.func('int epoll_wait(int epfd, _Out_ uint8_t *events, int maxevents, int timeout)');
const close = libc.func('int close(int fd)');
const strerror = libc.func('const char *strerror(int errnum)');

// asm-generic/mman-common.h, mman.h; sys/epoll.h; unistd.h (_SC_PAGESIZE on glibc).
const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;
const EPOLL_CLOEXEC = 0o2000000;
const EPOLL_CTL_ADD = 1;
const EPOLLIN = 1;
const EINTR = 4;
const SC_PAGESIZE = 30;
// struct epoll_event is packed on x86-64: u32 events, u64 data (12 bytes).
const EPOLL_EVENT_SIZE = 12;
const BUSY_BIT = 0x80000000;
const DISCARD_BIT = 0x40000000;
const HDR_SZ = 8;
const MAP_FAILED = 0xffffffffffffffffn;

const errnoText = (): string => {
  const e = koffi.errno();
  return `${strerror(e) as string} (errno ${e})`;
};

class Ring {
  private cons: BigUint64Array;
  private prod: BigUint64Array;
  private headers: Int32Array; // the data area twice, for the header loads
  private bytes: Uint8Array; // the same, for the copies
  private batch: Uint8Array;
  private used = 0;
  private since = 0;
  readonly mapped: { ptr: unknown; len: number }[] = [];

  constructor(
    readonly index: number,
    readonly size: number,
    fd: number,
    page: number,
  ) {
    if (size <= 0 || (size & (size - 1)) !== 0 || size % page !== 0) throw new Error(`ring size ${size} is not a power of 2 multiple of the page size`);
    let consPtr: unknown;
    let prodPtr: unknown;
    try {
      consPtr = this.map(page, PROT_READ | PROT_WRITE, fd, 0);
      prodPtr = this.map(page + 2 * size, PROT_READ, fd, page);
    } catch (e) {
      this.unmap(); // the consumer page, when only the second mapping failed
      throw e;
    }
    this.cons = new BigUint64Array(koffi.view(consPtr, 8));
    const prodArea = koffi.view(prodPtr, page + 2 * size);
    this.prod = new BigUint64Array(prodArea, 0, 1);
    this.headers = new Int32Array(prodArea, page, (2 * size) / 4);
    this.bytes = new Uint8Array(prodArea, page, 2 * size);
    this.batch = new Uint8Array(init.maxBytes);
  }

  private map(len: number, prot: number, fd: number, off: number): unknown {
    const p = mmap(null, len, prot, MAP_SHARED, fd, off);
    if (!p || koffi.address(p) === MAP_FAILED) throw new Error(`mmap of the ring buffer (fd ${fd}, ${len} bytes at ${off}) failed: ${errnoText()}`);
    this.mapped.push({ ptr: p, len });
    return p;
  }

  /** Copies every committed record out and frees its space; returns the bytes consumed. */
  drain(now: number): number {
    let cons = Number(Atomics.load(this.cons, 0));
    const start = cons;
    for (;;) {
      const prod = Number(Atomics.load(this.prod, 0));
      if (cons >= prod) break;
      // Walk the headers to the first uncommitted record; copy what precedes it at once.
      const from = cons;
      let at = cons % this.size;
      const spanStart = at;
      let room = this.batch.length - this.used;
      while (cons < prod) {
        const hdr = Atomics.load(this.headers, at >>> 2) >>> 0;
        if (hdr & BUSY_BIT) break;
        const total = (((hdr & ~(BUSY_BIT | DISCARD_BIT)) >>> 0) + HDR_SZ + 7) & ~7;
        if (total > room) {
          if (cons > from) break; // the batch is full: send it and go on
          if (this.used > 0) {
            this.flush(now);
            room = this.batch.length;
            continue;
          }
          this.batch = new Uint8Array(total); // one record larger than a whole batch
          room = total;
        }
        cons += total;
        at += total;
        room -= total;
      }
      if (cons === from) break; // the next record is still being written
      if (this.used === 0) this.since = now;
      this.batch.set(this.bytes.subarray(spanStart, spanStart + (cons - from)), this.used);
      this.used += cons - from;
      // The bytes are ours now: give the space back before anything else.
      Atomics.store(this.cons, 0, BigInt(cons));
      if (this.batch.length - this.used < 64) this.flush(now);
    }
    return cons - start;
  }

  /** Sends the batch if it is old enough (or `force`). */
  flush(now: number, force = true): void {
    if (this.used === 0 || (!force && now - this.since < init.batchMs)) return;
    const out = this.batch.buffer.byteLength === this.used ? this.batch.buffer : this.batch.buffer.slice(0, this.used);
    post({ type: 'batch', ring: this.index, data: out as ArrayBuffer }, [out as ArrayBuffer]);
    this.batch = new Uint8Array(init.maxBytes);
    this.used = 0;
  }

  /** Milliseconds until the pending batch is due, if there is one. */
  dueIn(now: number): number | undefined {
    return this.used === 0 ? undefined : this.since + init.batchMs - now;
  }

  unmap(): void {
    for (const m of this.mapped.splice(0)) munmap(m.ptr, m.len);
  }
}

function run(): void {
  const page = Number(sysconf(SC_PAGESIZE));
  const epfd = epollCreate1(EPOLL_CLOEXEC) as number;
  if (epfd < 0) {
    post({ type: 'error', message: `epoll_create1 failed: ${errnoText()}` });
    return;
  }
  const rings: Ring[] = [];
  init.rings.forEach((r, i) => {
    let ring: Ring | undefined;
    try {
      ring = new Ring(i, r.size, r.fd, page);
      const ev = Buffer.alloc(EPOLL_EVENT_SIZE);
      ev.writeUInt32LE(EPOLLIN, 0);
      ev.writeUInt32LE(i, 4);
      if ((epollCtl(epfd, EPOLL_CTL_ADD, r.fd, ev) as number) < 0) throw new Error(`epoll_ctl(ADD, fd ${r.fd}) failed: ${errnoText()}`);
      rings.push(ring);
    } catch (e) {
      ring?.unmap();
      post({ type: 'error', ring: i, message: (e as Error).message });
    }
  });
  const events = Buffer.alloc(EPOLL_EVENT_SIZE * Math.max(1, rings.length));
  post({ type: 'ready' });
  try {
    while (rings.length > 0 && Atomics.load(stop, 0) === 0) {
      const now = Date.now();
      let busiest = 0;
      for (const r of rings) busiest = Math.max(busiest, r.drain(now) / r.size);
      for (const r of rings) r.flush(now, false);
      if (busiest > 0) {
        // Records are arriving: let them pile up a little (one wake-up and one drain per
        // millisecond, not per record) unless the ring is filling fast, then drain again.
        if (busiest < 0.25) Atomics.wait(stop, 0, 0, 1);
        continue;
      }
      // Idle: wait for the kernel's wake-up, at most until the oldest batch is due.
      let timeout = init.pollMs;
      for (const r of rings) {
        const due = r.dueIn(now);
        if (due !== undefined) timeout = Math.min(timeout, Math.max(1, due));
      }
      const n = epollWait(epfd, events, rings.length, timeout) as number;
      if (n < 0 && koffi.errno() !== EINTR) {
        post({ type: 'error', message: `epoll_wait failed: ${errnoText()}` });
        break;
      }
    }
    const now = Date.now();
    for (const r of rings) {
      r.drain(now);
      r.flush(now);
    }
  } finally {
    for (const r of rings) r.unmap();
    close(epfd);
  }
}

run();
post({ type: 'stopped' });
// koffi keeps the worker's loop alive; in a worker, process.exit ends only this thread.
process.exit(0);
