"""Local encoder (spec §5.3): byte + hash n-gram embeddings, windowed self-attention blocks, and
cross-attention in which k queries per patch (max-pool initialised) read that patch's bytes."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from blt_jax.model import attention
from blt_jax.text import hashing
from blt_jax.model.layers import Attend, CrossAttention, Embedding, Linear, depth_factor
from blt_jax.scale import sharding
from blt_jax.scale.sharding import constrain, fitted_spec
from blt_jax.text.tokenizer import VOCAB_SIZE
from blt_jax.model.transformer import (capturing, compute_dtype, local_attend, make_blocks,
                                       per_layer, run_block)


def hash_bucket_ids(cfg: ml_collections.ConfigDict, ids_BxN: jax.Array) -> jax.Array:
    """(B, N, T) rows of the fused hash table, tables ordered function-major as the reference."""
    vocab = cfg.encoder_hash_byte_group_vocab
    cols = []
    for f in range(cfg.encoder_hash_byte_group_nb_functions):
        for n in cfg.encoder_hash_byte_group_size:
            t = len(cols)
            cols.append(hashing.ngram_buckets(ids_BxN, n, vocab, prime_index=f) + t * vocab)
    return jnp.stack(cols, axis=-1)


def hash_embedding_sum(cfg: ml_collections.ConfigDict, table_RxD: jax.Array, ids_BxN: jax.Array,
                       dtype: jnp.dtype) -> jax.Array:
    """Σ_t E_t[hash_t(ids)] -> (B, N, D).

    The table's columns are split over fsdp and the rows of the batch over (data, fsdp). Left to
    GSPMD, that conflict made XLA look up every table for the *global* batch and reshard the
    (B, N, T, D/fsdp) result, about 38 GiB per chip for the 1B step at 256 x 16384 bytes.
    Under such a mesh the lookup runs in a shard_map instead: gather the byte ids of the fsdp
    group (B·N int32), hash and look up its own columns, sum the T tables there, and trade
    rows for columns with one all-to-all, so nothing larger than (B/data, N, D/fsdp) exists.
    """
    def lookup(t_RxD: jax.Array, i_BxN: jax.Array) -> jax.Array:
        # gather, then cast: the table's gradient accumulates in the table's own precision
        return jnp.take(t_RxD, hash_bucket_ids(cfg, i_BxN), axis=0).astype(dtype).sum(axis=2)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return lookup(table_RxD, ids_BxN)
    cols = fitted_spec(("hash_vocab", "hash_embed"), table_RxD.shape, mesh)[1]
    rows = fitted_spec(("batch", "length"), ids_BxN.shape, mesh)[0]
    cols_t = sharding.axis_names(cols)
    group = sharding.axis_size(mesh, cols)  # chips splitting the columns
    if group == 1 or not set(cols_t) <= set(sharding.axis_names(rows)):
        return lookup(table_RxD, ids_BxN)  # no conflict to resolve: GSPMD does it well

    def local(t_RxDc: jax.Array, i_BrxN: jax.Array) -> jax.Array:
        i_BcxN = jax.lax.all_gather(i_BrxN, cols_t, axis=0, tiled=True)
        b, n = i_BcxN.shape
        h_TxM = jnp.moveaxis(hash_bucket_ids(cfg, i_BcxN), -1, 0).reshape(-1, b * n)
        # bytes on the minor axis: TPU tiles pad a minor axis to 128 lanes, and D/fsdp is small
        # (16 at 1B on 64 chips), so (…, D/fsdp) buffers would take 8x their size
        e_DcxM = jnp.take(t_RxDc.T, h_TxM, axis=1).astype(dtype).sum(axis=1)
        e_DxMr = jax.lax.all_to_all(e_DcxM, cols_t, 1, 0, tiled=True)
        return e_DxMr.T.reshape(b // group, n, -1)

    return jax.shard_map(local, mesh=mesh, in_specs=(jax.P(None, cols), jax.P(rows)),
                         out_specs=jax.P(rows))(table_RxD, ids_BxN)


class LocalEncoder(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        d, k, dtype = cfg.dim_local_encoder, cfg.cross_attn_k, compute_dtype(cfg)
        self.cfg = cfg
        self.n_tables = cfg.encoder_hash_byte_group_nb_functions * len(
            cfg.encoder_hash_byte_group_size)
        self.tok_embeddings = Embedding(VOCAB_SIZE, d, d ** -0.5, ("vocab", None), rngs=rngs,
                                        dtype=dtype)
        # All hash tables fused into one (T * vocab_hash, d) table: one gather, one shard axis.
        # Rows are padded to a multiple of cfg.hash_row_multiple so an FSDP degree divides them
        # (6 x 500002 would otherwise force a replicated 3B-row table); ids never reach them.
        self.hash_rows = self.n_tables * cfg.encoder_hash_byte_group_vocab
        m = cfg.hash_row_multiple
        padded = -(-self.hash_rows // m) * m
        self.hash_embeddings = Embedding(padded, d, d ** -0.5, ("hash_vocab", "hash_embed"),
                                         rngs=rngs, dtype=dtype) if self.n_tables else None
        n = cfg.n_layers_local_encoder
        self.layers = make_blocks(cfg, d, n, cfg.n_heads_local_encoder, cfg.n_kv_heads, rngs)
        n_cross = n if cfg.cross_attn_all_layers_encoder else 1
        self.cross_attn_layers = nnx.List([
            CrossAttention(d, cfg.cross_attn_nheads, norm_eps=cfg.norm_eps,
                           init_factor=depth_factor(cfg.init_std_factor, i, n, d), rngs=rngs,
                           dtype=dtype) for i in range(n_cross)])
        self.patch_embedding_projection = Linear(d, k * d, d ** -0.5, ("embed", "mlp"),
                                                 rngs=rngs, dtype=dtype)

    def embed(self, ids_BxN: jax.Array) -> jax.Array:
        """e_i = E_byte[x_i] + Σ_t E_t[hash_t(i)] (no 1/(T+1) scaling: follow the code)."""
        e = self.tok_embeddings(ids_BxN)
        if self.hash_embeddings is not None:
            e = e + hash_embedding_sum(self.cfg, self.hash_embeddings.embedding[...], ids_BxN,
                                       self.hash_embeddings.dtype)
        return constrain(e, ("batch", "length", "act_embed"))

    def pool_queries(self, pooled_BxPxD: jax.Array) -> jax.Array:
        """Max-pooled patch states -> k queries per patch (B, P·k, d_E)."""
        b, p, d = pooled_BxPxD.shape
        return self.patch_embedding_projection(pooled_BxPxD).reshape(b, p * self.cfg.cross_attn_k, d)

    def init_queries(self, h_BxNxD: jax.Array, patch_ids_BxN: jax.Array, n_patches: int
                     ) -> jax.Array:
        """Max-pool each patch's bytes (empty patches -> 0), project to k queries per patch."""
        return self.pool_queries(attention.segment_max_pool(h_BxNxD, patch_ids_BxN, n_patches))

    def cross_attend(self, layer: CrossAttention, q_BxPkxD: jax.Array, h_BxNxD: jax.Array,
                     patch_ids_BxN: jax.Array) -> jax.Array:
        """q + CA(q, h), CA returning q + attn: the reference's double residual."""
        b, pk, d = q_BxPkxD.shape
        k = self.cfg.cross_attn_k
        if self.cfg.attention_impl == "dense":
            mask = attention.encoder_cross_mask(patch_ids_BxN, pk // k, k)
            return layer.dense(q_BxPkxD, h_BxNxD, mask)
        keys, values = layer.keys_values(h_BxNxD)

        def attend(q_BxPkxHxD: jax.Array) -> jax.Array:
            q = q_BxPkxHxD.reshape((b, pk // k, k) + q_BxPkxHxD.shape[2:])
            o = attention.encoder_cross_attention(q, keys, values, patch_ids_BxN)
            return o.reshape((b, pk) + o.shape[3:])
        return layer.apply(q_BxPkxD, attend)

    def byte_states(self, e_BxNxD: jax.Array, pos_BxN: jax.Array,
                    attend: Attend | Sequence[Attend]) -> tuple[jax.Array, list[jax.Array]]:
        """The self-attention stack -> final byte states and the states each cross-attention
        layer reads (the last layer's, or every layer's). Byte states never depend on the patch
        queries, so training and decoding (which cross-attends only when a patch closes) share
        this loop."""
        taps = []
        last = len(self.layers) - 1
        h = e_BxNxD
        for i, (block, a) in enumerate(zip(self.layers, per_layer(attend, len(self.layers)))):
            h = run_block(block, self.cfg.remat, h, pos_BxN, a)
            if i == last or self.cfg.cross_attn_all_layers_encoder:
                taps.append(h)
        return h, taps

    def __call__(self, ids_BxN: jax.Array, pos_BxN: jax.Array, seg_BxN: jax.Array,
                 patch_ids_BxN: jax.Array, n_patches: int, sink: dict | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        """-> byte states h (B, N, d_E) (no final norm) and patch vectors (B, P, k·d_E).

        `sink` (generation prefill) collects self-attention (k, v) per layer under "self" and,
        per cross-attention layer, the byte states it reads under "cross_h".
        """
        cfg = self.cfg
        attend = local_attend(cfg, seg_BxN, cfg.local_attention_window_len)
        if sink is not None:
            sink.update(self=[])
            attend = capturing(attend, sink["self"])
        h, taps = self.byte_states(self.embed(ids_BxN), pos_BxN, attend)
        # queries pooled from the first cross layer's input (issue #88: follow the code)
        queries = self.init_queries(taps[0], patch_ids_BxN, n_patches)
        for layer, tap in zip(self.cross_attn_layers, taps):
            queries = self.cross_attend(layer, queries, tap, patch_ids_BxN)
        if sink is not None:
            sink["cross_h"] = taps
        b = ids_BxN.shape[0]
        return h, queries.reshape(b, n_patches, -1)
