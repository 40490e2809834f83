// tailwatch's monitoring mixin for jsonnet users (jsonnet-bundler, kube-prometheus), in the
// shape every monitoring mixin has: prometheusAlerts, prometheusRules, grafanaDashboards and
// _config. It reads the files `tailwatch generate all` writes (alerts/*.rules.yaml and
// dashboards/*.json), so it is the same mixin as the Python one, never a second copy to keep
// in step (docs/alerts.md, "As a jsonnet mixin").
//
//   local tailwatch = (import 'tailwatch/mixin.libsonnet') + {
//     _config+:: { nativeHistograms: true },
//   };
//   { 'tailwatch.rules.json': tailwatch.prometheusRules + tailwatch.prometheusAlerts }
//
// Selectors, windows and thresholds are set in the Python mixin config and baked into the
// generated files: to use other values, generate them with
// `tailwatch generate all --config FILE --out DIR`, copy this file into DIR and import it
// from there.
{
  _config+:: {
    // The rules for a Prometheus that stores the agents' histograms as native histograms
    // (--enable-feature=native-histograms, the chart's prometheus.nativeHistograms); the
    // dashboards read either form.
    nativeHistograms: false,
  },

  local classic = std.parseYaml(importstr 'alerts/tailwatch.rules.yaml'),
  local native = std.parseYaml(importstr 'alerts/tailwatch-native.rules.yaml'),
  local groups = (if $._config.nativeHistograms then native else classic).groups,
  local hasAlerts(group) = std.length([r for r in group.rules if std.objectHas(r, 'alert')]) > 0,

  // The alerting groups (tailwatch-*.alerts) and the recording groups (tailwatch-*.rules) of
  // the generated rule file, in its order.
  prometheusAlerts+:: {
    groups+: [g for g in groups if hasAlerts(g)],
  },
  prometheusRules+:: {
    groups+: [g for g in groups if !hasAlerts(g)],
  },

  grafanaDashboards+:: {
    'tailwatch-overview.json': std.parseJson(importstr 'dashboards/tailwatch-overview.json'),
    'tailwatch-service.json': std.parseJson(importstr 'dashboards/tailwatch-service.json'),
    'tailwatch-node.json': std.parseJson(importstr 'dashboards/tailwatch-node.json'),
  },
}
