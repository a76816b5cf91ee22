#!/bin/sh
# PID 1 of the LVM test guest (tests/lvm/guest.py boots it; see shared/notes/lvm-guest.md).
# The root is the host's own, read-only over 9p, so everything writable is a tmpfs or
# the scratch disk. The kernel hands unknown key=value boot parameters to init as
# environment variables: hotcopy_repo (the checkout), hotcopy_work (host dir with inputs),
# hotcopy_budget (seconds the scenario may take), hotcopy_parts (all, or core). Results leave as a tar archive written
# raw onto the second disk; the host reads it back after the guest powered off.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o mode=755 tmpfs /run
# The host's whole root, also what the tmpfs mounts below hide (a bind of the 9p root
# alone carries none of the mounts made on top of it).
mkdir -p /run/hostroot && mount --bind / /run/hostroot
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/shm /run/lock /run/results && mount -t tmpfs tmpfs /dev/shm

say() { echo "guest-init: $*"; }
poweroff_now() {
    sync
    echo o > /proc/sysrq-trigger
    sleep 30
    # Still here: reboot instead (qemu runs with -no-reboot, so it exits either way),
    # rather than let PID 1 return and panic the kernel.
    echo b > /proc/sysrq-trigger
    sleep 30
}
trap poweroff_now EXIT

say "up after $(cut -d' ' -f1 /proc/uptime)s"
ip link set lo up
if ! modprobe dm_mod || ! modprobe dm_snapshot; then say "modprobe failed"; fi
modprobe xfs 2>/dev/null || true
# No udev and a read-only /etc: LVM makes its own device nodes and keeps no backups.
mkdir -p /run/lvm-guest
cat > /run/lvm-guest/lvm.conf <<'CONF'
backup {
    backup = 0
    archive = 0
}
devices {
    obtain_device_list_from_udev = 0
}
activation {
    udev_sync = 0
    udev_rules = 0
}
CONF
export LVM_SYSTEM_DIR=/run/lvm-guest
export HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

scratch=$(cat /sys/block/vda/serial 2>/dev/null)
results=$(cat /sys/block/vdb/serial 2>/dev/null)
if [ "$scratch" != hc-scratch ] || [ "$results" != hc-results ]; then
    say "unexpected disks (vda=$scratch vdb=$results): refusing to write"
    exit 1
fi

repo=${hotcopy_repo:?} work=${hotcopy_work:?} budget=${hotcopy_budget:-600}
parts=${hotcopy_parts:-all}
# A checkout (or work dir) may live anywhere, e.g. a CI clone under /tmp: one that a
# tmpfs above now hides is bound back at its own path, where its venv expects it.
for path in "$repo" "$work"; do
    case $path in
        /tmp/*|/run/*|/dev/shm/*)
            if ! mkdir -p "$path" || ! mount --bind "/run/hostroot$path" "$path"; then
                say "cannot make $path visible"
            fi ;;
    esac
done
[ -x "$repo/.venv/bin/python" ] || say "no $repo/.venv/bin/python in the guest"
say "running the scenario (budget ${budget}s)"
timeout -k 10 "$budget" "$repo/.venv/bin/python" "$repo/tests/lvm/guest_scenario.py" \
    --work "$work" --results /run/results --budget "$((budget - 20))" --parts "$parts"
echo "$?" > /run/results/exit_code
say "scenario exited with $(cat /run/results/exit_code) after $(cut -d' ' -f1 /proc/uptime)s"
dmesg > /run/results/dmesg.txt 2>/dev/null
tar -cf /dev/vdb -C /run/results . && blockdev --flushbufs /dev/vdb
say "results written"
poweroff_now
