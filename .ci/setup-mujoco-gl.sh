#!/usr/bin/env bash
# Headless MuJoCo rendering for the pixel environments (docs/pixels.md): Mesa's EGL with the llvmpipe software
# renderer, used through MUJOCO_GL=egl (the default sb3_ddpg_paper.envs sets on Linux). Debian/Ubuntu package names.
set -euo pipefail

PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 libgl1)

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "Installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "EGL/Mesa packages already installed: ${PACKAGES[*]}"
fi
