"""`blt_jax.load(path)`: open a blt-jax workdir (trained or imported) as a ready-to-use model."""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import numpy as np
from flax import nnx

from blt_jax import paths
from blt_jax.inference import validate
from blt_jax.model import factory, kinds
from blt_jax.model.factory import build_model, read_config  # noqa: F401 (re-exported)
from blt_jax.text import patching


class Model:
    """A loaded model: `.logits`, `.entropies`, `.patch_lengths` (and `.generate`)."""

    def __init__(self, workdir: str | pathlib.Path, step: int | None = None,
                 mesh: jax.sharding.Mesh | None = None):
        self.workdir = paths.path(workdir)
        self.config, weights, self.step = factory.load_weights(workdir, step, mesh)
        self.kind = kinds.of(self.config)
        self.model_config = weights.config
        self.graphdef, self.params = weights.graphdef, weights.params
        self.module = nnx.merge(self.graphdef, self.params)
        patcher_dir = self.kind.patcher_dir(self.config)
        self.entropy_model: Model | None = \
            Model(self.workdir / patcher_dir, mesh=mesh) if patcher_dir else None
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
            raise ValueError("entropies: this model has no entropy model")
        return self.entropy_model.entropies(ids)

    def patch_lengths(self, ids: Any, include_next: bool = True) -> np.ndarray:
        """(B, P) patch lengths with this BLT's rule (Σ = N + 1 with include_next)."""
        if self.patching_rule is None:
            raise ValueError(f"patch_lengths: a {self.kind} model has no patches")
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

    max_context = 4096  # prompt + new ids per row for generate()

    def generate(self, prompt: Any, *, max_new_bytes: int = 256, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                 stop: Any = None) -> Any:
        """New bytes after `prompt` (str or bytes, or a list of them for a batch).

        temperature 0 is greedy; stops at EOS, `max_new_bytes` or any `stop` string (excluded
        from the result). BLT runs one latent step per closed patch (see blt_jax.inference.incremental).
        """
        from blt_jax.inference import generate

        batch = isinstance(prompt, (list, tuple))
        prompts = [tokenizer_bytes(p) for p in (prompt if batch else [prompt])]
        validate.generation(prompts, max_new_bytes, temperature, top_k, top_p, self.max_context)
        validate.generator(self)
        if not prompts:
            raise ValueError("prompt: give at least one prompt")
        stops = tuple(tokenizer_bytes(s) for s in ([stop] if isinstance(stop, (str, bytes))
                                                   else (stop or ())))
        opts = generate.Options(max_new_bytes, temperature, top_k, top_p, seed, stops)
        result = self._generator.generate(prompts, opts)
        self.last_generation = result
        return result.new if batch else result.new[0]


def tokenizer_bytes(text: Any) -> bytes:
    from blt_jax.text.tokenizer import to_bytes

    return to_bytes(text)


def load(path: str | pathlib.Path, step: int | None = None,
         mesh: jax.sharding.Mesh | None = None) -> Model:
    """Opens a workdir written by blt-jax (training, or `blt-jax import-reference`).

    With `mesh`, parameters are restored directly into that mesh's shards (any mesh shape).
    """
    p = paths.path(path)
    if not p.is_dir():
        raise ValueError(f"path: {path} is not a directory")
    return Model(p, step, mesh)
