#!/usr/bin/env bash
# One entry point for a fresh machine: set everything up (idempotent), then run a job.
#   bash scripts/run.sh main   # the end-to-end default (offline, CPU)
#   bash scripts/run.sh test   # the test suite
# Set-up: Debian GL packages for offscreen MuJoCo rendering (when missing), a Python 3.12 venv in
# .venv with the pinned packages of requirements.lock, and our four distributions in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"

# Debian packages: offscreen GL for MuJoCo (EGL/Mesa) and FFmpeg 5 libraries for torchcodec, which
# LeRobot uses to decode dataset videos (without them it prints tracebacks and falls back to pyav).
# Xvfb and Mesa's Vulkan driver (lavapipe) let the real Rerun viewer run headless: screenshots of
# recordings (python -m vst_vla.viz.screenshot) and tests/test_rerun_viewer.py.
ensure_system_packages() {
  local missing=()
  ldconfig -p | grep -q 'libEGL_mesa.so' || missing+=(libegl1 libegl-mesa0 libgl1-mesa-dri)
  ldconfig -p | grep -q 'libOpenGL.so.0' || missing+=(libopengl0)
  ldconfig -p | grep -q 'libavutil.so.57' || missing+=(libavutil57 libavcodec59 libavformat59 libavdevice59 \
    libavfilter8 libswscale6 libswresample4)
  command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
  ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
  ldconfig -p | grep -q 'libvulkan.so.1' || missing+=(libvulkan1)
  [ ${#missing[@]} -eq 0 ] && return
  echo "[setup] installing Debian packages: ${missing[*]}"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

find_python312() {
  if command -v python3.12 >/dev/null 2>&1 && python3.12 --version >/dev/null 2>&1; then command -v python3.12; return; fi
  local cand
  for cand in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
    [ -x "$cand" ] && { echo "$cand"; return; }
  done
  echo "python3.12 not found: install Python 3.12 (lerobot 0.6 needs >=3.12)" >&2; exit 1
}

ensure_venv() {
  local stamp="$VENV/.installed" want
  want=$(cat requirements.lock pyproject.toml sim/pyproject.toml policies/pyproject.toml robot/pyproject.toml | sha256sum | cut -c1-16)
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$(find_python312)" -m venv "$VENV"
  fi
  echo "[setup] installing pinned packages (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -m pip install -q -r requirements.lock 2>&1 | grep -v "is ignored" || true
  # setuptools tells every editable install of a flat layout that folders named like the package may
  # shadow it ("Editable installation. !! Please be careful ... !!", ten lines per distribution):
  # informational, so filtered by its message; real warnings and errors still print.
  PYTHONWARNINGS="ignore:Editable installation" \
    "$VENV/bin/python" -m pip install -q --no-deps -e . -e sim -e policies -e robot 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -c "import vst_vla, lerobot_env_vst_vla, lerobot_policy_vst_vla, lerobot_robot_vst_sim, lerobot, mujoco" 
  echo "$want" > "$stamp"
}

ensure_system_packages
ensure_venv
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PATH="$VENV/bin:$PATH"

case "${1:-main}" in
  main) shift || true; exec vst-vla pipeline "$@" ;;
  test) shift || true; exec python -m pytest -q tests "$@" ;;
  *) echo "usage: bash scripts/run.sh [main|test] [args...]" >&2; exit 2 ;;
esac
