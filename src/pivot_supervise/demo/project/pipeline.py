"""A small weather pipeline: clean raw readings, summarise them, write a report."""

import csv
import json
from pathlib import Path

from report_format import render_report

from pivot_supervise import stage


@stage(deps=["data/raw.csv"], outs=["data/clean.csv"])
def clean() -> None:
    """Drop readings that are missing or not numbers."""
    with open("data/raw.csv", newline="") as source:
        rows = [r for r in csv.DictReader(source) if r["celsius"].strip().lstrip("-").isdigit()]
    with open("data/clean.csv", "w", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=["city", "celsius"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"kept {len(rows)} readings")


@stage(deps=["data/clean.csv"], outs=["reports/summary.json"])
def summarize(params: dict) -> None:
    """Average temperature, and the cities above the params' `hot` threshold."""
    with open("data/clean.csv", newline="") as source:
        rows = list(csv.DictReader(source))
    temps = [int(r["celsius"]) for r in rows]
    summary = {
        "readings": len(temps),
        "mean_celsius": round(sum(temps) / len(temps), 2) if temps else None,
        "hot_cities": sorted({r["city"] for r in rows if int(r["celsius"]) >= params["hot"]}),
    }
    Path("reports").mkdir(exist_ok=True)
    Path("reports/summary.json").write_text(json.dumps(summary, indent=2) + "\n")


@stage(deps=["reports/summary.json"], outs=["reports/report.txt"])
def report() -> None:
    """A human-readable report of the summary."""
    summary = json.loads(Path("reports/summary.json").read_text())
    Path("reports/report.txt").write_text(render_report(summary))
