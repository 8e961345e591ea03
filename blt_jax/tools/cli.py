"""The `blt-jax` command line (also `python -m blt_jax`).

Each subcommand parses its flags here and calls one library function; heavy imports happen
inside the handlers so `blt-jax --help` stays instant. User mistakes (`errors.UserError`) print
one line and exit 2 (BLT_JAX_DEBUG=1 shows the traceback); anything else is a defect and keeps
its traceback (exit 1), so a bug never looks like a user mistake.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from blt_jax.errors import UserError  # light: no JAX import

# A handler returns the exit code, or the text to print (exit 0).
Handler = Callable[[argparse.Namespace, list[str]], int | str | None]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Registers a subcommand: `add_args` declares its flags, the decorated function runs it."""
    def register(fn: Handler) -> Handler:
        _COMMANDS[name] = (help_text, add_args, fn)
        return fn
    return register


def _positive(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is argparse's one-line error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _text_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", help="text to patch (UTF-8)")
    g.add_argument("--text-file", help="file whose raw bytes are patched")


def _read_file(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"{flag}: cannot read {path!r} ({e.strerror}); give an existing file") \
            from None


def _workdir(path: str) -> str:
    """A blt-jax workdir to read: checked here so a typo is one line, not a traceback."""
    from blt_jax import paths
    if not (paths.path(path) / "config.json").exists():
        raise UserError(f"--workdir: {path!r} is not a blt-jax workdir (no config.json); give a "
                        "trained or imported workdir")
    return path


def _read_text(args: argparse.Namespace) -> bytes:
    if args.text is not None:
        return args.text.encode("utf-8", errors="ignore")
    return _read_file(args.text_file, "--text-file")


def _patch_args(p: argparse.ArgumentParser) -> None:
    _text_args(p)
    p.add_argument("--mode", default=None, help="patching mode (default: the model's, or 'space')")
    p.add_argument("--threshold", type=float, default=None, help="entropy threshold (nats)")
    p.add_argument("--max-patch-length", type=int, default=None)
    p.add_argument("--patch-size", type=float, default=4.0, help="static mode patch size")
    p.add_argument("--workdir", default=None,
                   help="a trained BLT or entropy-model workdir: entropy patching with its model")
    p.add_argument("--plot", default=None, help="write the entropy/patch figure to this PNG")


@command("patch", "show how a text is cut into patches", _patch_args)
def _patch(args: argparse.Namespace, extra: list[str]) -> str:
    from blt_jax.text import patching
    from blt_jax.tools import patch_view

    if args.mode is not None and args.mode not in patching.MODES:
        raise UserError(f"--mode: unknown patching mode {args.mode!r}; choose one of "
                        f"{', '.join(patching.MODES)}")
    return patch_view.run(text=_read_text(args), mode=args.mode, threshold=args.threshold,
                          max_patch_length=args.max_patch_length, patch_size=args.patch_size,
                          workdir=args.workdir, plot=args.plot)


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--blt", required=True, help="reference release folder (params.json + "
                   "consolidated.pth) or Hugging Face folder (config.json + *.safetensors)")
    p.add_argument("--entropy", default=None, help="the reference entropy-model folder "
                   "(Hugging Face folders bundle it)")
    p.add_argument("--out", required=True, help="new workdir to write (must not exist or be empty)")
    p.add_argument("--entropy-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="entropy model compute dtype (bfloat16: as the reference runs it)")
    p.add_argument("--entropy-context", type=int, default=0, metavar="IDS",
                   help="restart the entropy model's context every IDS ids when scoring patch "
                   "entropies (8192: as the reference does; 0, the default: never)")


@command("import-reference", "convert released BLT weights into a blt-jax workdir", _import_args)
def _import_reference(args: argparse.Namespace, extra: list[str]) -> str:
    from blt_jax.tools import reference_import

    out = reference_import.import_reference(args.blt, args.out, args.entropy,
                                             args.entropy_dtype, args.entropy_context)
    return f"wrote {out} (open it with blt_jax.load({out!r}))"


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="experiment file (experiments/*.py), "
                   "optionally FILE:ARG for get_config(ARG)")
    p.add_argument("--workdir", required=True, help="where checkpoints, logs and config go; an "
                   "existing workdir resumes")
    p.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-process; "
                   "Cloud TPU VMs are detected automatically)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--heartbeat-timeout", type=int, default=30,
                   help="seconds before the survivors of a crashed process fail")


