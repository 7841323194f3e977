"""Speech data: audio loading, log-mel features, generated and user corpora."""
