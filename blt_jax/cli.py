"""The `blt-jax` command line (also `python -m blt_jax`).

Each subcommand parses its flags here and calls one library function; heavy imports happen
inside the handlers so `blt-jax --help` stays instant. User mistakes (ValueError / OSError from
the library) print one line and exit 2; set BLT_JAX_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

Handler = Callable[[argparse.Namespace, list[str]], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Registers a subcommand: `add_args` declares its flags, the decorated function runs it."""
    def register(fn: Handler) -> Handler:
        _COMMANDS[name] = (help_text, add_args, fn)
        return fn
    return register


def _text_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", help="text to patch (UTF-8)")
    g.add_argument("--text-file", help="file whose raw bytes are patched")


def _read_text(args: argparse.Namespace) -> bytes:
    if args.text is not None:
        return args.text.encode("utf-8", errors="ignore")
    with open(args.text_file, "rb") as f:
        return f.read()


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
def _patch(args: argparse.Namespace, extra: list[str]) -> int:
    from blt_jax import patch_view

    print(patch_view.run(text=_read_text(args), mode=args.mode, threshold=args.threshold,
                         max_patch_length=args.max_patch_length, patch_size=args.patch_size,
                         workdir=args.workdir, plot=args.plot))
    return 0


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--blt", required=True, help="reference release folder (params.json + "
                   "consolidated.pth) or Hugging Face folder (config.json + *.safetensors)")
    p.add_argument("--entropy", default=None, help="the reference entropy-model folder "
                   "(Hugging Face folders bundle it)")
    p.add_argument("--out", required=True, help="new workdir to write (must not exist or be empty)")


@command("import-reference", "convert released BLT weights into a blt-jax workdir", _import_args)
def _import_reference(args: argparse.Namespace, extra: list[str]) -> int:
    from blt_jax import reference_import

    out = reference_import.import_reference(args.blt, args.out, args.entropy)
    print(f"wrote {out} (open it with blt_jax.load({out!r}))")
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
        parser.print_help()
        return 0 if not extra else 2
    if extra and args.command not in _ACCEPTS_OVERRIDES:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.handler(args, extra) or 0)
    except KeyboardInterrupt:
        print("blt-jax: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError) as e:  # user mistakes: one line, no traceback
        if os.environ.get("BLT_JAX_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"blt-jax {args.command}: error: {msg}", file=sys.stderr)
        return 2


# Subcommands that take `--config.a.b=value` overrides after their own flags.
_ACCEPTS_OVERRIDES: set[str] = set()

if __name__ == "__main__":
    sys.exit(main())
