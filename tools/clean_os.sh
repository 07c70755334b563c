#!/usr/bin/env bash
# nerpipe on a clean Debian, as a new user gets it: a minbase root from debootstrap with only python3,
# python3-venv, make and git; a fresh clone of this repository's HEAD; no pip configuration. In it:
# `make setup`, the small CPU profile of `make repro` (the README's CPU profile) and, in a second clone, `make test`.
# Run as root on a Debian-like host:
#
#   tools/clean_os.sh RELEASE WORKDIR TORCH_WHEELS DATA MODEL [TORCH] | tee transcript.txt
#
# RELEASE   bookworm (Python 3.11) or trixie (Python 3.13); the root is WORKDIR/RELEASE (built if absent)
# TORCH_WHEELS  a directory holding PyTorch's CPU wheel for that Python, standing in for PyTorch's CPU
#           index: the one variable pointed at this machine (TORCH_INDEX=/wheels inside the root)
# DATA      the three CoNLL-2003 files; MODEL a save_pretrained encoder (the root has no model hub)
# TORCH     cpu (default) or cuda (requirements-torch.lock from the package index; it runs on the CPU too)
#
# The root sees the host's DNS and CA bundle only (a TLS proxy stands between this machine and the
# package index: PIP_CERT and NODE_EXTRA_CA_CERTS point at the copy). Every step prints its command, its
# seconds and, for the tests, pytest's summary line.
set -euo pipefail
[ $# -ge 5 ] || { sed -n '6,12p' "$0" >&2; exit 2; }
release=$1 root=$2/$1 wheels=$3 data=$4 model=$5 torch=${6:-cpu}
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse HEAD)

step() {  # step NAME COMMAND...: run, then print its seconds and exit status
    local start=$SECONDS status=0
    echo "\$ $*"
    "$@" || status=$?
    echo "[$((SECONDS - start)) s, exit $status]"
    return $status
}

if [ ! -x "$root/usr/bin/python3" ]; then
    step debootstrap --variant=minbase --include=python3,python3-venv,make,git "$release" "$root" >/dev/null
fi
# The root a mount point of its own, as / is on a booted system: the team server's services get a mount
# namespace (tools/team_server.py), which cannot make a chroot's plain directory private.
mountpoint -q "$root" || mount --rbind "$root" "$root"
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
mkdir -p "$root/dev/shm" && { mountpoint -q "$root/dev/shm" || mount -t tmpfs shm "$root/dev/shm"; }
trap 'umount "$root/dev/shm" "$root/proc" 2>/dev/null; umount -R "$root" 2>/dev/null || true' EXIT
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The machine's name resolves inside, as Debian's installer makes it (127.0.1.1): debootstrap's /etc/hosts lacks
# it, and torch.distributed's rendezvous (tests/test_distributed.py) looks it up, waiting on DNS until it times out.
grep -qw "$(hostname)" "$root/etc/hosts" || printf '127.0.1.1\t%s\n' "$(hostname)" >> "$root/etc/hosts"
cp "$(python3 -c 'import pip._vendor.certifi as c; print(c.where())')" "$root/etc/host-ca.pem"
# No service starts inside the root (apt installs PostgreSQL there; the tests start their own server).
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d" && chmod +x "$root/usr/sbin/policy-rc.d"
rm -rf "$root/wheels" "$root/data" "$root/model" "$root/root/nerpipe" "$root/root/nerpipe-test"
mkdir -p "$root/wheels" "$root/data" && cp "$wheels"/*.whl "$root/wheels/"
cp -r "$data" "$root/data/conll2003" && cp -r "$model" "$root/model"
git clone -q --no-local "$repo" "$root/root/nerpipe" && git -C "$root/root/nerpipe" checkout -q "$commit"

inside() {  # a login with nothing of the host's environment: no PIP_*, no pip.conf, no venv on PATH
    chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb \
        PIP_CERT=/etc/host-ca.pem NODE_EXTRA_CA_CERTS=/etc/host-ca.pem TORCH_INDEX=/wheels \
        bash -c "set -o pipefail; cd /root/nerpipe && $1"
}
echo "# Debian $release ($(inside 'python3 --version')), nerpipe $commit, TORCH=$torch, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
inside 'n=$(ls -d /etc/pip.conf /etc/xdg/pip ~/.config/pip ~/.pip 2>/dev/null | wc -l); echo "pip configuration files: $n"'
step inside "make setup TORCH=$torch 2>&1 | grep -v '^WARNING' | tail -5"
step inside "make pr-profile DATA=/data/conll2003 MODEL=/model >/dev/null && make repro 2>&1 | tr '\\r' '\\n' | grep -E '^(device|time left)|Running stage'"
step inside "head -c 400 reports/eval/metrics.json; echo"
# The stages' `python` from a shell whose PATH has no venv (and Debian has no `python` at all).
step inside ".venv/bin/dvc repro --force check_params 2>&1 | tail -3"
# make test in a second fresh clone: the profile above changed params.yaml and left the pipeline's outputs,
# which the tests (params.yaml's shipped values, the docs' blocks) must not see. The whole output stays in the
# root (/root/make-test.log), to follow while it runs.
git clone -q --no-local "$repo" "$root/root/nerpipe-test" && git -C "$root/root/nerpipe-test" checkout -q "$commit"
step inside "cd /root/nerpipe-test && make test TORCH=$torch 2>&1 | tee /root/make-test.log | tail -15"