@command("train", "train (or resume) an experiment; overrides: --config.a.b=value", _train_args)
def _train(args: argparse.Namespace, extra: list[str]) -> str:
    import json

    from blt_jax import overrides
    from blt_jax.scale import distributed
    from blt_jax.training import train

    cfg = overrides.apply_overrides(overrides.load_experiment(args.config), extra)
    distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                           heartbeat_timeout_s=args.heartbeat_timeout)
    return json.dumps(train.run(cfg, args.workdir), indent=2)


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="a trained or imported workdir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--data-source", default=None, help="override data.source "
                   "(embedded, text, jsonl, tfds, preprocessed)")
    p.add_argument("--data-path", default=None, help="override data.path")
    p.add_argument("--split", default="validation", help="which split to score")
    p.add_argument("--max-batches", type=int, default=0, help="0: the whole split")
    p.add_argument("--seq-len", type=_positive, default=None, help="window length (default: the "
                   "model's data.seq_len, in its own units)")
    p.add_argument("--stride", type=_positive, default=None, help="sliding windows with this stride "
                   "(default: non-overlapping windows)")


@command("eval", "bits-per-byte of a workdir's model on its (or given) data, as JSON", _eval_args)
def _eval(args: argparse.Namespace, extra: list[str]) -> str:
    import json

    from blt_jax.evaluation import evaluate

    return json.dumps(evaluate.evaluate_workdir(
        _workdir(args.workdir), step=args.step, source=args.data_source, path=args.data_path,
        split=args.split, max_batches=args.max_batches or None, seq_len=args.seq_len,
        stride=args.stride), indent=2)


def _ckpt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "pin", "unpin"])
    p.add_argument("workdir")
    p.add_argument("step", nargs="?", type=int)
    p.add_argument("--verify", action="store_true", help="list: read every array (finds "
                   "truncated files), not only the metadata")


@command("ckpt", "list checkpoints, or pin/unpin a step so cleanup never deletes it", _ckpt_args)
def _ckpt(args: argparse.Namespace, extra: list[str]) -> int:
    from blt_jax.training import checkpoint

    if args.action == "list":
        rows = checkpoint.describe(args.workdir, full=args.verify)
        if not rows:
            raise UserError(f"ckpt: no checkpoints in {args.workdir}")
        for r in rows:
            m = " ".join(f"{k}={v:.4f}" for k, v in sorted(r["metrics"].items()))
            bad = f"  BAD: {r['bad']}" if r["bad"] else ""
            print(f"{r['step']:>8}  {'pinned' if r['pinned'] else '      '}  {m}{bad}")
        return 0
    if args.step is None:
        raise UserError(f"ckpt {args.action}: give the STEP to {args.action}")
    (checkpoint.pin if args.action == "pin" else checkpoint.unpin)(args.workdir, args.step)
    print(f"{args.action}ned step {args.step} in {args.workdir}")
    return 0


def _preprocess_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="a trained entropy-model workdir")
    p.add_argument("--out", required=True, help="new directory for the ArrayRecord shards")
    p.add_argument("--shards", type=_positive, default=1)
    p.add_argument("--max-docs", type=int, default=0, help="0: every document")


@command("preprocess", "store entropies (float16) of a dataset in ArrayRecord shards",
         _preprocess_args)
def _preprocess(args: argparse.Namespace, extra: list[str]) -> str:
    import json

    from blt_jax.pipeline import preprocess

    return json.dumps(preprocess.run(args.workdir, args.out, shards=args.shards,
                                     max_docs=args.max_docs), indent=2)


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="a BLT or BPE workdir")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="prompt text (UTF-8); '' for an empty prompt (BOS only)")
    g.add_argument("--prompt-file", help="file whose raw bytes are the prompt")
    p.add_argument("--max-new-bytes", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--stream", action="store_true", help="print bytes as they are produced")
    p.add_argument("--speculate", action="store_true", help="BLT: self-speculative decoding")
    p.add_argument("--draft-len", type=_positive, help="--speculate: most bytes drafted (32)")
    p.add_argument("--max-context", type=_positive, default=4096,
                   help="prompt + new ids per row (sizes the caches)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")


@command("generate", "continue a prompt with a BLT (one latent step per patch) or BPE model",
         _generate_args)
def _generate(args: argparse.Namespace, extra: list[str]) -> int:
    import codecs
    import time

    import blt_jax

    if args.prompt is not None:
        try:
            prompt = args.prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError("--prompt: not valid UTF-8; pass raw bytes with --prompt-file") \
                from None
    else:
        prompt = _read_file(args.prompt_file, "--prompt-file")

    model = blt_jax.load(_workdir(args.workdir), args.step, max_context=args.max_context)
    request = dict(max_new_bytes=args.max_new_bytes, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   stop=[s.encode("utf-8") for s in args.stop], speculate=args.speculate,
                   draft_len=args.draft_len)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # never split a character
    t0 = time.perf_counter()
    if args.stream:
        for piece in model.stream(prompt, **request):
            sys.stdout.write(decoder.decode(piece))
            sys.stdout.flush()
    else:
        sys.stdout.write(decoder.decode(model.generate(prompt, **request)))
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    dt = time.perf_counter() - t0
    result = model.last_generation
    n = len(result.new[0])
    extra_info = f", {result.latent_steps[0]} latent steps" \
        if model.patching_rule is not None else ""
    if result.speculation is not None:  # bytes committed per latent pass
        extra_info += f", {result.speculation['bytes_per_verify']:.1f} bytes per verify pass"
    print(f"[{n} bytes in {dt:.2f} s{extra_info}]", file=sys.stderr)
    return 0


def _compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="experiment file, e.g. experiments/blt_1b.py")
    p.add_argument("--topology", required=True, help="TPU topology (v5p:4x4x4, v5e:16x16, "
                   "v6e:8x8) or accelerator type (v5p-64, v5litepod-256)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--grad-accum", choices=["auto"], default=None,
                   help="auto: the smallest train.grad_accum whose step fits with --headroom")
    p.add_argument("--headroom", type=float, default=0.15,
                   help="with --grad-accum auto: fraction of HBM that must stay free")


