#!/usr/bin/env bash
# Boots a real systemd as PID 1 of the namespaces `unshare` just made (microservices/devtools/systemd_vps.py runs it).
#
# Usage: systemd_vps_boot.sh SCRATCH_DIR
#
# Everything systemd writes lands in an overlay over the host's / whose upper layer is a tmpfs: units, /opt, users and
# env files vanish with the namespace, and nothing reaches the real root. /tmp and /run are tmpfs of their own, so
# systemd-tmpfiles (which empties /tmp at boot) never sees the host's. Units that would reach past the namespaces
# (kernel tunables, modules, device nodes, the clock, udev) and the host's own services (whose ports are the host's)
# are masked: only what the tests install runs.
set -euo pipefail

scratch="$1"
mount -t tmpfs -o mode=0755 p31-vps "$scratch"
mkdir -p "$scratch/upper" "$scratch/work" "$scratch/root"
mount -t overlay p31-vps -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root"
root="$scratch/root"

# The host administrator's enabled services are not this VPS's.
find "$root/etc/systemd/system" -mindepth 2 -maxdepth 2 -path '*.wants/*' -delete
masked=(
  systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket systemd-udev-trigger.service
  systemd-udev-settle.service kmod-static-nodes.service systemd-tmpfiles-setup-dev.service systemd-sysctl.service
  systemd-modules-load.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount
  proc-sys-fs-binfmt_misc.mount systemd-random-seed.service systemd-timesyncd.service systemd-firstboot.service
  systemd-repart.service getty.target console-getty.service systemd-logind.service e2scrub_reap.service
  systemd-pcrphase.service systemd-pcrphase-sysinit.service cron.service apt-daily.timer apt-daily-upgrade.timer
  redis.service redis-server.service postgresql.service prometheus.service mariadb.service rabbitmq-server.service
  nats-server.service mosquitto.service epmd.service epmd.socket ssh.service
)
for unit in "${masked[@]}"; do
  ln -sfn /dev/null "$root/etc/systemd/system/$unit"
done
# No resource accounting: systemd then creates cgroups only in its own hierarchy (the harness gave it a subtree of
# its own), never in the host's controllers.
mkdir -p "$root/etc/systemd/system.conf.d"
cat >"$root/etc/systemd/system.conf.d/p31-vps.conf" <<'EOF'
[Manager]
DefaultCPUAccounting=no
DefaultMemoryAccounting=no
DefaultTasksAccounting=no
DefaultIOAccounting=no
DefaultBlockIOAccounting=no
DefaultIPAccounting=no
EOF

mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mkdir -p "$root/.p31-oldroot"
cd "$root"
pivot_root . .p31-oldroot
cd /
umount -l /.p31-oldroot
exec env -i container=p31-vps /lib/systemd/systemd --system --unit=multi-user.target
