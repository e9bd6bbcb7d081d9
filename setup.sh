#!/usr/bin/env bash
# Sets up .venv on a fresh machine (idempotent: a second run with unchanged
# requirements returns at once). Usage: ./setup.sh [--dev]
#   --dev  also installs the test tools, and the trackers extra (W&B, MLflow) the tests read back.
set -euo pipefail
cd "$(dirname "$0")"
plain="deepspeed,tune,extract,report,search"
extras="$plain"
[[ "${1:-}" == "--dev" ]] && extras="$plain,trackers,dev"  # trackers: the tests read W&B and MLflow back

# The tests run a real sshd on loopback (launch ssh): Debian's openssh-server and rsync; drive the search page in a
# real headless browser: Debian's chromium; and give the loopback Kaggle's kernels without internet a network namespace
# of their own (ip, from iproute2).
if [[ "${1:-}" == "--dev" ]] && ! { command -v rsync && command -v chromium && command -v ip && [[ -x /usr/sbin/sshd ]]; } > /dev/null; then
  sudo=(); [[ $(id -u) -ne 0 ]] && sudo=(sudo)
  "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    openssh-server rsync chromium iproute2 > /dev/null
fi

stamp=".venv/.setup-$(cat pyproject.toml constraints.txt setup.sh | sha256sum | cut -c1-16)-${plain//,/-}"
[[ "${1:-}" == "--dev" ]] && stamp="$stamp-dev"
# A --dev setup holds everything the plain one installs: `./setup.sh` after `./setup.sh --dev` returns at once too.
if [[ -f "$stamp" || ( "${1:-}" != "--dev" && -f "$stamp-dev" ) ]]; then exit 0; fi

python3 -m venv .venv
pip=(.venv/bin/python -m pip install -qq --disable-pip-version-check -c constraints.txt)
# torch first, pinned, so DeepSpeed (a source build) compiles against it without build isolation.
"${pip[@]}" --upgrade pip "setuptools>=68,<82" wheel  # torch 2.11 requires setuptools<82
"${pip[@]}" torch torchvision torchaudio
"${pip[@]}" --no-build-isolation -e ".[${extras}]"
# The loopback Kaggle's package index: what its kernels install, as pinned here (from pip's cache of what was just installed).
[[ "${1:-}" == "--dev" ]] && .venv/bin/python tests/kaggle_image.py
# DeepSpeed's shared-memory op, which a DeepSpeed run on a CPU (the suite's: bench/gpu_check.sh --smoke) compiles on first
# use, 50 s of CPU: compiled once here into torch's extension cache instead (on a GPU machine there is none to build).
if [[ "${1:-}" == "--dev" ]] && ! .venv/bin/python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" > /dev/null 2>&1; then
  echo "setup: DeepSpeed's CPU op did not build now; a DeepSpeed run on a CPU builds it on first use"
fi
rm -f .venv/.setup-*
touch "$stamp"
echo "setup: .venv ready (extras: ${extras})"
