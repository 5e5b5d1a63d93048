// The `alerting:` section of the agent's config. A fragment on its own so that
// agent/config.ts can merge it (`alerting: alertingConfigSchema`) without this module
// depending on the rest of the config.
import { z } from 'zod';

/** Labels the module sets itself; extra labels may not replace them. */
export const RESERVED_LABELS = ['alertname', 'severity'] as const;

const labelName = z.string().regex(/^[a-zA-Z_][a-zA-Z0-9_]*$/, 'expected a Prometheus label name');

const alertmanagerUrl = z
  .string()
  .url()
  .refine((u) => {
    try {
      return /^https?:$/.test(new URL(u).protocol);
    } catch {
      return true; // not a URL at all: .url() has said so already
    }
  }, 'expected an http:// or https:// URL');

export const alertingConfigSchema = z
  .object({
    /** Alertmanager base URLs (e.g. http://alertmanager:9093); empty: evaluate only, send nothing. */
    alertmanagers: z.array(alertmanagerUrl).default([]),
    /** One POST may take this long before it is abandoned (and retried). */
    timeoutSeconds: z.number().positive().max(60).default(10),
    /** Firing alerts are re-sent this often, so Alertmanager keeps them active. */
    resendIntervalSeconds: z.number().min(1).max(3600).default(60),
    /** How often the conditions are evaluated when the module runs its own timer. */
    evaluationIntervalSeconds: z.number().min(0.1).max(300).default(5),
    /** An increase-type alert (races, ring-buffer drops) stays firing this long after the last increase. */
    holdSeconds: z.number().min(0).max(86400).default(600),
    /** Alerts waiting per Alertmanager; past it the oldest are dropped and counted. */
    queueSize: z.number().int().min(1).max(100000).default(1000),
    backoff: z
      .object({
        initialSeconds: z.number().positive().max(60).default(0.5),
        maxSeconds: z.number().positive().max(600).default(30),
        /** Attempts per batch, the first included, before the batch is dropped and counted. */
        maxAttempts: z.number().int().min(1).max(100).default(5),
      })
      .strict()
      .default({}),
    /** Added to every alert (e.g. cluster: set them to Prometheus' external_labels); may override instance and job, not alertname or severity. */
    extraLabels: z
      .record(labelName, z.string())
      .default({})
      .refine((l) => RESERVED_LABELS.every((r) => !(r in l)), `extraLabels may not set ${RESERVED_LABELS.join(' or ')}`),
  })
  .strict()
  .default({});

export type AlertingConfig = z.infer<typeof alertingConfigSchema>;
