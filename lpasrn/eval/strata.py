"""Accuracy by degradation strength: where does SR fail?

Synthetic plates record the strength their LR got (`degradation`: {parameter: number}, see
lpasrn.data.degrade.degrade_recorded). For each parameter, the plates that have it are split into
terciles of its value (low / mid / high) and every bin gets the same metrics as the whole split;
plates without the parameter (e.g. `jpeg_quality` when no JPEG was drawn, or real LR) form a
`none` bin. Like every other summary, this is a function of the sid-sorted records alone.
"""
from __future__ import annotations

BIN_NAMES = ("low", "mid", "high")


def tercile_edges(values: list[float]) -> tuple[float, float]:
    """The values at 1/3 and 2/3 of the sorted list: low <= first < mid <= second < high."""
    ordered = sorted(values)
    n = len(ordered)
    return ordered[(n - 1) // 3], ordered[(2 * (n - 1)) // 3]


def bin_of(value: float, edges: tuple[float, float]) -> str:
    if value <= edges[0]:
        return "low"
    return "mid" if value <= edges[1] else "high"


def parameter_bins(records: list[dict], parameter: str) -> dict[str, list[dict]]:
    """{bin name: records} for one parameter; empty bins are left out (ties can empty a tercile)."""
    values = [r["degradation"][parameter] for r in records if parameter in (r.get("degradation") or {})]
    edges = tercile_edges(values) if values else (0.0, 0.0)
    bins: dict[str, list[dict]] = {name: [] for name in BIN_NAMES + ("none",)}
    for record in records:
        params = record.get("degradation") or {}
        bins[bin_of(params[parameter], edges) if parameter in params else "none"].append(record)
    return {name: group for name, group in bins.items() if group}


def degradation_metrics(records: list[dict], variant_metrics) -> dict:
    """{parameter: {bin: {"range": [min, max] or None, **variant_metrics(bin records)}}}; {} when no
    record carries degradation parameters (real data)."""
    parameters = sorted({key for r in records for key in (r.get("degradation") or {})})
    result = {}
    for parameter in parameters:
        result[parameter] = {}
        for name, group in parameter_bins(records, parameter).items():
            values = [r["degradation"][parameter] for r in group if parameter in (r.get("degradation") or {})]
            value_range = [min(values), max(values)] if values else None
            result[parameter][name] = {"range": value_range, **variant_metrics(group)}
    return result


def degradation_lines(by_degradation: dict, variants=("lr_bicubic", "sr", "hr")) -> list[str]:
    """A plain-text table: one row per parameter and bin, word accuracy of each variant."""
    if not by_degradation:
        return []
    lines = [f"{'degradation':<17} {'bin':<5} {'range':>15} " + " ".join(f"{v:>10}" for v in variants)
             + f" {'plates':>7}"]
    for parameter, bins in by_degradation.items():
        for name, m in bins.items():
            span = f"{m['range'][0]:.3g}..{m['range'][1]:.3g}" if m["range"] else "-"
            rates = " ".join(f"{m[v]['recognition_rate']:>10.4f}" for v in variants)
            lines.append(f"{parameter:<17} {name:<5} {span:>15} {rates} {m[variants[0]]['count']:>7d}")
    return lines
