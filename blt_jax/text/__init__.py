"""Text before the network: UTF-8 bytes <-> ids, hash n-gram buckets, patch boundaries.

Everything here is deterministic and model-free (the entropy model's scores come in as arrays),
so the host patcher, the device patch buffer and the decoder share one set of rules.
"""
