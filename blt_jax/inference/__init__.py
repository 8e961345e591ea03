"""Using a trained model: `load` a workdir, score, patch and generate (patch-aware incremental
BLT decoding, KV-cached token baseline, sampling).
"""
