"""The query side: the FAISS index, the ONNX query encoder, attribution with an optional exact re-rank, audits."""
