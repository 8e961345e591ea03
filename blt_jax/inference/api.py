"""`blt_jax.load(path)`: open a blt-jax workdir (trained or imported) as a ready-to-use model."""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from flax import nnx

from blt_jax import paths
from blt_jax.errors import UserError
from blt_jax.inference import validate
from blt_jax.model import factory, kinds
from blt_jax.model.factory import build_model, read_config  # noqa: F401 (re-exported)
from blt_jax.text import patching


DRAFT_LEN = 32  # bytes a speculation round drafts at most (best measured on the quickstart BLT)


class Model:
    """A loaded model: `.logits`, `.entropies`, `.patch_lengths` (and `.generate`)."""

    def __init__(self, workdir: str | pathlib.Path, step: int | None = None,
                 mesh: jax.sharding.Mesh | None = None, max_context: int = 4096,
                 entropy_context: int | None = None):
        if isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 2:
            raise UserError(f"max_context: expected an integer >= 2 (prompt + new ids per row), "
                            f"got {max_context!r}")
        check_entropy_context(entropy_context)
        self.max_context = max_context  # prompt + new ids per row for generate() / stream()
        self.workdir = paths.path(workdir)
        self.kind = kinds.of(factory.read_config(workdir))
        own = {"entropy_context": entropy_context} \
            if entropy_context is not None and self.kind.scores_entropies else None
        self.config, weights, self.step = factory.load_weights(workdir, step, mesh, own)
        self.model_config = weights.config
        self.graphdef, self.params = weights.graphdef, weights.params
        self.module = nnx.merge(self.graphdef, self.params)
        patcher_dir = self.kind.patcher_dir(self.config)
        self.entropy_model: Model | None = Model(
            self.workdir / patcher_dir, mesh=mesh, entropy_context=entropy_context) \
            if patcher_dir else None
        if entropy_context is not None and not (own or self.entropy_model):
            raise UserError(f"entropy_context: a {self.kind} workdir without an entropy model "
                            "computes no entropies; drop entropy_context")
        self.patching_rule = self.kind.patch_rule(self.model_config)
        self.codec = self.kind.codec(self.workdir)
        self.tokenizer = self.codec.tokenizer  # the BPE tokenizer (None: byte ids)

    @property
    def weights(self) -> factory.Weights:
        return factory.Weights(self.graphdef, self.params, self.model_config)

    @functools.cached_property
    def _apply(self) -> Any:
        return jax.jit(lambda p, *a: nnx.merge(self.graphdef, p)(*a))

    @functools.cached_property
    def _entropies(self) -> Any:
        return factory.entropy_fn(self.weights)

    def entropies(self, ids: Any) -> np.ndarray:
        """(B, N) next-byte entropies in nats from this model (entropy kind) or its patcher."""
        ids = validate.ids(ids, self.model_config.vocab_size)
        if self.kind.scores_entropies:
            return self._entropies(ids)
        if self.entropy_model is None:
            raise UserError("entropies: this model has no entropy model")
        return self.entropy_model.entropies(ids)

    def patch_lengths(self, ids: Any, include_next: bool = True) -> np.ndarray:
        """(B, P) patch lengths with this BLT's rule (Σ = N + 1 with include_next)."""
        if self.patching_rule is None:
            raise UserError(f"patch_lengths: a {self.kind} model has no patches")
        ids = np.atleast_2d(np.asarray(ids, np.int32))
        h = self.entropies(ids) if self.patching_rule.needs_entropies else None
        return patching.patch_lengths(ids, h, self.patching_rule, include_next=include_next)

    def logits(self, ids: Any, patch_lengths: Any = None) -> np.ndarray:
        """(B, N, V) float32 logits; BLT patches come from its entropy model unless given."""
        ids = validate.ids(ids, self.model_config.vocab_size)
        args = self.kind.model_inputs(ids, patch_lengths, self.patch_lengths)
        return np.asarray(self._apply(self.params, *args))

    @functools.cached_property
    def _generator(self) -> Any:
        from blt_jax.inference import generate

        return generate.Generator(self, self.max_context)

    def generate(self, prompt: Any, *, max_new_bytes: int = 256, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                 stop: Any = None, speculate: bool = False, draft_len: int | None = None) -> Any:
        """New bytes after `prompt` (str or bytes, or a list of them for a batch).

        temperature 0 is greedy; stops at EOS, `max_new_bytes` or any `stop` string (excluded
        from the result). BLT runs one latent step per closed patch (see
        blt_jax.inference.incremental); `speculate` drafts up to `draft_len` bytes with the local
        models and verifies them in one pass (blt_jax.inference.speculative; default
        DRAFT_LEN): the same greedy
        bytes, the same sampling distribution, `.last_generation.speculation` its figures.
        """
        batch = isinstance(prompt, (list, tuple))
        prompts, opts = self._request(prompt if batch else [prompt], max_new_bytes, temperature,
                                      top_k, top_p, seed, stop, speculate, draft_len)
        result = self._generator.generate(prompts, opts)
        self.last_generation = result
        return result.new if batch else result.new[0]

    def stream(self, prompt: Any, *, max_new_bytes: int = 256, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, seed: int = 0,
               stop: Any = None, chunk: int = 8, speculate: bool = False,
               draft_len: int | None = None) -> Iterator[bytes]:
        """The bytes :meth:`generate` returns for one prompt, as they are produced.

        One device call per `chunk` new ids; bytes that could still begin a stop string are held
        back, so the chunks join to exactly ``generate(...)``. `.last_generation` holds the
        result (latent steps, ...) once the iterator is exhausted. Speculating, one device call
        runs `chunk` rounds.
        """
        prompts, opts = self._request([prompt], max_new_bytes, temperature, top_k, top_p, seed,
                                      stop, speculate, draft_len)
        hold = max((len(s) for s in opts.stop), default=1) - 1
        pending, sent = b"", 0
        for pieces, result in self._generator.stream(prompts, opts, chunk=chunk):
            if result is not None:
                self.last_generation = result
                if len(result.new[0]) > sent:
                    yield result.new[0][sent:]
                return
            pending += pieces[0]
            safe = max(0, len(pending) - hold)
            if safe:
                yield pending[:safe]
                sent += safe
            pending = pending[safe:]

    def _request(self, prompts: Sequence[Any], max_new_bytes: int, temperature: float,
                 top_k: int | None, top_p: float | None, seed: int, stop: Any,
                 speculate: bool = False, draft_len: int | None = None
                 ) -> tuple[list[bytes], Any]:
        """Checked prompts (bytes) and generation options, or a one-line UserError."""
        from blt_jax.inference import generate

        prompts = [tokenizer_bytes(p) for p in prompts]
        validate.generation(prompts, max_new_bytes, temperature, top_k, top_p, self.max_context)
        validate.generator(self)
        if not prompts:
            raise UserError("prompt: give at least one prompt")
        stops = tuple(tokenizer_bytes(s) for s in ([stop] if isinstance(stop, (str, bytes))
                                                   else (stop or ())))
        if not isinstance(speculate, bool):
            raise UserError(f"speculate: expected True or False, got {speculate!r}")
        if draft_len is not None and not speculate:
            raise UserError("draft_len: only applies when speculating; add speculate=True "
                            "(--speculate)")
        draft_len = DRAFT_LEN if draft_len is None else draft_len
        if speculate and (isinstance(draft_len, bool) or not isinstance(draft_len, int)
                          or draft_len < 1):
            raise UserError(f"draft_len: expected an integer >= 1 (most bytes a speculation "
                            f"round drafts), got {draft_len!r}")
        return prompts, generate.Options(max_new_bytes, temperature, top_k, top_p, seed, stops,
                                         draft_len if speculate else 0)


