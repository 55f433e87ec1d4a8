# Stand-in for the pip bootstrap script ansible-test downloads from
# ci-files.testing.ansible.com, a host the build machines cannot reach:
# pip from the interpreter's own ensurepip, then what ansible-test asked for
# (`pip==VERSION`, setuptools, wheel) from PyPI. ansible-test runs it as
# `python get_pip.py --disable-pip-version-check pip==V [--no-setuptools]
# [--no-wheel]` in a fresh virtual environment.
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
