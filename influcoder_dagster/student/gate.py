"""The encoder's quality gate: promote a new version only when it beats every baseline and the champion."""

from __future__ import annotations

import numpy as np


def promotion_decision(table: dict[str, dict[str, float]], champion_spearman: float | None) -> tuple[bool, str]:
    """Promote only if the student beats every baseline and the current champion on held-out Spearman."""
    student = table["student"].get("spearman")
    if student is None:
        return False, "no held-out anchors: nothing to compare on"
    if not np.isfinite(student):  # e.g. a collapsed encoder giving every sample the same score
        return False, f"held-out Spearman is {student}: the student's scores carry no ranking"
    for baseline in ("untrained", "bm25", "random"):
        if student <= table[baseline].get("spearman", -1.0):
            return False, f"held-out Spearman {student:.3f} does not beat {baseline} ({table[baseline]['spearman']:.3f})"
    if champion_spearman is not None and student <= champion_spearman:
        return False, f"held-out Spearman {student:.3f} does not beat the champion's {champion_spearman:.3f}"
    return True, f"held-out Spearman {student:.3f} beats every baseline" + (f" and the champion's {champion_spearman:.3f}" if champion_spearman is not None else "")


def prior_warning(table: dict[str, dict[str, float]], objective: str = "gradient_sketch") -> str | None:
    """A warning when the student does not beat the teacher prior (one ranking for every query).

    Not a gate: a refused student leaves the untrained encoder serving, which ranks worse still
    (SmolLM2 with a rankings student: prior 0.336, student 0.114, untrained 0.098), so the user
    is told what the figures mean instead."""
    prior, student = table.get("teacher_prior"), table.get("student", {})
    if not prior:
        return None
    for view in ("spearman", "spearman_as_queried"):
        s, p = student.get(view), prior.get(view)
        if s is not None and p is not None and np.isfinite(s) and np.isfinite(p) and s <= p:
            return (f"the student's held-out {view} ({s:.3f}) does not beat the teacher prior ({p:.3f}), which ranks the pool "
                    "the same way for every query: its answers are mostly one popularity order, not attribution. "
                    + ("Try encoder.objective = 'gradient_sketch', " if objective != "gradient_sketch" else "Try ")
                    + "more training samples, or check the rankings' anchors")
    return None
