/**
 * The guest's /init: a busybox sh script (pure text; docs/sandbox.md states its contract).
 *
 * It mounts the pseudo file systems, reports `userspace`, loads the kernel modules listed in
 * /etc/dadi/modules in order, configures eth0 for QEMU user networking, reports `ready`, runs
 * the one job the host put in fw_cfg (opt/io.dadi/argv, one argument per line; opt/io.dadi/env,
 * KEY=VALUE lines; opt/io.dadi/files, a newc cpio extracted at /), reports `exit` with the job's
 * status and the memory figures, and powers off. Every report is one console line starting
 * `DADI-INIT ` followed by a JSON object.
 */

/** The prefix of the /init's console reports. */
export const INIT_MARK = "DADI-INIT ";
/** Where /init reads the job (fw_cfg files by name). */
export const FW_CFG_ARGV = "opt/io.dadi/argv";
export const FW_CFG_ENV = "opt/io.dadi/env";
export const FW_CFG_FILES = "opt/io.dadi/files";
/**
 * The initramfs's last entry (paths sort byte-wise; "~" after every letter). The kernel stops
 * unpacking at the first error — a rootfs too small for the archive when the VM has too little
 * memory — so /init checks this file to tell a complete unpack from a truncated one.
 */
export const UNPACK_SENTINEL = "~dadi-initramfs-complete";
/** The guest's address, gateway (the host's loopback under QEMU user networking) and prefix. */
export const GUEST_IP = "10.0.2.15";
export const GUEST_GATEWAY = "10.0.2.2";

export const INIT_SCRIPT = `#!/bin/busybox sh
# dadi sandbox /init (src/sandbox/init-script.ts; contract in docs/sandbox.md)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
up() { read -r u _ < /proc/uptime; echo "$u"; }
report() { echo "${INIT_MARK}{\\"event\\":\\"$1\\",\\"uptime\\":$(up)$2}"; }
die() {
	report error ",\\"stage\\":\\"$1\\""
	sync
	poweroff -f
	exit 1
}
mount -t proc proc /proc || { echo "${INIT_MARK}{\\"event\\":\\"error\\",\\"stage\\":\\"proc\\"}"; poweroff -f; }
report userspace
[ -e /${UNPACK_SENTINEL} ] || die initramfs
mount -t sysfs sysfs /sys || die sysfs
mount -t devtmpfs devtmpfs /dev || die devtmpfs
mount -t tmpfs -o mode=1777 tmpfs /tmp || die tmp
mount -t tmpfs -o mode=0755 tmpfs /run || die run
while read -r mod args; do
	[ -n "$mod" ] || continue
	insmod "/lib/modules/$mod.ko" $args ||
		report module-failed ",\\"module\\":\\"$mod\\""
done < /etc/dadi/modules
ip link set lo up || die lo
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 200 ]; do
	sleep 0.05
	i=$((i + 1))
done
ip addr add ${GUEST_IP}/24 dev eth0 || die eth0
ip link set eth0 up || die eth0
ip route add default via ${GUEST_GATEWAY} || die route
report ready
FW=/sys/firmware/qemu_fw_cfg/by_name
if [ -r $FW/${FW_CFG_ENV}/raw ]; then
	while IFS= read -r kv || [ -n "$kv" ]; do
		case "$kv" in
		[A-Za-z_]*=*) export "$kv" ;;
		esac
	done < $FW/${FW_CFG_ENV}/raw
fi
if [ -r $FW/${FW_CFG_FILES}/raw ]; then
	(cd / && cpio -idmu < $FW/${FW_CFG_FILES}/raw 2>/dev/null) || die files
fi
set --
if [ -r $FW/${FW_CFG_ARGV}/raw ]; then
	while IFS= read -r a || [ -n "$a" ]; do
		set -- "$@" "$a"
	done < $FW/${FW_CFG_ARGV}/raw
fi
code=0
if [ $# -gt 0 ]; then
	cd /
	"$@" < /dev/null
	code=$?
fi
mt=0
ma=0
while read -r k v _; do
	case "$k" in
	MemTotal:) mt=$v ;;
	MemAvailable:) ma=$v ;;
	esac
done < /proc/meminfo
# the job may not have ended its last line: the exit report starts on a line of its own
echo
echo "${INIT_MARK}{\\"event\\":\\"exit\\",\\"code\\":$code,\\"uptime\\":$(up),\\"memTotalKiB\\":$mt,\\"memAvailableKiB\\":$ma}"
sync
poweroff -f
`;
