from blt_jax.tools import cli
from helpers import run_cli


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0 and "patch" in r.stdout


def test_patch_space_mode(capsys):
    assert cli.main(["patch", "--mode", "space", "--text", "Game of Thrones, a"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "|<BOS>|Game |of |Thrones,| a|"


def test_patch_reads_raw_bytes(tmp_path, capsys):
    f = tmp_path / "bad.bin"
    f.write_bytes(b"ab\xffcd")
    assert cli.main(["patch", "--mode", "byte", "--text-file", str(f)]) == 0
    assert "6 ids" in capsys.readouterr().out


def test_user_errors_are_one_line():
    r = run_cli("patch", "--mode", "nope", "--text", "x")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown patching mode" in r.stderr
    r = run_cli("patch", "--mode", "space", "--text-file", "/no/such/file")
    assert r.returncode == 2 and "No such file" in r.stderr and "Traceback" not in r.stderr