@command("compile-check", "AOT-compile the train step for a TPU slice on this machine and "
         "report per-device HBM use (needs pip install 'blt-jax[tpu]')", _compile_args)
def _compile_check(args: argparse.Namespace, extra: list[str]) -> int:
    import json

    from blt_jax.scale import compile_check
    from blt_jax import overrides

    try:
        compile_check.topology_name(args.topology)  # parses only the flag's text
    except ValueError as e:
        raise UserError(f"--{e}") from None
    if not 0.0 <= args.headroom < 1.0:
        raise UserError(f"--headroom: a fraction in [0, 1), got {args.headroom}")
    cfg = overrides.apply_overrides(overrides.load_experiment(args.config), extra)
    report = compile_check.smallest_accumulation(cfg, args.topology, headroom=args.headroom) \
        if args.grad_accum == "auto" else compile_check.check(cfg, args.topology)
    print(json.dumps(report, indent=2) if args.json else compile_check.format_report(report))
    return 0 if report["fits"] else 3


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="a trained BLT workdir")
    p.add_argument("--thresholds", type=_floats, default=[], help="e.g. 2.5,3,3.5")
    p.add_argument("--targets", type=_floats, default=[], help="target bytes/patch, e.g. 2,4,6,8")
    p.add_argument("--max-batches", type=int, default=0, help="0: the whole validation split")
    p.add_argument("--plot", default=None, help="write the sweep figure to this PNG")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")


@command("sweep-threshold", "evaluate a BLT at several thresholds / patch sizes: bytes/patch, "
         "FLOPs/byte, BPB", _sweep_args)
def _sweep(args: argparse.Namespace, extra: list[str]) -> int:
    import json

    from blt_jax.evaluation import sweep

    rows = sweep.run(args.workdir, thresholds=args.thresholds, targets=args.targets,
                     max_batches=args.max_batches or None, plot=args.plot)
    print(sweep.format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="experiments/compare_tiny.py",
                   help="comparison config (FILE or FILE:ci)")
    p.add_argument("--workdir", default="runs/compare_tiny")


@command("compare", "BLT (entropy/space/static patching) vs BPE at equal training FLOPs: table "
         "and BPB-vs-FLOPs plot", _compare_args)
def _compare(args: argparse.Namespace, extra: list[str]) -> int:
    from blt_jax.evaluation import compare
    from blt_jax import overrides

    cfg = overrides.apply_overrides(overrides.load_experiment(args.config), extra)
    compare.run(cfg, args.workdir)
    return 0


def _quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="runs/quickstart")
    p.add_argument("--steps", type=int, default=0, help="override the tiny runs' step count")


@command("quickstart", "train entropy model, BLT and BPE baseline on the embedded corpus, "
         "evaluate, print a table (the README's main job)", _quickstart_args)
def _quickstart(args: argparse.Namespace, extra: list[str]) -> int:
    from blt_jax.tools import quickstart

    quickstart.run(args.workdir, args.steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from blt_jax import __version__

    parser = argparse.ArgumentParser(
        prog="blt-jax", description="Byte Latent Transformer in JAX: patch, train, evaluate, "
        "generate. Run `blt-jax COMMAND --help` for a command's flags.")
    parser.add_argument("--version", action="version", version=f"blt-jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, fn) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(handler=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "handler", None) is None:
        if extra:
            parser.error(f"unknown command {extra[0]!r}; run `blt-jax --help` for the commands")
        parser.print_usage(sys.stderr)
        print("blt-jax: error: give a COMMAND; run `blt-jax --help` for the list", file=sys.stderr)
        return 2
    if extra and args.command not in _ACCEPTS_OVERRIDES:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        out = args.handler(args, extra)
        if isinstance(out, str):
            print(out)
            return 0
        return int(out or 0)
    except KeyboardInterrupt:
        print("blt-jax: interrupted", file=sys.stderr)
        return 130
    except UserError as e:  # user mistakes: one line, no traceback; everything else is a bug
        if os.environ.get("BLT_JAX_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"blt-jax {args.command}: error: {msg}", file=sys.stderr)
        return 2


# Subcommands that take `--config.a.b=value` overrides after their own flags.
_ACCEPTS_OVERRIDES: set[str] = {"train", "compile-check", "compare"}

if __name__ == "__main__":
    sys.exit(main())
