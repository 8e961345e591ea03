"""Self-speculative BLT decoding (BLT-S, after Kallini et al., "Fast Byte Latent Transformer").

Only the local decoder depends on the latent transformer, and only the patch rule on the
entropy model. A speculation *round* therefore drafts `draft_len` bytes with the local encoder
and the local decoder alone, the decoder reading the rows of the last verified patch. One
verify pass (:func:`verify`) then runs the entropy model over the round's bytes at once,
the patch rule byte by byte (recording each closed patch's latent input), the latent over every
patch the round closed at once, and the decoder over all the round's positions, each reading
its own patch's rows. Drafted bytes are accepted while they agree with the verified prediction;
the first that does not is replaced by a draw from the verified distribution (greedy: its
argmax). Greedy output is byte-identical to plain decoding, and sampled output has the same
distribution (the standard speculative acceptance rule). The state rolls back to the last
accepted byte: positional caches need no rollback (their rings hold `draft_len + 1` extra
slots), and the small per-byte state is taken from per-step snapshots.

What it saves: per drafted byte, the entropy model's step and the latent's (weights read once
per round instead of once per byte and once per patch); the decoder runs twice per byte (draft
and verify), the verify pass reading its weights once per round.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from blt_jax.inference import kv_cache, sampling
from blt_jax.inference.incremental import PATCH_FIELDS, BltGenerator, BltState, _take
from blt_jax.model import attention
from blt_jax.text.tokenizer import EOS_ID


class Round(NamedTuple):
    """Static sizes of a speculation round."""
    draft_len: int  # most bytes a round drafts before its verify pass
    max_closes: int = 0  # 0: draft_len // 4 + 2

    @property
    def closes(self) -> int:
        """Patches one verify pass holds (the latent's length): a round verifies its bytes up to
        the (closes+1)-th patch boundary. A quarter of the draft covers the paper's 4.5 bytes
        per patch; byte-level patches just verify shorter rounds."""
        return self.max_closes or self.draft_len // 4 + 2

    @property
    def shortest(self) -> int:
        return min(4, self.draft_len)


class Stats(NamedTuple):
    """Per-row counters and the carry a round hands to the next."""
    forced: jax.Array  # (B,) the byte the last verify chose instead of a draft (-1: none)
    length: jax.Array  # () bytes the next round drafts (moves toward twice the last commit)
    rounds: jax.Array  # () rounds run
    verifies: jax.Array  # () rounds whose verify ran the latent (a patch closed in some row)
    committed: jax.Array  # (B,) bytes committed by rounds
    stale: jax.Array  # (B,) drafted bytes chosen from a stale (unverified) patch's rows
    stale_accepted: jax.Array  # (B,) ... of which the verify pass accepted

    @staticmethod
    def start(b: int, rnd: Round) -> "Stats":
        z = jnp.zeros(b, jnp.int32)
        return Stats(jnp.full(b, -1, jnp.int32), jnp.asarray(rnd.draft_len, jnp.int32),
                     jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), z, z, z)


# The per-byte state a draft step changes (caches are positional: a rollback needs none).
DRAFTED = ("length", "n_new", "done", "logits", "seg", "hx_last")


class Draft(NamedTuple):
    """A speculation round: what its drafted bytes left for :func:`verify`, and
    the patches the verify pass finds they close (their latent steps run there, batched).

    Only the decoder depends on the latent, and only the patch rule on the entropy model: a
    draft step runs the local encoder and the decoder on the last verified patch's rows.
    """
    taps: jax.Array  # (B, R, d_E) the pooled encoder layer's state of each drafted byte
    qv: jax.Array  # (B, C, k·d_E) latent inputs (pooled, cross-attended) of the closed patches
    seg: jax.Array  # (B, C) their latent segments
    pos: jax.Array  # (B, C) their last byte
    step: jax.Array  # (B, C) the round step that closed them (a late close: the step after pos)
    count: jax.Array  # (B,) patches closed in this round
    over: jax.Array  # (B,) last byte of the first patch past the C the verify pass can hold
    steps: jax.Array  # () round steps taken

    @staticmethod
    def empty(b: int, room: int, tap: Any, c: int, qv: Any) -> "Draft":
        """`tap`, `qv`: shape-dtype structs of one byte's pooled state and one patch's input."""
        z = jnp.zeros((b, c + 1), jnp.int32)  # slot c: where patches past the C go
        return Draft(jnp.zeros((b, room) + tap.shape[1:], tap.dtype),
                     jnp.zeros((b, c + 1, math.prod(qv.shape[1:])), qv.dtype), z, z, z,
                     jnp.zeros(b, jnp.int32), jnp.full(b, jnp.iinfo(jnp.int32).max, jnp.int32),
                     jnp.zeros((), jnp.int32))

    def record(self, close_B: jax.Array, qv_BxKxD: jax.Array, seg_B: jax.Array,
               pos_B: jax.Array) -> "Draft":
        """Appends the closing rows' patch (the others write a slot their count leaves free)."""
        c = self.qv.shape[1] - 1
        i = jnp.minimum(self.count, c)
        put = jax.vmap(lambda buf, j, x: jax.lax.dynamic_update_index_in_dim(buf, x, j, 0))
        return self._replace(
            qv=put(self.qv, i, qv_BxKxD.reshape(qv_BxKxD.shape[0], -1).astype(self.qv.dtype)),
            seg=put(self.seg, i, seg_B), pos=put(self.pos, i, pos_B),
            step=put(self.step, i, jnp.broadcast_to(self.steps, seg_B.shape)),
            count=self.count + close_B,
            over=jnp.where(close_B & (self.count >= c), jnp.minimum(self.over, pos_B), self.over))


def begin_draft(gen: BltGenerator, s: BltState, room: int, closes: int) -> BltState:
    """The state with an empty draft of up to `room` bytes closing up to `closes` patches."""
    qv = jax.eval_shape(gen._patch_input, s, s.length)
    return s._replace(draft=Draft.empty(s.done.shape[0], room, s.pool, closes, qv))

def verify(gen: BltGenerator, s0: BltState, s: BltState, x_BxR: jax.Array, done_BxR: jax.Array,
           hx_BxLxD: jax.Array, seg_BxL: jax.Array) -> tuple[jax.Array, BltState, tuple]:
    """One pass over a drafted round of R bytes x (done: the rows' done flags before each).

    The entropy model over the R bytes at once, the patch rule byte by byte (a scan of
    `BltGenerator._patches`, which records each closed patch's latent input), the latent steps of
    all the closed patches at once, then the decoder at positions n0 - 1 .. n0 + R - 1
    (L = R + 1, n0 = s0.length), each reading its own patch's rows; positions from the last
    byte of the (C+1)-th patch closed on are left unverified (`Draft.over`).
    -> (logits at n0 .. n0 + R - 1 as plain decoding computes them (B, R, V), the patch
    state after each byte ({PATCH_FIELDS: (B, R, ...)}), what :func:`commit` writes).
    """
    r = x_BxR.shape[1]
    t_BxR = s0.length[:, None] + jnp.arange(r)[None]
    h_BxR, ent = gen._entropies(s0.ent, x_BxR, t_BxR, seg_BxL[:, 1:])
    x_prev = jnp.concatenate([_take(s0.ids, s0.length - 1 + gen.pad)[:, None],
                              x_BxR[:, :-1]], 1)

    def byte(st: BltState, i: jax.Array) -> tuple[BltState, BltState]:
        st = st._replace(done=done_BxR[:, i], draft=st.draft._replace(steps=i))
        st, _ = gen._patches(st, x_BxR[:, i], x_prev[:, i], h_BxR[:, i],
                              st.draft.taps[:, i], t_BxR[:, i])
        return st, {f: getattr(st, f) for f in PATCH_FIELDS}

    start = s._replace(**{f: getattr(s0, f) for f in PATCH_FIELDS})
    s, after = jax.lax.scan(byte, start, jnp.arange(r))
    after = jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), after)
    d = s.draft
    c = d.seg.shape[1] - 1
    d = d._replace(qv=d.qv[:, :c], seg=d.seg[:, :c], pos=d.pos[:, :c], step=d.step[:, :c])
    j = s0.n_closed[:, None] + jnp.arange(c)[None]
    valid = jnp.arange(c)[None] < d.count[:, None]

    def latent(lat: list) -> tuple:
        new, x = gen._latent(lat, d.qv, j, d.seg, valid)
        return new, gen._patch_kv(x)

    lat_new, (zk, zv) = gen._when(d.count > 0, latent, s0.lat)
    # rows table per row: 0 = the patch the round started with, 1 + c = its c-th close
    head = lambda x: x.transpose(0, 2, 1, 3)[:, None]  # noqa: E731  (B,H,k,D)->(B,1,k,H,D)
    tk = [jnp.concatenate([head(a), z.astype(a.dtype)], 1) for a, z in zip(s0.dec_k, zk)]
    tv = [jnp.concatenate([head(a), z.astype(a.dtype)], 1) for a, z in zip(s0.dec_v, zv)]
    pos = s0.length[:, None] - 1 + jnp.arange(hx_BxLxD.shape[1])[None]
    closed = valid[:, None, :] & (d.pos[:, None, :] <= pos[:, :, None])  # (B, L, C)
    att = kv_cache.strategies(s.dec, pos, seg_BxL, gen.window, ring=True)
    logits = _decode_rows(gen, hx_BxLxD, pos, att, tk, tv, jnp.sum(closed, -1))
    dec = kv_cache.extended(att)  # the entries later positions read
    if gen.defers:  # a late close changes the entry at its position, not what was predicted
        known = closed & (d.step[:, None, :] <= (pos - s0.length[:, None])[:, :, None])
        att = kv_cache.strategies(dec, pos[:, 1:], seg_BxL[:, 1:], gen.window, ring=True,
                                  alone=True)
        logits = _decode_rows(gen, hx_BxLxD[:, 1:], pos[:, 1:], att, tk, tv,
                                   jnp.sum(known, -1)[:, 1:])
    else:
        logits = logits[:, 1:]
    return logits, after, (lat_new, tk, tv, dec, ent, d)

