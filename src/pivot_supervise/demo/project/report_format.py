"""How the report looks; the demo edits this file to show a code reload."""


def render_report(summary: dict) -> str:
    hot = ", ".join(summary["hot_cities"]) or "none"
    return f"{summary['readings']} readings, mean {summary['mean_celsius']} C, hot: {hot}\n"
