"""The command line and one-shot jobs: `blt-jax` subcommands, the quickstart main job,
reference-weight import and the patch viewer.
"""
