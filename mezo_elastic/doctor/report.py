"""Turn the doctor's per-rank reports into a verdict and a readable text report (rank 0 prints it)."""

from __future__ import annotations

from typing import Any

from mezo_elastic.doctor.checks import Section


def summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-rank reports: one entry per distinct problem, listing the ranks that hit it.

    Returns:
        {"ok": no errors anywhere, "ranks": [{rank, describe, errors, warnings}], "problems": [...]}.
    """
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    ranks = []
    for i, rep in enumerate(reports):
        rank = rep["rank"] if rep["rank"] is not None else i
        counts = {"error": 0, "warning": 0}
        for sec in rep["sections"]:
            for p in sec["problems"]:
                counts[p["severity"]] += 1
                # The same fault on every rank is one problem; rank-specific text (rank N: ...) stays apart.
                entry = merged.setdefault((p["code"], p["message"], p["severity"]), {**p, "ranks": []})
                entry["ranks"].append(rank)
        ranks.append({"rank": rank, "host": rep["host"], "device": rep["device"], "describe": rep["describe"],
                      "errors": counts["error"], "warnings": counts["warning"]})
    problems = sorted(merged.values(), key=lambda p: (p["severity"] != "error", min(p["ranks"])))
    return {"ok": not any(p["severity"] == "error" for p in problems), "ranks": ranks, "problems": problems}


def _rank_list(ranks: list[int], world: int) -> str:
    if world == 1:
        return "this process"
    if len(ranks) == world:
        return "all ranks"
    return ("rank " if len(ranks) == 1 else "ranks ") + ",".join(map(str, ranks))


def render(sections: list[Section], reports: list[dict[str, Any]], verdict: dict[str, Any]) -> str:
    """The text report: this rank's sections, a line per rank (when several), then problems and fixes."""
    out = [f"mezo_elastic doctor: {len(reports)} rank(s) reporting", ""]
    for sec in sections:
        out.append(f"{sec.title}:")
        out += [f"  {line}" for line in sec.lines]
        out.append("")
    if len(reports) > 1:
        out.append("Ranks:")
        for r in verdict["ranks"]:
            state = "ok" if not r["errors"] else f"{r['errors']} error(s)"
            warn = f", {r['warnings']} warning(s)" if r["warnings"] else ""
            out.append(f"  rank {r['rank']}: {state}{warn}  host={r['host']} device={r['device']}  [{r['describe']}]")
        out.append("")
    errors = [p for p in verdict["problems"] if p["severity"] == "error"]
    warnings = [p for p in verdict["problems"] if p["severity"] != "error"]
    for p in verdict["problems"]:
        out.append(f"{p['severity'].upper()} [{p['code']}] ({_rank_list(p['ranks'], len(reports))}): {p['message']}")
        out.append(f"  fix: {p['fix']}")
    if verdict["ok"]:
        out.append(f"RESULT: OK, no problems found{f' ({len(warnings)} warning(s))' if warnings else ''}")
    else:
        out.append(f"RESULT: {len(errors)} problem(s) found: {', '.join(p['code'] for p in errors)}")
    return "\n".join(out)
