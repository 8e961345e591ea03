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
# This notebook trains (or loads) a tiny **Byte Latent Transformer** and a byte-level **BPE
# baseline** of the same latent shape at the same training FLOPs, then compares them: the entropy
# / patch figure for your text, a fair bits-per-byte table (same documents, same bytes), the
# threshold sweep behind "larger patches save inference FLOPs", the noise-robustness table, and
# generations from both. Everything runs offline on a CPU (Colab included); on a TPU runtime the
# same code uses the TPU.

# %% tags=["parameters"]
WORKDIR = "runs/notebook"  # where the three tiny models live (trained if missing)
STEPS = 300  # steps per tiny run when training here
MAX_BATCHES = 0  # evaluation batches per score (0 = the whole validation split)
NOISE_DOCS = 4  # validation documents in the robustness table
TEXT = "Daenerys Targaryen is in Game of Thrones, a fantasy epic by George R.R. Martin."

# %%
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("blt_jax") is None:  # Colab: install blt-jax (needs network)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "blt-jax"], check=True)

import json
import pathlib

import numpy as np
from absl import flags
from IPython.display import Image, Markdown, display

flags.FLAGS.mark_as_parsed()  # grain's worker flags (see the JAX stack guide)

import blt_jax
from blt_jax.pipeline import data
from blt_jax.evaluation import evaluate, figures, robustness, sweep
from blt_jax.tools import quickstart
from blt_jax.text import tokenizer

root = pathlib.Path(WORKDIR)
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
print(json.dumps({k: blt.config.train.steps for k in ["blt"]}), blt.patching_rule)

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
md = "| model | " + " | ".join(cols) + " |\n|---" * (len(cols) + 1) + "|\n"
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
