// The types @grafana/grafana-foundation-sdk carries for what hvwatch's dashboards use, under
// one name each, for test/dashboards-schema.test.ts to turn into one JSON Schema
// (ts-json-schema-generator). The SDK ships no JSON Schema or OpenAPI file (its package
// holds only JavaScript and .d.ts files), so its TypeScript types are the schema it carries.
import type * as dashboard from '@grafana/grafana-foundation-sdk/dashboard';
import type * as prometheus from '@grafana/grafana-foundation-sdk/prometheus';
import type * as timeseries from '@grafana/grafana-foundation-sdk/timeseries';
import type * as heatmap from '@grafana/grafana-foundation-sdk/heatmap';
import type * as stat from '@grafana/grafana-foundation-sdk/stat';
import type * as table from '@grafana/grafana-foundation-sdk/table';
import type * as bargauge from '@grafana/grafana-foundation-sdk/bargauge';

export type GrafanaDashboard = dashboard.Dashboard;
export type PrometheusQuery = prometheus.Dataquery;
export type TimeseriesOptions = timeseries.Options;
export type TimeseriesFieldConfig = timeseries.FieldConfig;
export type HeatmapOptions = heatmap.Options;
export type HeatmapFieldConfig = heatmap.FieldConfig;
export type StatOptions = stat.Options;
export type TableOptions = table.Options;
export type TableFieldConfig = table.FieldConfig;
export type BarGaugeOptions = bargauge.Options;
