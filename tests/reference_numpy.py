"""An independent, slow float64 numpy restatement of the reference BLT forward (spec §4-§8).

It reads a *reference-format* state dict (torch names, Linear weights [out, in]) and the
reference's own argument names, builds every mask densely from its definition, and loops where
that is clearer. It shares no code with blt_jax, so it checks the conversion conventions
(transposes, k-row splits, RoPE pairing, hash order, double residual, d(i) = p(i+1) - 1).
"""

import numpy as np

PRIMES = [1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899, 9576890767,
          3628273133, 2860486313, 5463458053, 3367900313]


def hash_bucket(window, prime, vocab):
    s = sum(int(w) * prime ** j for j, w in enumerate(window)) % 2 ** 64
    s = s - 2 ** 64 if s >= 2 ** 63 else s
    return s % vocab


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, theta):  # x: (L, H, D), positions 0..L-1, pairs (2m, 2m+1)
    out = x.copy()
    d = x.shape[-1]
    for t in range(x.shape[0]):
        for m in range(d // 2):
            a = t * theta ** (-2 * m / d)
            c, s = np.cos(a), np.sin(a)
            x0, x1 = x[t, :, 2 * m], x[t, :, 2 * m + 1]
            out[t, :, 2 * m], out[t, :, 2 * m + 1] = x0 * c - x1 * s, x0 * s + x1 * c
    return out


def softmax_masked(s, mask):
    s = np.where(mask, s, -np.inf)
    top = np.max(np.where(mask, s, -1e300), axis=-1, keepdims=True)
    e = np.where(mask, np.exp(s - top), 0.0)
    z = e.sum(-1, keepdims=True)
    return np.where(z > 0, e / np.where(z > 0, z, 1), 0.0)


def attend(q, k, v, mask):  # q (L, H, D), k/v (S, G, D), mask (L, S)
    h, g, d = q.shape[1], k.shape[1], q.shape[2]
    rep = h // g
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)  # head i -> kv head i // rep
    s = np.einsum("lhd,shd->hls", q, k) / np.sqrt(d)
    return np.einsum("hls,shd->lhd", softmax_masked(s, mask[None]), v)


def block(sd, pre, x, n_heads, n_kv, mask, theta, eps):
    W = lambda name: sd[f"{pre}.{name}.weight"]  # noqa: E731
    xn = rms(x, W("attention_norm"), eps)
    L, d = x.shape
    dh = d // n_heads
    q = (xn @ W("attention.wq").T).reshape(L, n_heads, dh)
    k = (xn @ W("attention.wk").T).reshape(L, n_kv, dh)
    v = (xn @ W("attention.wv").T).reshape(L, n_kv, dh)
    o = attend(rope(q, theta), rope(k, theta), v, mask).reshape(L, d)
    h = x + o @ W("attention.wo").T
    hn = rms(h, W("ffn_norm"), eps)
    g = hn @ W("feed_forward.w1").T
    return h + ((g / (1 + np.exp(-g))) * (hn @ W("feed_forward.w3").T)) @ W("feed_forward.w2").T


def cross_attention(sd, pre, x, kv, n_heads, mask, eps):
    """CrossAttention.forward: returns x + attn (callers add it to x again)."""
    W = lambda name: sd[f"{pre}.{name}.weight"]  # noqa: E731
    xq, kvn = rms(x, W("cross_attn_norm_q"), eps), rms(kv, W("cross_attn_norm_kv"), eps)
    d = x.shape[1]
    dh = d // n_heads
    q = (xq @ W("wq").T).reshape(len(x), n_heads, dh)
    k = (kvn @ W("wk").T).reshape(len(kv), n_heads, dh)
    v = (kvn @ W("wv").T).reshape(len(kv), n_heads, dh)
    return x + attend(q, k, v, mask).reshape(len(x), d) @ W("wo").T


def local_mask(ids, window, eos=2):
    n = len(ids)
    seg = np.concatenate([[0], np.cumsum(np.asarray(ids) == eos)[:-1]])
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    return (i - j >= 0) & (i - j < window) & (seg[:, None] == seg[None, :])