def tokenizer_bytes(text: Any) -> bytes:
    from blt_jax.text.tokenizer import to_bytes

    return to_bytes(text)


def check_entropy_context(value: int | None) -> None:
    """None (as recorded), 0 (no reset) or a positive reset period in ids."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise UserError(f"entropy_context: expected None, 0 (never reset) or ids per entropy "
                        f"context (the reference: 8192), got {value!r}")


def load(path: str | pathlib.Path, step: int | None = None,
         mesh: jax.sharding.Mesh | None = None, max_context: int = 4096,
         entropy_context: int | None = None) -> Model:
    """Opens a workdir written by blt-jax (training, or `blt-jax import-reference`).

    With `mesh`, parameters are restored directly into that mesh's shards (any mesh shape);
    `max_context` bounds prompt + new ids per row in generation (it sizes the caches).
    `entropy_context` restarts the entropy model's context every that many ids when it scores
    patching entropies (8192: what the reference does; 0: never, blt-jax's default; None: what
    the workdir's entropy model config records, `import-reference --entropy-context`).
    Generation's incremental entropies keep one context per row.
    """
    p = paths.path(path)
    if not p.is_dir():
        raise UserError(f"path: {path} is not a directory; give a blt-jax workdir")
    return Model(p, step, mesh, max_context, entropy_context)
