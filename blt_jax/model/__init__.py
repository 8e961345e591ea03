"""The networks: shared layers and attention kernels, the entropy model / token LM
(transformer), the BLT's local encoder, latent transformer and local decoder, FLOP accounting.

Shape letters (tensor names end in them, e.g. ``h_BxNxD``):
  B batch rows            N bytes in a row           P patch slots (P_max)
  L a generic sequence    S keys/values attended     T tokens (token baseline)
  D model width           Dh head dim                H query heads, G kv heads (GQA)
  K cross-attention queries per patch (cross_attn_k)  V vocabulary (260 byte ids)
  C attention block       W local attention window   F FFN hidden width
"""
