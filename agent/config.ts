// Configuration: a YAML file checked by a zod schema, then command-line flags on top.
// A bad file is one line naming the file, the key and the problem (exit 2).
import * as fs from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';
import { alertingConfigSchema } from './alerting/config.js';
import { ATTACH_KINDS } from '../bpf/libbpf.js';

const listenSchema = z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[\w.-]*):\d{1,5}$/, 'expected host:port, :port or [v6]:port');

export const configSchema = z
  .object({
    listen: listenSchema.default(':9477'),
    probes: z
      .object({
        /** Probe names not to attach. */
        disable: z.array(z.string()).default([]),
        /** Hot probes to opt into (their cost is in bench/RESULTS.md), or ["all"]. */
        hot: z.array(z.string()).default([]),
        /** Per-probe candidate override: restrict tiers or retarget a renamed symbol. */
        attach: z
          .record(
            z.string(),
            z
              .array(
                z
                  .object({
                    attach: z.enum(ATTACH_KINDS),
                    target: z.string().min(1),
                  })
                  .strict(),
              )
              .min(1),
          )
          .default({}),
      })
      .strict()
      .default({}),
    cardinality: z
      .object({
        cgroups: z.number().int().positive().max(100000).default(2000),
        vms: z.number().int().positive().max(100000).default(256),
      })
      .strict()
      .default({}),
    bpf: z
      .object({
        /** Account BPF run time (BPF_ENABLE_STATS) while the agent runs. */
        stats: z.boolean().default(false),
        /** Entries of each per-cgroup/per-VM stats map. */
        mapEntries: z
          .number()
          .int()
          .min(64)
          .max(1 << 20)
          .default(10240),
        /** Folios under writeback tracked by the race indicators (LRU: evictions are counted). */
        raceStateEntries: z
          .number()
          .int()
          .min(1024)
          .max(1 << 24)
          .default(65536),
        /** External BTF for kernels without /sys/kernel/btf/vmlinux (e.g. from BTFHub). */
        btfPath: z.string().optional(),
        /** Where probes keep per-thread state: "auto" (task storage where the kernel has it, else
         * hash maps) or "hash" (always the hash-map tier). */
        threadState: z.enum(['auto', 'hash']).default('auto'),
      })
      .strict()
      .default({}),
    cgroups: z
      .object({
        /** Mount point of the memory cgroup hierarchy; detected from mountinfo when unset. */
        root: z.string().optional(),
        /** namespace/pod/container labels from kubelet cgroup paths (agent/k8s.ts); auto: when
         * KUBERNETES_SERVICE_HOST is set, i.e. inside a pod. */
        kubernetes: z.union([z.literal('auto'), z.boolean()], { errorMap: () => ({ message: 'expected auto, true or false' }) }).default('auto'),
        /** The kubelet's pod log directories (<namespace>_<pod>_<uid>): pod uid -> names. */
        podLogsDir: z.string().min(1).default('/var/log/pods'),
        /** The kubelet's container log links (<pod>_<namespace>_<container>-<id>.log): id -> container. */
        containerLogsDir: z.string().min(1).default('/var/log/containers'),
        /** How long a removed cgroup's series stay, so a scrape sees its final counts (the
         * cgroup counterpart of kvm.exitedVmSeconds; README "Series lifecycle"). */
        removedSeconds: z.number().min(0).max(3600).default(60),
      })
      .strict()
      .default({}),
    kvm: z
      .object({
        /** Also count exits per vCPU (hvwatch_kvm_vcpu_exits_total): one series per vCPU. */
        vcpuLabel: z.boolean().default(false),
        /** How long a VM's series stay after its VMM exits, so a scrape sees its last counts
         * (what happens while a VM dies, e.g. an injection after teardown). */
        exitedVmSeconds: z.number().min(0).max(3600).default(60),
      })
      .strict()
      .default({}),
    /** In-process alerting to Alertmanager (agent/alerting): off while no alertmanagers are set. */
    alerting: alertingConfigSchema.default({}),
    /** The HTTP endpoint's protection and bounds (agent/export/guard.ts, README "Securing the endpoint"). */
    web: z
      .object({
        /** exporter-toolkit web config file: TLS, basic auth, headers (as node_exporter --web.config.file). */
        configFile: z.string().min(1).optional(),
        /** Requests handled at once; more get 503 (0: no cap; node_exporter's --web.max-requests). */
        maxRequests: z.number().int().min(0).max(100000).default(40),
        /** Open connections; more are closed on accept (0: no cap). */
        maxConnections: z.number().int().min(0).max(100000).default(256),
        /** Seconds for a client's request headers (and TLS handshake) to arrive. */
        headersTimeout: z.number().positive().max(3600).default(10),
        /** Seconds for a whole request to arrive, and for the agent to answer it. */
        requestTimeout: z.number().positive().max(3600).default(30),
        /** gzip /metrics when the scraper's Accept-Encoding admits it (Prometheus always does). */
        compression: z.boolean().default(true),
        /** Bytes of request line plus headers; larger requests get 431. */
        maxHeaderBytes: z
          .number()
          .int()
          .min(1024)
          .max(1 << 20)
          .default(8192),
      })
      .strict()
      .default({}),
    privileges: z
      .object({
        /** Drop every capability once the probes are attached (README "Privileges"). */
        dropCapabilities: z.boolean().default(false),
        /** Also switch to this user (name or uid; needs CAP_SETUID/CAP_SETGID): clears the
         * capabilities of every thread, not only the main one. */
        user: z.string().min(1).optional(),
      })
      .strict()
      .default({}),
    logLevel: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
  })
  .strict();

export type Config = z.infer<typeof configSchema>;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

function keyPath(path: (string | number)[]): string {
  return path.length ? path.join('.') : '(top level)';
}

export function parseConfig(text: string, file: string): Config {
  let raw: unknown;
  try {
    raw = parseYaml(text, { prettyErrors: false }) ?? {};
  } catch (e) {
    const where = e instanceof YAMLParseError && e.linePos ? ` line ${e.linePos[0].line}` : '';
    throw new ConfigError(`${file}:${where} invalid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  const r = configSchema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const key = issue.code === 'unrecognized_keys' ? [...issue.path, issue.keys.join(',')] : issue.path;
    throw new ConfigError(`${file}: key ${keyPath(key)}: ${issue.message}`);
  }
  return r.data;
}

export function loadConfig(file: string | undefined): Config {
  if (!file) return configSchema.parse({});
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(`${file}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseConfig(text, file);
}

/** "host:port" / ":port" / "[v6]:port" -> listen arguments. */
export function parseListen(listen: string): { host: string | undefined; port: number } {
  const r = listenSchema.safeParse(listen);
  if (!r.success) throw new ConfigError(`listen address ${JSON.stringify(listen)}: ${r.error.issues[0]!.message}`);
  const i = listen.lastIndexOf(':');
  const host = listen.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(listen.slice(i + 1));
  if (port > 65535) throw new ConfigError(`listen address ${listen}: port out of range`);
  return { host: host || undefined, port };
}
