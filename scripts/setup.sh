#!/usr/bin/env bash
# Sets up everything scalekd needs on a fresh machine: Fashion-MNIST from Debian's packages
# (the quickstart's data; elsewhere torchvision downloads the same files on first use) and a
# virtual environment with the pinned Python stack. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; }; then
    echo "setup: could not install dataset-fashion-mnist; the quickstart will download Fashion-MNIST" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q -c constraints.txt -e ".[dev]"
echo "setup: done; activate with 'source $VENV/bin/activate'"
