"""deploy/k8s/prometheusrule.yaml: alerts.yml as a Prometheus Operator PrometheusRule.

    python deploy/prometheus/prometheusrule.py          # rewrites ../k8s/prometheusrule.yaml
    python deploy/prometheus/prometheusrule.py --check  # exit 1 if the committed file is stale

alerts.yml stays the one place the rules are written (promtool tests it); a test fails while
the two disagree.
"""

import sys
from pathlib import Path
from typing import Any, Final

import yaml

HERE: Final = Path(__file__).resolve().parent
ALERTS: Final = HERE / "alerts.yml"
OUTPUT: Final = HERE.parent / "k8s" / "prometheusrule.yaml"
HEADER: Final = """\
# Generated from deploy/prometheus/alerts.yml by deploy/prometheus/prometheusrule.py: edit
# alerts.yml, then run `make prometheusrule`. The Prometheus Operator loads it; with
# kube-prometheus-stack add the label its ruleSelector expects (by default
# `release: <helm release>`). What each alert means: docs/operations.md.
"""


def build() -> dict[str, Any]:
    alerts = yaml.safe_load(ALERTS.read_text())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "pixelwatch",
            "labels": {"app.kubernetes.io/name": "pixelwatch"},
        },
        "spec": {"groups": alerts["groups"]},
    }


class _Literal(yaml.SafeDumper):
    """Multi-line strings (the expressions) as `|` blocks, as in alerts.yml."""


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Literal.add_representer(str, _string)


def render() -> str:
    body = yaml.dump(build(), Dumper=_Literal, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--check"]:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run python {__file__}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
