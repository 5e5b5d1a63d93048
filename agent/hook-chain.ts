// One attached program per hook, whatever number of families watch it (bpf/src/hook_chain.h).
// A program with a `hv_next_<program>` prog-array map in its family is chainable: the first
// one on a hook is attached, each further one is stored in the previous one's slot, and
// runs by tail call after it. Families stay separate objects: each loads, fails and reports
// on its own, and a family whose program is not there simply is not in the chain.
import type { BpfProgram, MapFd } from '../bpf/libbpf.js';

export const CHAIN_MAP_PREFIX = 'hv_next_';

interface Member {
  probe: string;
  program: BpfProgram;
  next: MapFd;
}

const KEY0 = Buffer.alloc(4);

export class HookChains {
  private readonly chains = new Map<string, Member[]>();

  /** The probe whose program runs last on this hook (the one a new program follows), if any. */
  tail(hook: string): string | undefined {
    return this.chains.get(hook)?.at(-1)?.probe;
  }

  /** Record the program attached to the hook (the head). */
  head(hook: string, m: Member): void {
    this.chains.set(hook, [m]);
  }

  /** Run `m` after the hook's current last program. Returns an undo. */
  append(hook: string, m: Member): () => void {
    const chain = this.chains.get(hook);
    const last = chain?.at(-1);
    if (!chain || !last) throw new Error(`no program on ${hook} to chain after`);
    const fd = Buffer.alloc(4);
    fd.writeUInt32LE(m.program.fd);
    last.next.update(KEY0, fd);
    chain.push(m);
    return () => {
      last.next.delete(KEY0);
      chain.splice(chain.indexOf(m), 1);
    };
  }

  /** Probes on each shared hook, in the order they run (for the probe report). */
  members(): Map<string, string[]> {
    return new Map([...this.chains].map(([h, ms]) => [h, ms.map((m) => m.probe)]));
  }
}
