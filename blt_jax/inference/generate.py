"""Generation for BLT and the token baseline: a jitted `lax.while_loop` over static shapes, the
naive full-recompute oracle, sampling and stop conditions.

Batches: prompts are right-padded and every row keeps its own positions; a row stops at EOS,
at `max_new_bytes` or at a stop string, independently of the others (no cross-row leakage:
entropies, patches and caches are per row). Returned bytes exclude the EOS and stop string.
`chunk` steps run per device call, so streaming costs one host round-trip per chunk.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from blt_jax.errors import UserError
from blt_jax.inference import kv_cache, sampling, speculative
from blt_jax.model import factory
from blt_jax.text import patching
from blt_jax.inference.incremental import BltGenerator


class Options(NamedTuple):
    max_new: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    stop: tuple[bytes, ...] = ()
    draft_len: int = 0  # > 0: self-speculative BLT decoding drafting this many bytes (BLT-S)


def check_options(o: Options) -> None:
    if o.max_new < 1:
        raise UserError(f"max_new_bytes: must be >= 1, got {o.max_new}")
    sampling.check(o.temperature, o.top_k, o.top_p)
    if any(not s for s in o.stop):
        raise UserError("stop: stop strings must be non-empty")
    if isinstance(o.draft_len, bool) or not isinstance(o.draft_len, int) or o.draft_len < 0:
        raise UserError(f"draft_len: expected an integer >= 1 (bytes drafted past a patch "
                        f"boundary), got {o.draft_len!r}")


def _matches(ids_BxT: jax.Array, end_B: jax.Array, n_new_B: jax.Array, pad: int,
             stops: list[np.ndarray]) -> jax.Array:
    """Do the generated ids end with a stop sequence (ids[end - L + 1 .. end], all new)?"""
    hit = jnp.zeros(end_B.shape, bool)
    for s in stops:
        n = len(s)
        win = jax.vmap(lambda row, e: jax.lax.dynamic_slice(row, (pad + e - n + 1,), (n,)))(
            ids_BxT, end_B)
        hit = hit | ((n_new_B >= n) & jnp.all(win == jnp.asarray(s)[None], axis=-1))
    return hit


class Carry(NamedTuple):
    state: Any
    steps: jax.Array  # device calls' step counter (for chunking; speculation: rounds)
    latent_runs: jax.Array  # () how many times the latent stack actually ran
    history: Any = None  # (B, max_new, V) logits behind every choice, when recorded
    out_bytes: Any = None  # (B,) text bytes generated (a BPE token may stand for several)
    spec: Any = None  # speculative.Stats while speculating


def _loop(step_fn: Callable, choose_fn: Callable, carry: Carry, budget: int, opts: Options,
          stops: list[np.ndarray], pad: int, nbytes: jax.Array, eos: int) -> Carry:
    """Runs up to `budget` steps of (choose next id, step it in) for rows not done."""
    def cond(c: Carry) -> jax.Array:
        return (c.steps < budget) & ~jnp.all(c.state.done)

    def body(c: Carry) -> Carry:
        s = c.state
        history = c.history
        if history is not None:
            rows = jnp.arange(s.done.shape[0])
            history = history.at[rows, jnp.minimum(s.n_new, opts.max_new - 1)].set(
                jnp.where(s.done[:, None], history[rows, jnp.minimum(s.n_new, opts.max_new - 1)],
                          s.logits))
        keys = sampling.step_keys(opts.seed, s.done.shape[0], s.n_new)
        x = choose_fn(s.logits, keys)
        return advance(step_fn, c, x, opts, stops, pad, nbytes, eos)._replace(history=history)

    return jax.lax.while_loop(cond, body, carry._replace(steps=jnp.zeros((), jnp.int32)))


def advance(step_fn: Callable, c: Carry, x_B: jax.Array, opts: Options,
            stops: list[np.ndarray], pad: int, nbytes: jax.Array, eos: int) -> Carry:
    """Steps the chosen ids in and applies the stop conditions (EOS, byte budget, stop ids)."""
    s = c.state
    x = jnp.where(s.done, 0, x_B)
    new, ran = step_fn(s, x)
    n_new = s.n_new + 1
    out_bytes = c.out_bytes + jnp.where(s.done, 0, nbytes[x])
    finished = (x == eos) | (out_bytes >= opts.max_new) | \
        _matches(new.ids, s.length, n_new, pad, stops)
    # Rows already done keep stepping on dummy ids (no cross-row effect, cheaper than
    # selecting every cache); their counters and outputs stay frozen.
    new = new._replace(n_new=jnp.where(s.done, s.n_new, n_new), done=s.done | finished)
    return c._replace(state=new, steps=c.steps + 1, latent_runs=c.latent_runs + ran,
                      out_bytes=out_bytes)


# ---------------------------------------------------------------------------------------------
# Token baseline state (KV-cached Llama decoder)


class TokenState(NamedTuple):
    ids: jax.Array  # (B, T) tokens, position p at column p
    length: jax.Array
    n_new: jax.Array
    done: jax.Array
    logits: jax.Array
    caches: list
    n_closed: jax.Array  # (B,) always 0: a token model closes no patches


class TokenGenerator:
    """Prefill and step functions of the KV-cached token baseline (pure; jitted by the caller)."""

    pad = 0  # ids sit at their positions (no n-gram look-back)

    def __init__(self, model: Any, entropy_model: Any, rule: Any, total: int, slack: int = 0):
        self.m, self.total = model, total

    @staticmethod
    def lookback(cfg: Any) -> int:
        return 0

    def prefill(self, prompt_BxN: jax.Array, n_B: jax.Array) -> TokenState:
        b, n = prompt_BxN.shape
        logits, caches = kv_cache.transformer_prefill(self.m, prompt_BxN, n_B, self.total)
        last = jnp.take_along_axis(logits, (n_B - 1)[:, None, None], axis=1)[:, 0]
        ids = jnp.zeros((b, self.total), jnp.int32).at[:, :n].set(prompt_BxN)
        return TokenState(ids, n_B, jnp.zeros_like(n_B), jnp.zeros(b, bool), last, caches,
                          jnp.zeros_like(n_B))

    def step(self, s: TokenState, x_B: jax.Array) -> tuple[TokenState, jax.Array]:
        ids = jax.vmap(lambda row, i, x: row.at[i].set(x))(s.ids, s.length, x_B)
        pos = s.length[:, None]
        logits, caches = kv_cache.transformer_step(self.m, x_B[:, None], pos, jnp.zeros_like(pos),
                                                   s.caches)
        return s._replace(ids=ids, length=s.length + 1, logits=logits[:, 0], caches=caches), \
            jnp.zeros((), jnp.int32)


# What each kind's `decoder` names (model/kinds.py): patch-aware BLT decoding or a KV cache.
DECODERS: dict[str, type] = {"patches": BltGenerator, "tokens": TokenGenerator}


# ---------------------------------------------------------------------------------------------
# The driver


class Result(NamedTuple):
    new: list[bytes]  # generated bytes per prompt (no EOS, no stop string)
    latent_steps: list[int]  # BLT: patches closed while generating (== latent steps)
    latent_runs: int  # times the latent stack ran for the batch (one per step with any close)
    steps: int
    logits: np.ndarray | None = None  # (B, max_new, V) when recorded
    speculation: dict | None = None  # acceptance figures (speculative.summary) when speculating


class Generator:
    """Compiled generation for a loaded model (api.Model) whose kind has a decoder."""

    def __init__(self, loaded: Any, max_context: int):
        self.loaded, self.kind, self.max_context = loaded, loaded.kind, max_context
        if self.kind.decoder is None:
            raise UserError(f"generate: a {self.kind} workdir is not a generator (use a BLT or "
                            "BPE workdir)")
        self.decoder = DECODERS[self.kind.decoder]
        self.codec = loaded.codec
        cfg = loaded.model_config.copy_and_resolve_references()
        cfg.remat = False  # the prefill reads keys/values out of the forward pass
        self.graphdef = nnx.graphdef(nnx.eval_shape(lambda: factory.build_model(cfg)))
        if loaded.entropy_model is not None:
            ecfg = loaded.entropy_model.model_config.copy_and_resolve_references()
            ecfg.remat = False
            self.e_graphdef = nnx.graphdef(nnx.eval_shape(lambda: factory.build_model(ecfg)))

    def _models(self, params: Any, e_params: Any) -> tuple[Any, Any]:
        m = nnx.merge(self.graphdef, params)
        e = nnx.merge(self.e_graphdef, e_params) if e_params is not None else None
        return m, e

    def encode(self, prompt: bytes) -> np.ndarray:
        return self.codec.prompt(prompt)

    def decode(self, ids: Sequence[int]) -> bytes:
        return self.codec.decode(ids)

    @functools.lru_cache(maxsize=16)
    def _compiled(self, b: int, n: int, total: int, opts: Options, chunk: int,
                  rule: patching.PatchRule | None, record: bool) -> tuple:
        # Byte ids stop inside the loop; BPE token boundaries need not align with a stop
        # string, so its stop strings are applied to the decoded bytes afterwards.
        stops = self.codec.loop_stops(opts.stop)
        choose = lambda lg, k: sampling.choose(lg, k, opts.temperature, opts.top_k, opts.top_p)  # noqa
        loaded = self.loaded
        e_params = loaded.entropy_model.params if loaded.entropy_model is not None else None
        nbytes, eos = self.codec.nbytes, self.codec.eos
        rnd = speculative.Round(opts.draft_len) if opts.draft_len else None
        slack = opts.draft_len + 1

        def prefill(params: Any, e_params: Any, prompt: jax.Array, n_B: jax.Array) -> Carry:
            m, e = self._models(params, e_params)
            state = self.decoder(m, e, rule, total, slack).prefill(prompt, n_B)
            hist = jnp.zeros((b, opts.max_new, state.logits.shape[-1]), jnp.float32) \
                if record else None
            return Carry(state, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), hist,
                         jnp.zeros((b,), jnp.int32),
                         speculative.Stats.start(b, rnd) if rnd else None)

        def run(params: Any, e_params: Any, carry: Carry) -> Carry:
            m, e = self._models(params, e_params)
            gen = self.decoder(m, e, rule, total, slack)
            adv = functools.partial(advance, opts=opts, stops=stops, pad=gen.pad,
                                    nbytes=jnp.asarray(nbytes), eos=eos)
            if rnd:  # a draft step runs no latent: nothing to count
                return speculative.loop(
                    gen, carry, chunk, rnd, choose, lambda lg: sampling.probabilities(
                        lg, opts.temperature, opts.top_k, opts.top_p),
                    lambda c, x: adv(lambda s, y: (gen.step(s, y)[0], jnp.zeros((), jnp.int32)),
                                     c, x), opts.seed)
            return _loop(lambda s, x: _as_int(gen.step(s, x)), choose, carry, chunk, opts, stops,
                         gen.pad, jnp.asarray(nbytes), eos)

        return jax.jit(prefill), jax.jit(run, donate_argnums=2), e_params

    def stream(self, prompts: Sequence[bytes], opts: Options, chunk: int = 64,
               record_logits: bool = False) -> Iterator[tuple[list[bytes], Result | None]]:
        """Yields the bytes each row gained after every device call, then the final Result."""
        check_options(opts)
        rows = [self.encode(p) for p in prompts]
        n_max = max(len(r) for r in rows)
        if n_max + opts.max_new > self.max_context:
            raise UserError(f"prompt: {n_max} ids + max_new_bytes {opts.max_new} exceed the "
                            f"context of {self.max_context}; shorten the prompt or lower "
                            "max_new_bytes")
        b = len(rows)
        total = min(self.max_context, -(-(n_max + opts.max_new) // 256) * 256)
        if opts.draft_len:
            if self.kind.decoder != "patches":
                raise UserError(f"speculate: self-speculative decoding drafts past BLT patch "
                                f"boundaries; a {self.kind} model has none (drop speculate)")
            if record_logits:
                raise UserError("speculate: recording logits needs plain decoding")
            # a round steps up to `room` bytes past the committed ones before rolling back
            total = -(-(n_max + opts.max_new + 2 * opts.draft_len + 2) // 256) * 256
        n_bucket = min(total, max(16, 1 << (n_max - 1).bit_length()))
        prompt = np.zeros((b, n_bucket), np.int32)
        for i, r in enumerate(rows):
            prompt[i, : len(r)] = r
        n_B = np.array([len(r) for r in rows], np.int32)
        prefill, run, e_params = self._compiled(b, n_bucket, total, opts, min(chunk, opts.max_new),
                                                self.loaded.patching_rule, record_logits)
        params = self.loaded.params
        carry = prefill(params, e_params, prompt, n_B)
        n_closed0 = np.asarray(carry.state.n_closed)
        pad = self.decoder.lookback(self.loaded.model_config)
        emitted = [0] * b
        steps = 0
        while True:
            carry = run(params, e_params, carry)
            steps += int(carry.steps)
            ids = np.asarray(carry.state.ids)
            n_new = np.asarray(carry.state.n_new)
            chunks = []
            for i in range(b):
                chunks.append(ids[i, pad + n_B[i] + emitted[i]: pad + n_B[i] + n_new[i]])
                emitted[i] = int(n_new[i])
            done = bool(np.all(np.asarray(carry.state.done)))
            if not done:
                yield [self.decode(c) for c in chunks], None
                continue
            new = [self._finish(ids[i, pad + n_B[i]: pad + n_B[i] + n_new[i]], opts)
                   for i in range(b)]
            closed = (np.asarray(carry.state.n_closed) - n_closed0).tolist()
            hist = np.asarray(carry.history) if record_logits else None
            spec = speculative.summary(carry.spec) if carry.spec is not None else None
            yield [self.decode(c) for c in chunks], Result(new, closed, int(carry.latent_runs),
                                                          steps, hist, spec)
            return

    def _finish(self, new_ids: np.ndarray, opts: Options) -> bytes:
        ids = list(new_ids)
        if ids and ids[-1] == self.codec.eos:
            ids = ids[:-1]
        return cut_at_stop(self.decode(ids), opts.stop)[: opts.max_new]

    def generate(self, prompts: Sequence[bytes], opts: Options, record_logits: bool = False
                 ) -> Result:
        result = None
        for _, result in self.stream(prompts, opts, chunk=opts.max_new,
                                     record_logits=record_logits):
            pass
        return result


def cut_at_stop(text: bytes, stop: Sequence[bytes]) -> bytes:
    """Text before the earliest stop string."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


def _as_int(out: tuple[Any, Any]) -> tuple[Any, jax.Array]:
    state, ran = out
    return state, jnp.asarray(jnp.any(ran), jnp.int32)
