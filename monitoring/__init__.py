"""The monitoring bundle: rules, PrometheusRule, Grafana dashboards and a jsonnet mixin, all
generated from the one settings file `alerts/config.yml` (`python alerts/generate.py`)."""
