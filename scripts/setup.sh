#!/usr/bin/env bash
# Sets up everything scalekd needs on a fresh machine: Fashion-MNIST from Debian's packages
# (the quickstart's data; elsewhere torchvision downloads the same files on first use) and a
# virtual environment with the pinned Python stack. Safe to run again.
#   SCALEKD_EXTRAS=ffcv bash scripts/setup.sh   also the FFCV loaders: Debian's OpenCV,
#                                               libturbojpeg and pkg-config, then the ffcv extra
#   SCALEKD_EXTRAS=ffcv,mix bash scripts/setup.sh   also diffusers for `scalekd mix`
#   SCALEKD_EXTRAS=onnx bash scripts/setup.sh   also onnx, onnxscript and onnxruntime for
#                                               `scalekd export --onnx`
#   SCALEKD_EXTRAS=track bash scripts/setup.sh  also wandb and mlflow-skinny for
#                                               run.log_with=wandb,mlflow
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${SCALEKD_EXTRAS:-}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
APT_UPDATED=""
apt_install() {  # apt_install PACKAGE...: update the package lists once per run
  [ -n "$APT_UPDATED" ] || { $SUDO apt-get update -qq && APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@"
}

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null; then
  if ! apt_install dataset-fashion-mnist; then
    echo "setup: could not install dataset-fashion-mnist; the quickstart will download Fashion-MNIST" >&2
  fi
fi

# The default path compiles C++ on first use: torch.compile's CPU backend (teacher.compile) and
# DeepSpeed's CPU ops (ZeRO on CPU) need a C/C++ compiler and Python's headers; `python3 -m
# venv` needs Debian's python3-venv. A minimal machine lacks them.
missing=""
{ command -v gcc && command -v g++; } >/dev/null || missing="gcc g++"
"$PYTHON" -c 'import os, sysconfig; assert os.path.isfile(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null || missing="$missing python3-dev"
[ -x "$VENV/bin/python" ] || "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing="$missing python3-venv"

pip_extras=dev
case ",$EXTRAS," in
  *,ffcv,*)
    # ffcv builds from source (the compiler and headers above) against the system's OpenCV
    # and libturbojpeg, and links them
    pkg-config --exists opencv4 libturbojpeg 2>/dev/null || missing="$missing libturbojpeg0-dev libopencv-dev pkg-config"
    pip_extras=$pip_extras,ffcv ;;
esac
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null || { echo "setup: scalekd needs$missing (or your OS's equivalents)" >&2; exit 1; }
  # shellcheck disable=SC2086
  apt_install $missing
fi
case ",$EXTRAS," in
  *,mix,*) pip_extras=$pip_extras,mix ;;&  # diffusers (pure Python) for `scalekd mix`
  *,onnx,*) pip_extras=$pip_extras,onnx ;;&  # onnx, onnxscript, onnxruntime: wheels
  *,track,*) pip_extras=$pip_extras,track ;;  # wandb, mlflow-skinny: wheels
esac

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q -c constraints.txt -e ".[$pip_extras]"
echo "setup: done; activate with 'source $VENV/bin/activate'"
