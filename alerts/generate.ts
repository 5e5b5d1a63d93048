// `node dist/alerts/generate.js [--check]`: writes (or checks) alerts/hvwatch.rules.yml and
// alerts/prometheusrule.yaml. Run by `npm run build`. Every expression is checked against
// the catalog first, so a rule naming an unknown metric or label never reaches a file.
import { alertArtifacts } from './render.js';
import { generatorMain, isMain } from './artifacts.js';
import { checkRuleFile } from './promql-check.js';

export function generateAlerts(): Map<string, string> {
  const files = alertArtifacts();
  const problems = checkRuleFile(files.get('alerts/hvwatch.rules.yml')!);
  if (problems.length) throw new Error(`alerts: expressions reference what the catalog does not export:\n  ${problems.join('\n  ')}`);
  return files;
}

if (isMain(import.meta.url)) generatorMain('alerts/generate', generateAlerts());
