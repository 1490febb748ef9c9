"""The single-file examples run as documented (the small one; the SmolLM2 one needs the prepared model)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_compile_tiny_llama_example():
    r = subprocess.run([sys.executable, str(REPO / "examples" / "compile_tiny_llama.py"), "--budget", "4"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "outputs identical" in r.stdout and "top-1 agreement" in r.stdout