def _decode_rows(gen: BltGenerator, hx_BxLxD: jax.Array, pos_BxL: jax.Array, att: list, tk: list,
                 tv: list, row_BxL: jax.Array) -> jax.Array:
    """The local decoder at L positions, position i reading rows table entry row[i] (the
    training kernel: a per-byte patch index into per-patch rows)."""
    return gen.m.local_decoder.run(hx_BxLxD, pos_BxL, att, lambda j, layer, h: layer.apply(
        h, lambda q: attention.decoder_cross_attention(q, tk[j], tv[j], row_BxL)))

def commit(gen: BltGenerator, s: BltState, s0: BltState, out: tuple, closes_B: jax.Array
           ) -> BltState:
    """`s` (rolled back to the last accepted byte) with the verified latent caches, decoder
    rows and decoder cache: the first `closes` of the draft's patches are accepted."""
    lat_new, tk, tv, dec, ent, draft = out
    c = draft.seg.shape[1]
    j = s0.n_closed[:, None] + jnp.arange(c)[None]
    ok = jnp.arange(c)[None] < closes_B[:, None]
    lat = [kv_cache.write(cache, k, v, j, draft.seg, ring=False, valid_BxL=ok)
           for cache, (k, v) in zip(s0.lat, lat_new)]
    back = lambda t: _take(t, closes_B).transpose(0, 2, 1, 3)  # noqa: E731
    return s._replace(lat=lat, dec_k=[back(t) for t in tk], dec_v=[back(t) for t in tv],
                      dec=dec, ent=ent, draft=None)


