"""Training: the objective (summed byte NLL), AdamW schedule, the jitted sharded train step and
its loop, Orbax checkpoints (pins, best, latest) and metrics/TensorBoard.
"""
