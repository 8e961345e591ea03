"""Input pipelines: the embedded corpus, grain byte/token streams, the offline TFDS builder and
precomputed-entropy shards. Nothing here knows the model; it yields fixed-shape id batches.
"""
