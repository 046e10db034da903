"""Reading datasets (validation and quarantine, stable ids, shards), token ids, the tokenized corpus, the demo data, user queries."""
