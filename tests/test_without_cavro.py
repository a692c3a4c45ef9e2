"""Where cavro has no wheel (arm64, Python 3.13) it is not installed and fastavro reads every
record. This runs the Avro decode tests, and the forked pipeline processes that decode, once more in a
child pytest with `import cavro` failing (tests/no_cavro first on PYTHONPATH, inherited by the
pipeline processes): the fallback is exercised on every CI run without a second full suite."""

from __future__ import annotations

import os
import subprocess
import sys

from support import ROOT

HIDDEN = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests" / "no_cavro"),
                                                                      os.environ.get("PYTHONPATH")]))}


def test_cavro_is_really_hidden_in_the_child() -> None:
    probe = subprocess.run([sys.executable, "-c", "import connector.decode.decoder as d; print(d.HAVE_CAVRO)"],
                           env=HIDDEN, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "False", probe.stderr


def test_decode_and_worker_tests_pass_without_cavro() -> None:
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_decode_fast.py",
                        "tests/test_schemas.py", "tests/test_decode_guard.py",
                        "tests/test_decode_fuzz.py", "tests/test_process_guard.py", "tests/test_supervisor.py"],
                       env=HIDDEN, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout.splitlines()[-1] and "skipped" not in r.stdout.splitlines()[-1]