def accept(p_BxSxV: jax.Array, q_BxSxV: jax.Array, tok_BxS: jax.Array, m_B: jax.Array,
           key_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The speculative acceptance rule (Leviathan et al. 2023; Chen et al. 2023).

    Slot i's token, drawn from q_i, is accepted with probability min(1, p_i(tok) / q_i(tok)),
    slots in order, at most m of them. -> (a: leading slots accepted, the replacement at slot a
    drawn from norm(max(p_a - q_a, 0)) when a < m, else -1). The emitted sequence is then
    distributed as under p; with one-hot p and q (greedy) a token is accepted iff it is p's
    argmax and the replacement is that argmax.
    """
    s = tok_BxS.shape[1]
    keys = jax.vmap(lambda k: jax.random.split(k, 2))(key_B)
    u = jax.vmap(lambda k: jax.random.uniform(k, (s,)))(keys[:, 0])
    pt = jnp.take_along_axis(p_BxSxV, tok_BxS[..., None], -1)[..., 0]
    qt = jnp.take_along_axis(q_BxSxV, tok_BxS[..., None], -1)[..., 0]
    ok = (u * qt < pt) & (jnp.arange(s)[None] < m_B[:, None])
    a = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=-1), axis=-1)
    at = jnp.minimum(a, s - 1)
    pa, qa = _take(p_BxSxV, at), _take(q_BxSxV, at)
    r = jnp.maximum(pa - qa, 0.0)
    r = jnp.where(jnp.sum(r, -1, keepdims=True) > 0, r, pa)  # p == q: never rejected anyway
    draw = jax.vmap(lambda k, lg: jax.random.categorical(k, lg))(keys[:, 1], jnp.log(r))
    return a, jnp.where(a < m_B, draw.astype(jnp.int32), -1)


def run_round(gen: BltGenerator, c: Any, rnd: Round, choose: Callable, probs: Callable,
              advance: Callable, seed: int) -> tuple[Any, jax.Array]:
    """One speculation round from a state whose logits are verified -> (the carry after the
    accepted bytes, the verified logits at the round's positions (B, draft_len, V)).

    `choose(logits, keys, i) -> ids` draws drafts (tests force them), `probs` is the matching
    distribution, `advance(carry, ids)` steps ids in with the stop conditions.
    """
    s0: BltState = c.state
    st: Stats = c.spec
    b, r = s0.done.shape[0], rnd.draft_len
    small0 = {f: getattr(s0, f) for f in DRAFTED} | {"out_bytes": c.out_bytes}
    snaps0 = {f: jnp.zeros((b, r + 1) + x.shape[1:], x.dtype).at[:, 0].set(x)
              for f, x in small0.items()}

    def cond(v: tuple) -> jax.Array:
        ci = v[0]
        return (ci.state.draft.steps < st.length) & ~jnp.all(ci.state.done)

    def body(v: tuple) -> tuple:
        ci, snaps, xs = v
        s = ci.state
        i = s.draft.steps
        keys = jax.vmap(jax.random.fold_in, (0, None))(
            sampling.step_keys(seed, b, s.n_new), st.rounds * 2 + 1)
        x = choose(s.logits, keys, i)
        x = jnp.where((i == 0) & (st.forced >= 0), st.forced, x)
        ci = advance(ci, x)
        snaps = {f: buf.at[:, i + 1].set(getattr(ci.state, f) if f != "out_bytes"
                                          else ci.out_bytes) for f, buf in snaps.items()}
        return ci, snaps, xs.at[:, i].set(jnp.where(s.done, 0, x))

    c1 = c._replace(state=begin_draft(gen, s0, r, rnd.closes))
    c1, snaps, xs = jax.lax.while_loop(cond, body, (c1, snaps0, jnp.zeros((b, r), jnp.int32)))
    s1: BltState = c1.state
    n = s1.draft.steps
    # the decoder's inputs at n0 - 1 .. n0 + R - 1 (unstepped slots compute unused rows)
    hx = snaps["hx_last"][:, :, 0]
    x_prev = _take(s0.ids, s0.length - 1 + gen.pad)
    seg = jnp.concatenate([(s0.seg - (x_prev == EOS_ID))[:, None], snaps["seg"][:, :r]], 1)
    logits, after, out = verify(gen, s0, s1, xs, snaps["done"][:, :r], hx, seg)
    snaps |= {f: jnp.concatenate([getattr(s0, f)[:, None], x], 1) for f, x in after.items()}

    # slot i: the byte stepped at i + 1, drafted from the logits after step i
    done_at = jnp.argmax(snaps["done"][:, 1:], axis=1)  # first step after which a row is done
    done_at = jnp.where(jnp.any(snaps["done"][:, 1:], axis=1), done_at, r)
    verifiable = jnp.clip(out[-1].over - s0.length, 0, r)  # positions below hold their rows
    m = jnp.minimum(jnp.minimum(n - 1, done_at), verifiable - 1)
    p = jax.vmap(probs, in_axes=1, out_axes=1)(logits[:, : r - 1])
    q = jax.vmap(probs, in_axes=1, out_axes=1)(snaps["logits"][:, 1: r])
    round_keys = jax.vmap(jax.random.fold_in, (0, None))(
        sampling.step_keys(seed, b, s0.n_new), st.rounds * 2)
    a, forced = accept(p, q, xs[:, 1:], m, round_keys)
    active = ~s0.done
    idx = jnp.where(active, a + 1, 0)  # snapshot after step a
    kept = {f: _take(buf, idx) for f, buf in snaps.items()}
    verified = jnp.where(active[:, None], _take(logits, jnp.maximum(idx - 1, 0)), s0.logits)
    state = s1._replace(**({f: kept[f] for f in DRAFTED + PATCH_FIELDS} | {"logits": verified}))
    state = commit(gen, state, s0, out, kept["n_closed"] - s0.n_closed)
    ran = jnp.any(out[-1].count > 0)
    stale = (snaps["n_closed"][:, 1: r] > s0.n_closed[:, None]) & active[:, None]
    slots = jnp.arange(r - 1)[None]
    stats = Stats(
        forced=jnp.where(active, forced, -1), rounds=st.rounds + 1, verifies=st.verifies + ran,
        # a rejected draft byte costs a draft step: draft about what the text lets through
        length=jnp.clip((st.length + 2 * jnp.max(jnp.where(active, idx, 0))) // 2,
                        rnd.shortest, r),
        committed=st.committed + jnp.where(active, idx, 0),
        stale=st.stale + jnp.sum(stale & (slots < m[:, None]), -1),
        stale_accepted=st.stale_accepted + jnp.sum(stale & (slots < a[:, None]), -1))
    return c._replace(state=state, out_bytes=kept["out_bytes"], spec=stats,
                      latent_runs=c.latent_runs + ran), logits


def loop(gen: BltGenerator, carry: Any, budget: int, rnd: Round, choose: Callable,
         probs: Callable, advance: Callable, seed: int) -> Any:
    """Up to `budget` rounds (each commits at least one byte per row not done)."""
    def cond(c: Any) -> jax.Array:
        return (c.steps < budget) & ~jnp.all(c.state.done)

    def body(c: Any) -> Any:
        c, _ = run_round(gen, c, rnd, lambda lg, k, i: choose(lg, k), probs, advance, seed)
        return c._replace(steps=c.steps + 1)

    return jax.lax.while_loop(cond, body, carry._replace(steps=jnp.zeros((), jnp.int32)))


def summary(stats: Stats) -> dict[str, Any]:
    """Acceptance figures of a finished generation (host side)."""
    committed = np.asarray(stats.committed)
    verifies = int(stats.verifies)
    stale = np.asarray(stats.stale)
    return {"rounds": int(stats.rounds), "verify_passes": verifies,
            "bytes_per_round": float(committed.sum() / max(int(stats.rounds), 1)),
            "bytes_per_verify": float(committed.sum() / max(verifies, 1)),
            "stale_drafted": stale.tolist(),
            "stale_accepted": np.asarray(stats.stale_accepted).tolist(),
            "stale_acceptance": float(np.asarray(stats.stale_accepted).sum() / max(stale.sum(), 1))}
