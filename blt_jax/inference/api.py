"""`blt_jax.load(path)`: open a blt-jax workdir (trained or imported) as a ready-to-use model."""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from blt_jax.training import checkpoint
from blt_jax import config
from blt_jax.text import patching
from blt_jax.scale import sharding
from blt_jax.model.blt import BLT, check_inputs
from blt_jax.model.factory import build_model, read_config  # noqa: F401 (re-exported)
from blt_jax.model.transformer import entropies


def _bucket(n: int) -> int:
    return max(2, 1 << (n - 1).bit_length())


class Model:
    """A loaded model: `.logits`, `.entropies`, `.patch_lengths` (and `.generate`)."""

    def __init__(self, workdir: str | pathlib.Path, step: int | None = None,
                 mesh: jax.sharding.Mesh | None = None):
        self.workdir = pathlib.Path(workdir)
        self.config = read_config(workdir)
        self.kind = self.config.kind
        self.model_config = config.validate(self.config.model)
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(self.model_config)))
        if mesh is not None:  # restore straight into this mesh's shards
            shardings = sharding.state_shardings(abstract, mesh)
        else:  # a whole copy on this process's first device (meaningful with many processes)
            local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            shardings = jax.tree.map(lambda _: local, abstract)
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract, shardings)
        params, self.step = checkpoint.restore_params(workdir, abstract, step)
        self.graphdef, self.params = graphdef, params
        self.module = nnx.merge(graphdef, params)
        self.entropy_model: Model | None = None
        if self.kind == "blt" and self.config.entropy.workdir:
            ent_dir = self.workdir / self.config.entropy.workdir
            self.entropy_model = Model(ent_dir, mesh=mesh)
        self.patching_rule = config.patching_rule(self.model_config.patching) \
            if self.kind == "blt" else None
        self.tokenizer = None
        if self.kind == "bpe":
            from blt_jax.text import bpe

            self.tokenizer = bpe.load(self.workdir)

    @functools.cached_property
    def _apply(self) -> Any:
        return jax.jit(lambda p, *a: nnx.merge(self.graphdef, p)(*a))

    @functools.cached_property
    def _entropies(self) -> Any:
        return jax.jit(lambda p, ids: entropies(nnx.merge(self.graphdef, p), ids))

    def entropies(self, ids: Any) -> np.ndarray:
        """(B, N) next-byte entropies in nats from this model (entropy kind) or its patcher."""
        ids = np.atleast_2d(np.asarray(ids, np.int32))
        if self.kind == "entropy":
            check_inputs(ids)
            return np.asarray(self._entropies(self.params, ids))
        if self.entropy_model is None:
            raise ValueError("entropies: this model has no entropy model")
        return self.entropy_model.entropies(ids)

    def patch_lengths(self, ids: Any, include_next: bool = True) -> np.ndarray:
        """(B, P) patch lengths with this BLT's rule (Σ = N + 1 with include_next)."""
        if self.kind != "blt":
            raise ValueError(f"patch_lengths: a {self.kind} model has no patches")
        ids = np.atleast_2d(np.asarray(ids, np.int32))
        h = self.entropies(ids) if self.patching_rule.needs_entropies else None
        return patching.patch_lengths(ids, h, self.patching_rule, include_next=include_next)

    def logits(self, ids: Any, patch_lengths: Any = None) -> np.ndarray:
        """(B, N, V) float32 logits; BLT patches come from its entropy model unless given."""
        ids = np.atleast_2d(np.asarray(ids, np.int32))
        if self.kind != "blt":
            if patch_lengths is not None:
                raise ValueError("patch_lengths: only BLT models take patch lengths")
            if self.kind == "entropy":
                check_inputs(ids)
            return np.asarray(self._apply(self.params, ids))
        if patch_lengths is None:
            patch_lengths = self.patch_lengths(ids)
        lengths = np.atleast_2d(np.asarray(patch_lengths, np.int32))
        check_inputs(ids, lengths)
        width = _bucket(lengths.shape[1])  # fewer recompiles across calls
        lengths = np.pad(lengths, ((0, 0), (0, width - lengths.shape[1])))
        return np.asarray(self._apply(self.params, jnp.asarray(ids), jnp.asarray(lengths)))


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
    p = pathlib.Path(path)
    if not p.is_dir():
        raise ValueError(f"path: {path} is not a directory")
    return Model(p, step, mesh)