def blt_logits(sd, m, ids, lengths):
    """Reference ByteLatentTransformer.forward for one row. m: params.json["model"]."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    ids, lengths = list(map(int, ids)), list(map(int, lengths))
    n, P, k = len(ids), len(lengths), m["cross_attn_k"]
    eps, theta, W_loc = m["norm_eps"], m["rope_theta"], m["local_attention_window_len"]
    assert sum(lengths) == n + 1 and lengths[0] == 1
    c = np.concatenate([[0], np.cumsum(lengths)])
    p = np.array([max(j for j in range(P) if c[j] <= i) for i in range(n)])
    cd = np.concatenate([[0], np.cumsum(lengths[1:])])
    d_ids = np.array([max(j for j in range(P - 1) if cd[j] <= i) for i in range(n)])

    # embeddings: byte table + every (function, n) hash table, function-major
    e = sd["local_encoder.tok_embeddings.weight"][ids]
    t = 0
    for f in range(m["encoder_hash_byte_group_nb_functions"]):
        for g in m["encoder_hash_byte_group_size"]:
            padded = [0] * (g - 1) + ids
            buckets = [hash_bucket(padded[i:i + g], PRIMES[f], m["encoder_hash_byte_group_vocab"])
                       for i in range(n)]
            e = e + sd[f"encoder_hash_tok_embedding.{t}.weight"][buckets]
            t += 1

    lm = local_mask(ids, W_loc)
    de = m["dim_local_encoder"]
    h, Q = e, None
    n_enc = m["n_layers_local_encoder"]
    enc_cross_mask = np.array([[p[i] == r // k for i in range(n)] for r in range(P * k)])
    for layer in range(n_enc):
        h = block(sd, f"local_encoder.layers.{layer}", h, m["n_heads_local_encoder"],
                  m.get("n_kv_heads") or m["n_heads_local_encoder"], lm, theta, eps)
        if layer == n_enc - 1 or m["cross_attn_all_layers_encoder"]:
            if Q is None:
                pooled = np.stack([h[p == j].max(0) if (p == j).any() else np.zeros(de)
                                   for j in range(P)])
                Q = (pooled @ sd["local_encoder.patch_embedding_projection.weight"].T).reshape(P * k, de)
            j = layer if m["cross_attn_all_layers_encoder"] else 0
            Q = Q + cross_attention(sd, f"local_encoder.cross_attn_layers.{j}", Q, h,
                                    m["cross_attn_nheads"], enc_cross_mask, eps)

    x = Q.reshape(P, k * de)
    if "global_transformer.token_embedding_projection.weight" in sd:
        x = x @ sd["global_transformer.token_embedding_projection.weight"].T
    causal = np.tril(np.ones((P, P), bool))
    if m.get("attn_bias_type") == "block_causal":
        eos_patch = np.zeros(P, bool)
        for i in range(n):
            eos_patch[p[i]] |= ids[i] == 2
        pseg = np.concatenate([[0], np.cumsum(eos_patch)[:-1]])
        causal &= pseg[:, None] == pseg[None, :]
    for layer in range(m["n_layers_global"]):
        x = block(sd, f"global_transformer.layers.{layer}", x, m["n_heads_global"],
                  m.get("n_kv_heads_global") or m["n_heads_global"], causal, theta, eps)

    dd = m["dim_local_decoder"]
    Z = x @ sd["local_decoder.patch_embedding_projection.weight"].T \
        if "local_decoder.patch_embedding_projection.weight" in sd else x
    Z = Z.reshape(P * k, dd)
    dec_cross_mask = np.array([[d_ids[i] == col // k for col in range(P * k)] for i in range(n)])
    D = h
    for layer in range(m["n_layers_local_decoder"]):
        if layer == 0 or m["cross_attn_all_layers_decoder"]:
            D = D + cross_attention(sd, f"local_decoder.cross_attn_layers.{layer}", D, Z,
                                    m["cross_attn_nheads"], dec_cross_mask, eps)
        D = block(sd, f"local_decoder.layers.{layer}", D, m["n_heads_local_decoder"],
                  m.get("n_kv_heads") or m["n_heads_local_decoder"], lm, theta, eps)
    return rms(D, sd["local_decoder.norm.weight"], eps) @ sd["local_decoder.output.weight"].T


def entropy_logits(sd, e, ids, window=512):
    """Reference LMTransformer (entropy model) for one row; e: params.json["entropy_model"]."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    eps, theta = e.get("norm_eps", 1e-5), e.get("rope_theta", 10000.0)
    x = sd["tok_embeddings.weight"][list(ids)]
    mask = local_mask(list(ids), e.get("sliding_window") or window)
    for layer in range(e["n_layers"]):
        x = block(sd, f"layers.{layer}", x, e["n_heads"], e.get("n_kv_heads") or e["n_heads"],
                  mask, theta, eps)
    return rms(x, sd["norm.weight"], eps) @ sd["output.weight"].T
