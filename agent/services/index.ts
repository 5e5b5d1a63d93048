// The services of one agent: created once per Agent (agent/agent.ts) and handed to every
// family's factory, create(config, services) (families/<name>/family.ts), instead of state
// kept in modules. What a family may use of them is the Services interface of the model
// (agent/model/family.ts); the agent also drives their collection-wide steps.
import type { Config } from '../config.js';
import type { CollectContext, Services } from '../model/family.js';
import type { MetricStore } from '../export/store.js';
import { Kernel } from '../kernel.js';
import { KernelSymbols } from '../symbols.js';
import { VmLabelService } from './vm-labels.js';

export class AgentServices implements Services {
  /** /proc/kallsyms: read once for every family's detection, symbolizes stacks after. */
  readonly symbols = new KernelSymbols();
  /** Release, BTF (config bpf.btfPath or vmlinux, and modules), the loader's prechecks. */
  readonly kernel: Kernel;
  /** The `vm` label shared by the KVM-side families, with its linger (kvm.exitedVmSeconds). */
  readonly vms: VmLabelService;

  constructor(config: Config) {
    this.kernel = new Kernel(this.symbols, config.bpf.btfPath);
    this.vms = new VmLabelService(config.kvm.exitedVmSeconds * 1000);
  }

  /** After every family collected: what spans families is published once, complete. */
  afterCollect(ctx: CollectContext, store: MetricStore): void {
    this.vms.publish(ctx, store);
  }

  /** Start-up is over: drop what only detection and attach needed. */
  started(): void {
    this.symbols.release();
  }
}
