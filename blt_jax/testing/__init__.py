"""Test oracles: independent slow implementations the fast paths are checked against."""
