"""The student: the encoder, its objectives and losses, the gradient sketch, evaluation against the teacher, the quality gate, MLflow."""
