#!/usr/bin/env bash
# Make a Debian 12 machine ready to develop and test hotcopy: system packages, a
# stopped Debian mariadb service (we start our own servers), and .venv with the
# package installed editable. Idempotent and silent when there is nothing to do, so it
# can run before every test session.
set -euo pipefail

die() { echo "bootstrap: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages); e.g. sudo $0"
[[ -r /etc/os-release ]] || die "cannot read /etc/os-release; this needs Debian 12 or a derivative"
# shellcheck source=/dev/null
. /etc/os-release
[[ "${ID:-}" == debian || " ${ID_LIKE:-} " == *" debian "* ]] \
    || die "this needs Debian 12 or a derivative (found ${PRETTY_NAME:-unknown})"
if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    die "dpkg-query/apt-get not found: not a Debian-like system"
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

packages=(mariadb-server mariadb-client mariadb-backup btrfs-progs zfs-fuse rsync socat pv
          openssh-server openssh-client sysbench iproute2 zstd util-linux procps psmisc
          python3 python3-venv kmod etcd-server etcd-client shellcheck
          # servers.NAME.sudo: its test logs in as a non-root user that has sudo.
          sudo
          # The LVM tests (its core runs in scripts/test): a qemu guest on Debian's own
          # kernel with this root over 9p, because this kernel may lack device-mapper.
          qemu-system-x86 linux-image-amd64 lvm2 xfsprogs)

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
    echo "bootstrap: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The LVM guest boots the host's kernel package with the host's root over 9p: its
# initramfs needs the 9p modules (rebuilt once per kernel, then nothing to do).
for module in 9p 9pnet 9pnet_virtio netfs; do
    grep -qx "$module" /etc/initramfs-tools/modules \
        || echo "$module" >>/etc/initramfs-tools/modules
done
for kernel in /boot/vmlinuz-*; do
    [[ -e $kernel ]] || continue
    version=${kernel#/boot/vmlinuz-}
    # Not grep -q: quitting early would SIGPIPE lsinitramfs, a failure under pipefail.
    if ! lsinitramfs "/boot/initrd.img-$version" 2>/dev/null | grep '/9pnet_virtio\.ko' >/dev/null; then
        echo "bootstrap: adding 9p to the initramfs of $version for the LVM tests"
        update-initramfs -u -k "$version" >/dev/null
    fi
done

# Kernel parts the tests use: btrfs (sandbox datadirs), loop (their images), fuse
# (zfs-fuse). A stock Debian kernel has them as modules that nothing loads; load those
# that are not there yet. Built in (as on some VMs) means there is nothing to do, and a
# kernel without them only gets a warning: the tests then skip, or fail under CI=true.
kernel_part_present() {
    case $1 in
        btrfs) [[ -d /sys/module/btrfs ]] || grep -qw btrfs /proc/filesystems ;;
        loop) [[ -e /dev/loop-control ]] ;;
        fuse) [[ -e /dev/fuse ]] ;;
    esac
}
for module in btrfs loop fuse; do
    kernel_part_present "$module" && continue
    if ! command -v modprobe >/dev/null || ! modprobe "$module" 2>/dev/null; then
        echo "bootstrap: warning: cannot load the $module kernel module; tests that need it" \
             "are skipped (CI=true: they fail)" >&2
    fi
done

# Debian starts its own mariadb on install; it would hold port 3306 and confuse tests.
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    if systemctl is-enabled --quiet mariadb 2>/dev/null || systemctl is-active --quiet mariadb 2>/dev/null; then
        systemctl disable --now mariadb >/dev/null 2>&1 || true
    fi
elif [[ -s /run/mysqld/mysqld.pid ]] && kill -0 "$(cat /run/mysqld/mysqld.pid)" 2>/dev/null; then
    # No systemd (containers): the package's init script may still have started it.
    if command -v service >/dev/null; then
        service mariadb stop >/dev/null 2>&1 || kill "$(cat /run/mysqld/mysqld.pid)" 2>/dev/null || true
    else
        kill "$(cat /run/mysqld/mysqld.pid)" 2>/dev/null || true
    fi
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null || die "$python not found; install python3 (>= 3.11)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$python is $("$python" -V 2>&1); hotcopy needs Python >= 3.11"

venv="$repo/.venv"
if [[ ! -x $venv/bin/python ]]; then
    "$python" -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv?)"
fi

stamp="$venv/.bootstrap-stamp"
want=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
if [[ $want != "$have" ]]; then
    echo "bootstrap: installing hotcopy into $venv"
    "$venv/bin/python" -m pip install -q -e "${repo}[dev]"
    echo "$want" >"$stamp"
fi
