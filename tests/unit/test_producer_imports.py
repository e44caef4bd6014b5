import subprocess
import sys


def test_importing_the_producer_and_cli_leaves_torch_out():
    code = ("import sys, producer, producer.client, producer.cli; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'worker') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
