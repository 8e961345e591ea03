"""Measuring models: fair bits-per-byte, the BLT vs BPE comparison, threshold sweeps,
robustness probes and figures.
"""
