// The io.prometheus.client protobuf schema, as protobufjs reflection JSON. Field numbers and
// types are those of prometheus/client_model io/prometheus/client/metrics.proto (the
// native-histogram revision: Histogram fields 5..14, MetricFamily.unit = 5); only the
// messages and fields hvwatch writes are declared, which protobuf allows (an encoder may
// leave optional fields out; a decoder skips unknown ones). Field names are protobufjs'
// camelCase of the .proto names; the wire format depends only on the numbers.
import protobuf from 'protobufjs';

const root = protobuf.Root.fromJSON({
  nested: {
    io: {
      nested: {
        prometheus: {
          nested: {
            client: {
              nested: {
                LabelPair: { fields: { name: { type: 'string', id: 1 }, value: { type: 'string', id: 2 } } },
                MetricType: { values: { COUNTER: 0, GAUGE: 1, SUMMARY: 2, UNTYPED: 3, HISTOGRAM: 4, GAUGE_HISTOGRAM: 5 } },
                Gauge: { fields: { value: { type: 'double', id: 1 } } },
                Counter: { fields: { value: { type: 'double', id: 1 } } },
                BucketSpan: { fields: { offset: { type: 'sint32', id: 1 }, length: { type: 'uint32', id: 2 } } },
                Bucket: { fields: { cumulativeCount: { type: 'uint64', id: 1 }, upperBound: { type: 'double', id: 2 } } },
                Histogram: {
                  fields: {
                    sampleCount: { type: 'uint64', id: 1 },
                    sampleSum: { type: 'double', id: 2 },
                    bucket: { rule: 'repeated', type: 'Bucket', id: 3 },
                    schema: { type: 'sint32', id: 5 },
                    zeroThreshold: { type: 'double', id: 6 },
                    zeroCount: { type: 'uint64', id: 7 },
                    positiveSpan: { rule: 'repeated', type: 'BucketSpan', id: 12 },
                    positiveDelta: { rule: 'repeated', type: 'sint64', id: 13 },
                  },
                },
                Metric: {
                  fields: {
                    label: { rule: 'repeated', type: 'LabelPair', id: 1 },
                    gauge: { type: 'Gauge', id: 2 },
                    counter: { type: 'Counter', id: 3 },
                    histogram: { type: 'Histogram', id: 7 },
                  },
                },
                MetricFamily: {
                  fields: {
                    name: { type: 'string', id: 1 },
                    help: { type: 'string', id: 2 },
                    type: { type: 'MetricType', id: 3 },
                    metric: { rule: 'repeated', type: 'Metric', id: 4 },
                    unit: { type: 'string', id: 5 },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
});

export const MetricFamilyType = root.lookupType('io.prometheus.client.MetricFamily');
export const METRIC_TYPE = { counter: 0, gauge: 1, histogram: 4 } as const;

/** What Prometheus sends in Accept when it can read native histograms (scrape/scrape.go). */
export const PROTOBUF_CONTENT_TYPE = 'application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited';

export interface DecodedFamily {
  name: string;
  help: string;
  type: number;
  metric: {
    label: { name: string; value: string }[];
    counter?: { value: number };
    gauge?: { value: number };
    histogram?: {
      sampleCount: number;
      sampleSum: number;
      schema: number;
      zeroThreshold: number;
      zeroCount: number;
      positiveSpan: { offset: number; length: number }[];
      positiveDelta: number[];
      bucket: { cumulativeCount: number; upperBound: number }[];
    };
  }[];
}

/** A delimited protobuf exposition, decoded with the same schema (tests, `hvwatch top`). */
export function decodeProtobufExposition(buf: Uint8Array): DecodedFamily[] {
  const reader = protobuf.Reader.create(buf);
  const out: DecodedFamily[] = [];
  while (reader.pos < reader.len) {
    const msg = MetricFamilyType.decodeDelimited(reader);
    out.push(MetricFamilyType.toObject(msg, { longs: Number, defaults: true, arrays: true }) as DecodedFamily);
  }
  return out;
}
