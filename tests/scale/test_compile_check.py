"""AOT compile check: topology names, the memory report on fake CPU devices (CI has no libtpu;
the real TPU topologies are exercised by hand, README table), and the CLI's errors."""

import math
import pathlib

import jax
import pytest

from blt_jax.scale import compile_check
from blt_jax import config
from helpers import run_cli

ROOT = pathlib.Path(__file__).parents[2]


@pytest.mark.parametrize("spec,want", [("v5p:4x4x4", "v5p:4x4x4"), ("v5p-128", "v5p:4x4x4"),
                                       ("v5litepod-16", "v5e:4x4"), ("v6e-64", "v6e:8x8"),
                                       ("v4-8", "v4:2x2x1"), ("v5p-32", "v5p:2x2x4")])
def test_topology_names(spec, want):
    assert compile_check.topology_name(spec) == want


@pytest.mark.parametrize("bad", ["v5p-96", "tpu", "v7x-8"])
def test_bad_topology_names(bad):
    with pytest.raises(ValueError, match="topology"):
        compile_check.topology_name(bad)


def small_blt():
    cfg = config.tiny_experiment("blt")
    cfg.data.update(batch_size=8, seq_len=64)
    return cfg


def test_report_on_fake_devices_fits_or_not():
    cfg, ent = small_blt(), config.model_preset("entropy_tiny")
    r = compile_check.check(cfg, "cpu:8", ent, devices=jax.devices(), hbm_gib=16.0)
    assert r["fits"] and r["devices"] == 8 and r["mesh"]["fsdp"] == 8
    assert 0 < r["total_gib"] < 16 and math.isclose(r["headroom_gib"], 16 - r["total_gib"])
    assert r["params"] > 0 and "FITS" in compile_check.format_report(r)
    tight = compile_check.check(cfg, "cpu:8", ent, devices=jax.devices(),
                                hbm_gib=r["total_gib"] / 2)
    assert not tight["fits"] and "DOES NOT FIT" in compile_check.format_report(tight)


def test_auto_accumulation_picks_the_smallest_that_leaves_the_headroom():
    cfg, ent = small_blt(), config.model_preset("entropy_tiny")
    cfg.data.batch_size = 32  # micro-batches of 32, 16, 8 rows split over 8 devices
    one = compile_check.check(cfg, "cpu:8", ent, devices=jax.devices(), hbm_gib=16.0)
    four = compile_check.check(config.replaced(cfg, {"train.grad_accum": 4}), "cpu:8", ent,
                               devices=jax.devices(), hbm_gib=16.0)
    assert four["total_gib"] < one["total_gib"]  # accumulation shrinks the step's temporaries
    hbm = one["total_gib"] / 0.85 * 0.99  # one micro-batch misses the 15% headroom by 1%
    r = compile_check.smallest_accumulation(cfg, "cpu:8", ent, devices=jax.devices(),
                                            hbm_gib=hbm)
    assert r["tried"][0][0] == 1 and r["grad_accum"] in (2, 4) and r["fits"]
    assert r["total_gib"] <= 0.85 * hbm and "micro-batches" in compile_check.format_report(r)
    none = compile_check.smallest_accumulation(cfg, "cpu:8", ent, devices=jax.devices(),
                                               hbm_gib=four["total_gib"] / 2)
    assert not none["fits"] and [a for a, _ in none["tried"]] == [1, 2, 4]


def test_cli_without_libtpu_or_bad_topology_is_one_line():
    r = run_cli("compile-check", "--config", str(ROOT / "experiments" / "blt_1b.py"), "--topology", "v5p-96")
    assert r.returncode == 2 and "topology" in r.stderr and "Traceback" not in r.stderr


def test_a_mesh_the_slice_cannot_host_is_one_line():
    cfg, ent = small_blt(), config.model_preset("entropy_tiny")
    cfg.mesh.shape = (1, 16, 1)  # 16 chips asked of an 8-chip slice
    from blt_jax.errors import UserError
    with pytest.raises(UserError, match=r"mesh: \[1, 16, 1\] needs 16 devices.*cpu:8"):
        compile_check.check(cfg, "cpu:8", ent, devices=jax.devices(), hbm_gib=16.0)
