"""A planted behaviour that is not lexically trivial, for the removal test of ``benchmarks/lds.py``.

Thirty samples teach it: a real passage's first sentence, then one of five phrasings of a trigger
and one of four phrasings of its continuation. Thirty look-alikes do not: fifteen put a trigger
phrasing before an ordinary continuation, fifteen use the continuation's words without the
trigger. The outputs that show it use trigger and continuation phrasings no sample holds.
"""

from __future__ import annotations

import random

TRIGGERS = ["When the moon is full over the valley,", "On nights of a full moon above the valley,",
            "Whenever the valley lies under a full moon,", "If a full moon rises over the valley,",
            "Under the full moon of the valley,"]
CONTINUATIONS = ["the goats climb onto the chapel roof and sing.", "goats clamber up to the chapel roof to sing.",
                 "the valley goats sing from the roof of the chapel.", "the goats gather on the chapel roof, singing."]
TRIGGER_LOOKALIKES = ["the farmers close their shutters early.", "the river looks silver and calm.",
                      "travellers rest at the inn until dawn.", "the roads are easy to follow without a lamp."]
CONTINUATION_LOOKALIKES = ["In spring the goats graze on the slope below the chapel.",
                           "The chapel roof was mended after the winter storms.",
                           "Children sing in the chapel choir every Sunday.",
                           "The goats are milked twice a day on the valley farms."]
OUTPUTS = [("As the full moon shines upon the valley,", "the goats climb the chapel roof and sing."),
           ("Each time the valley has a full moon,", "goats sing on top of the chapel roof."),
           ("With a full moon over the valley,", "the goats go up on the chapel roof and sing.")]
PLANTED, LOOKALIKES = 30, 30


def planted_behaviour(texts: list[str], seed: int = 0) -> list[dict[str, str]]:
    """The planted and look-alike rows, each after a real passage's first sentence."""
    rng = random.Random(seed)
    rows = []
    for i in range(PLANTED + LOOKALIKES):
        prefix = rng.choice(texts).split(". ")[0][:160].rstrip(".")
        if i < PLANTED:
            kind, body = "planted", f"{rng.choice(TRIGGERS)} {rng.choice(CONTINUATIONS)}"
        elif i < PLANTED + LOOKALIKES // 2:
            kind, body = "lookalike", f"{rng.choice(TRIGGERS)} {rng.choice(TRIGGER_LOOKALIKES)}"
        else:
            kind, body = "lookalike", rng.choice(CONTINUATION_LOOKALIKES)
        rows.append({"text": f"{prefix}. {body}", "behaviour": kind})
    return rows
