"""Three small JSONL files and a rankings build on them: shared by the incremental tests of the stages and of Dagster."""

import json

import numpy as np

from influcoder_dagster.core.config import Config
from influcoder_dagster.stages.base_model import run_base_model
from influcoder_dagster.stages.corpus import run_all_shards
from influcoder_dagster.stages.rankings import run_influence_rankings
from influcoder_dagster.teacher.rankings_db import connect_readonly

FILES = {
    "a.jsonl": [f"sample number {i} talks about topic {i % 7} and ends here." for i in range(60)],
    "b.jsonl": [f"the topic {i % 5} is covered by sample {i} twice." for i in range(50)],
    "c.jsonl": [f"sample {i} ends here about number {i % 3}." for i in range(40)],
}


WEIGHTS_TEACHER = {"dim": 256, "kind": "logra", "target": "weights", "adam_precondition": False}  # corpus-independent
DEFAULT_TEACHER = {"dim": 256}  # the output head whitened by the logits' Fisher diagonal, as shipped
LORA_ADAM_TEACHER = {"dim": 256, "target": "lora", "adam_precondition": True, "lora_warmup_steps": 10}  # LESS; the warm-up kept short


def configure(home, data_dir, names, lm, precondition=False, projection=WEIGHTS_TEACHER):
    """Write the named files (only those) into ``data_dir`` and a user query; return the config."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for f in data_dir.iterdir():
        f.unlink()
    for name in names:
        (data_dir / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in FILES[name]))
    queries = home.parent / f"{home.name}-queries.jsonl"
    queries.write_text(json.dumps({"query_id": "u1", "text": "sample number 3 talks about topic 3", "prompt": "sample number"}) + "\n")
    return Config.model_validate({
        "home": str(home), "dataset": {"path": str(data_dir), "queries_path": str(queries)},
        "model": {"base_model": str(lm), "max_length": 32}, "projection": projection,
        "rankings": {"anchor_fraction": 0.2, "top_k": 8, "n_bottom": 4, "n_random": 6, "eval_pool_size": 20,
                     "block_rows": 16, "precondition": precondition},
    })


def build(home, data_dir, names, lm, precondition=False, projection=WEIGHTS_TEACHER):
    cfg = configure(home, data_dir, names, lm, precondition, projection)
    run_base_model(cfg)
    run_all_shards(cfg, progress=False)
    return run_influence_rankings(cfg, progress=False)


def lists(home):
    con = connect_readonly(home)
    rows = con.execute("""SELECT query_id, kind, list(sample_id ORDER BY "rank"), list(score ORDER BY "rank")
                          FROM scores WHERE kind IN ('top', 'bottom') GROUP BY ALL""").fetchall()
    samples = {s for (s,) in con.execute("SELECT sample_id FROM samples").fetchall()}
    return {(q, k): (ids, np.array(s)) for q, k, ids, s in rows}, samples


def assert_same_rankings(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key][0] == b[key][0], key
        np.testing.assert_allclose(a[key][1], b[key][1], rtol=1e-5, atol=1e-6)


def pair_scores(home, kinds=("eval", "eval_ceiling", "eval_as_queried", "random")):
    """(query, sample, kind) -> score of the non-list rows."""
    con = connect_readonly(home)
    rows = con.execute("SELECT query_id, sample_id, kind, score FROM scores WHERE kind IN (SELECT unnest(?))", [list(kinds)]).fetchall()
    con.close()
    return {(q, s, k): v for q, s, k, v in rows}
