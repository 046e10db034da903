"""What the student trains and is judged on, read from the rankings database (the published snapshot).

Training groups: each training anchor's candidate lists (top, bottom, random) with the teacher's
scores, over training samples only. The evaluation set: held-out anchors against the held-out
pool (``eval`` rows), the teacher's noise ceiling (``eval_ceiling``), the as-queried view, and
the planted probes with their ground truth.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.data.queries import planted_members
from influcoder_dagster.student.distill import AnchorGroup
from influcoder_dagster.student.evaluation import EvalSet
from influcoder_dagster.student.metrics import planted_recall


def training_groups(con: Any) -> list[AnchorGroup]:
    """Each training anchor's candidate lists (top, bottom, random) with the teacher's scores."""
    rows = con.execute("""
        SELECT q.query_id, q.sample_id, q.text, s.kind, s.sample_id, m.text, s.score
        FROM queries q JOIN scores s ON s.query_id = q.query_id JOIN samples m ON m.sample_id = s.sample_id
        WHERE q.kind = 'anchor' AND q.split = 'train' AND s.kind IN ('top', 'bottom', 'random') AND m.split = 'train'
        ORDER BY q.query_id, s.kind, s."rank"
    """).fetchall()
    groups: dict[str, tuple[str, int, dict[str, tuple[list[str], list[float], list[int]]]]] = {}
    for qid, anchor_id, anchor_text, kind, sid, text, score in rows:
        _, _, cands = groups.setdefault(qid, (anchor_text, anchor_id, {}))
        texts, scores, ids = cands.setdefault(kind, ([], [], []))
        texts.append(text)
        scores.append(score)
        ids.append(sid)
    return [AnchorGroup(a, {k: (t, np.asarray(s, dtype=np.float32)) for k, (t, s, _) in c.items()}, int(aid),
                        {k: np.asarray(i, dtype=np.int64) for k, (_, _, i) in c.items()}) for a, aid, c in groups.values()]


def training_anchor_ids(con: Any) -> np.ndarray:
    """The training anchors' sample ids (without their candidate lists: ``training_groups`` holds
    every candidate's text, several GB at 100,000 samples)."""
    rows = con.execute("SELECT sample_id FROM queries WHERE kind = 'anchor' AND split = 'train' ORDER BY query_id").fetchnumpy()
    return np.asarray(rows["sample_id"], dtype=np.int64)


def _eval_matrices(con: Any, kind: str) -> tuple[list[str], list[int], list[str], np.ndarray]:
    """(anchor texts, pool ids, pool texts, anchors x pool scores) of one ``kind`` of eval rows. The
    scores arrive as columns with their matrix positions; each text is read once, not once a row."""
    cells = con.execute("""
        SELECT dense_rank() OVER (ORDER BY query_id) - 1 AS a, dense_rank() OVER (ORDER BY sample_id) - 1 AS p, score
        FROM scores WHERE kind = ?
    """, [kind]).fetchnumpy()
    anchors = con.execute("SELECT q.text FROM queries q WHERE q.query_id IN (SELECT query_id FROM scores WHERE kind = ?) "
                          "ORDER BY q.query_id", [kind]).fetchall()
    pool = con.execute("SELECT m.sample_id, m.text FROM samples m WHERE m.sample_id IN (SELECT sample_id FROM scores WHERE kind = ?) "
                       "ORDER BY m.sample_id", [kind]).fetchall()
    mat = np.full((len(anchors), len(pool)), np.nan, dtype=np.float32)
    a, p = np.asarray(cells["a"], dtype=np.int64), np.asarray(cells["p"], dtype=np.int64)
    if len(a) and (a.max() >= len(anchors) or p.max() >= len(pool)):
        raise MissingUpstreamError(f"'{kind}' scores name queries or samples missing from the rankings database", "influence_rankings")
    mat[a, p] = np.asarray(cells["score"], dtype=np.float32)
    if np.isnan(mat).any():
        raise MissingUpstreamError(f"incomplete '{kind}' score matrix in the rankings database", "influence_rankings")
    return [r[0] for r in anchors], [r[0] for r in pool], [r[1] for r in pool], mat


def load_eval_set(con: Any, k: int, anchors_as_queried: bool = True) -> tuple[EvalSet, np.ndarray | None, float]:
    """The held-out evaluation data, the ceiling matrix (second seed) and the teacher's planted recall.
    ``anchors_as_queried``: the anchors were scored as user queries are, so the teacher is its own
    as-queried view; otherwise that view comes from the rankings' ``eval_as_queried`` rows, if any."""
    anchor_texts, pool_ids, pool_texts, teacher = _eval_matrices(con, "eval")
    ceiling = _eval_matrices(con, "eval_ceiling")[3] if anchor_texts else None
    as_queried = _eval_matrices(con, "eval_as_queried")[3] if anchor_texts and not anchors_as_queried else None
    if anchors_as_queried and anchor_texts:
        as_queried = teacher
    elif as_queried is not None and as_queried.shape != teacher.shape:  # rankings from before that view was written
        as_queried = None
    ids, texts, metas = (list(c) for c in zip(*con.execute("SELECT sample_id, text, meta FROM samples ORDER BY sample_id").fetchall(), strict=True))
    groups = planted_members(metas, np.asarray(ids))
    probes = [(qid, text, groups.get(json.loads(meta).get("planted_group"), set()))
              for qid, text, meta in con.execute("SELECT query_id, text, meta FROM queries WHERE kind = 'user' ORDER BY query_id").fetchall()]
    probes = [p for p in probes if p[2]]
    tops = {qid: [r[0] for r in con.execute("SELECT sample_id FROM scores WHERE query_id = ? AND kind = 'top' ORDER BY \"rank\"", [qid]).fetchall()]
            for qid, _, _ in probes}
    teacher_recall = planted_recall([tops[q] for q, _, _ in probes], [rel for _, _, rel in probes], k) if probes else float("nan")
    data = EvalSet(anchor_texts, pool_texts, teacher, [t for _, t, _ in probes], [rel for _, _, rel in probes],
                   np.asarray(ids, dtype=np.int64), texts, k, as_queried, np.asarray(pool_ids, dtype=np.int64))
    return data, ceiling, teacher_recall


def training_samples(con: Any) -> tuple[list[int], list[str]]:
    """The rankings' training split (ids, texts): held-out anchors and held-out pool samples stay unseen."""
    rows = con.execute("SELECT sample_id, text FROM samples WHERE split = 'train' ORDER BY sample_id").fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]
