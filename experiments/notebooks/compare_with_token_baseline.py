# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # BLT vs a token baseline, on one machine
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/blt-jax/blob/main/experiments/notebooks/compare_with_token_baseline.ipynb)
#
# This notebook trains (or loads) a tiny **Byte Latent Transformer** and a byte-level **BPE
# baseline** of the same latent shape at the same training FLOPs, then compares them: the entropy
# / patch figure for your text, a fair bits-per-byte table (same documents, same bytes), the
# threshold sweep behind "larger patches save inference FLOPs", the noise-robustness table, and
# generations from both. Everything runs offline after the install, on a CPU, a GPU or a TPU
# runtime (Colab: *Runtime > Change runtime type*).
#
# The outputs saved in this file come from a reduced run (the settings it used are printed under
# the devices cell); *Run all* for the real thing (~10 minutes on a Colab CPU).

# %% [markdown]
# ## Settings
# `BLT_JAX_SOURCE`: where blt-jax is installed from: a git URL, or the path of a wheel you built
# (`python -m build --wheel`) and uploaded. `OUTPUT_DIR`: the one folder everything here is written
# to (models, figures, tables); on Colab a Drive folder such as
# `/content/drive/MyDrive/blt_jax` keeps them across sessions.

# %% tags=["parameters"]
BLT_JAX_SOURCE = "git+https://github.com/OWNER/blt-jax.git"  # or "/content/blt_jax-0.1.0-py3-none-any.whl"
OUTPUT_DIR = "blt_jax_notebook"  # the three tiny models, figures and tables (trained if missing)
STEPS = 300  # steps per tiny run when training here
MAX_BATCHES = 0  # evaluation batches per score (0 = the whole validation split)
NOISE_DOCS = 4  # validation documents in the robustness table
TEXT = "Daenerys Targaryen is in Game of Thrones, a fantasy epic by George R.R. Martin."

# %% [markdown]
# ## Install
# Installs blt-jax from `BLT_JAX_SOURCE`, with `jax[tpu]` on a TPU runtime and the CUDA jax on a
# GPU runtime that has one; elsewhere the CPU jax pip picks. Skipped where blt-jax is importable
# already (a checkout installed with `pip install -e .`) or `BLT_JAX_SKIP_INSTALL=1` (CI).

# %%
import importlib.metadata
import importlib.util
import os
import pathlib
import subprocess
import sys

JAX = "jax{extra}>=0.10.2,<0.12"  # the range blt-jax supports


def accelerator() -> str:
    """'tpu' (Colab/Cloud TPU: its variables or /dev/accel*, /dev/vfio/N), 'cuda12', or ''."""
    if any(os.environ.get(v) for v in ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE")) \
            or list(pathlib.Path("/dev").glob("accel*")) \
            or list(pathlib.Path("/dev").glob("vfio/[0-9]*")):
        return "tpu"
    for cuda in ("cuda13", "cuda12"):  # keep a GPU runtime's CUDA jax a CUDA jax
        try:
            importlib.metadata.version(f"jax-{cuda}-plugin")
            return cuda
        except importlib.metadata.PackageNotFoundError:
            pass
    return ""


def packages() -> list[str]:
    """What pip installs: blt-jax, and the jax of this runtime's accelerator if it has one."""
    extra = accelerator()
    return [BLT_JAX_SOURCE] + ([JAX.format(extra=f"[{extra}]")] if extra else [])


if os.environ.get("BLT_JAX_SKIP_INSTALL") == "1" or importlib.util.find_spec("blt_jax"):
    print("install: skipped (blt_jax is importable or BLT_JAX_SKIP_INSTALL=1)")
else:
    print("install:", *packages())
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *packages()], check=True)

# %%
import jax
import numpy as np
from absl import flags
from IPython.display import Image, Markdown, display

flags.FLAGS.mark_as_parsed()  # grain's worker flags (see the JAX stack guide)

import blt_jax
from blt_jax.pipeline import data
from blt_jax.evaluation import evaluate, figures, robustness, sweep
from blt_jax.tools import quickstart
from blt_jax.text import tokenizer

print(f"jax {jax.__version__} on {jax.default_backend()}: {jax.devices()}")
print(f"settings: STEPS={STEPS} MAX_BATCHES={MAX_BATCHES} NOISE_DOCS={NOISE_DOCS} "
      f"OUTPUT_DIR={OUTPUT_DIR!r}")
root = pathlib.Path(OUTPUT_DIR)
figdir = root / "figures"
figdir.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Train or load the models
# `quickstart.run` trains the entropy model, the BLT (threshold calibrated to 4 bytes/patch) and
# the BPE baseline at the BLT's training FLOPs, exactly like `blt-jax quickstart`.

# %%
if not (root / "bpe" / "summary.json").exists():
    quickstart.run(str(root), steps=STEPS)
blt = blt_jax.load(root / "blt")
base = blt_jax.load(root / "bpe")
print(f"BLT: {blt.config.train.steps} steps, {blt.patching_rule}")

# %% [markdown]
# ## Where the patches fall
# The entropy of each next byte under the entropy model; a patch starts wherever it exceeds the
# threshold (paper Figure 4).

# %%
ids = tokenizer.encode(TEXT, eos=False)
h = blt.entropies(ids[None])[0]
lengths = blt.patch_lengths(ids[None], include_next=False)[0]
fig_entropy = figures.entropy_figure(ids, h, lengths, blt.patching_rule["threshold"],
                                     str(figdir / "entropy.png"))
display(Image(fig_entropy))

# %% [markdown]
# ## Fair bits-per-byte
# Both models score the same validation documents; every byte (and EOS/BOS) counts once.

# %%
docs = data.documents(blt.config.data, "validation")
rows = []
for name, model in [("BLT", blt), ("entropy model (byte LM)", blt.entropy_model), ("BPE", base)]:
    r = evaluate.score(model, docs, max_batches=MAX_BATCHES or None)
    rows.append((name, r["bpb"], r["bytes"], r["flops_per_byte"],
                 r.get("flops_per_byte_with_entropy", r["flops_per_byte"])))
table = "| model | BPB | bytes scored | inference FLOPs/byte | with patcher |\n|---|---|---|---|---|\n"
table += "\n".join(f"| {n} | {b:.3f} | {int(nb)} | {f:.3g} | {f2:.3g} |" for n, b, nb, f, f2 in rows)
(root / "table.md").write_text(table + "\n")
display(Markdown(table))

# %% [markdown]
# ## Threshold sweep
# The same BLT evaluated with larger and smaller patches.

# %%
sweep_rows = sweep.run(root / "blt", targets=[2.0, 4.0, 8.0], max_batches=MAX_BATCHES or 4,
                       plot=str(figdir / "sweep.png"))
print(sweep.format_rows(sweep_rows))
display(Image(str(figdir / "sweep.png")))

# %% [markdown]
# ## Robustness to noised text
# BPB on clean and noised versions of the same documents (paper Table 3 variants).

# %%
noise = robustness.noise_table({"BLT": blt, "BPE": base}, docs[:NOISE_DOCS], rate=0.1)
cols = ["clean", *robustness.NOISES, "degradation_pct"]
md = "| model | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|\n"
md += "\n".join("| " + r["model"] + " | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |"
                for r in noise)
(root / "robustness.md").write_text(md + "\n")
display(Markdown(md))

# %% [markdown]
# ## Generation from both

# %%
prompt = "The return value of "
for name, model in [("BLT", blt), ("BPE", base)]:
    out = model.generate(prompt, max_new_bytes=64)
    print(f"{name}: {prompt!r} -> {out.decode('utf-8', errors='replace')!r}")
