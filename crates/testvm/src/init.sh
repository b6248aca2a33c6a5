#!/bin/sh
# /init of the Ballast test guest (built by crates/testvm): mounts the usual file systems,
# loads the modules listed in /etc/testvm/modules, configures QEMU user networking, runs
# /test.sh and reports its exit status on the console as "testvm-exit NONCE STATUS",
# then powers off. NONCE comes from the kernel command line (testvm.nonce=).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
export HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
nonce=none
for w in $(cat /proc/cmdline); do
    case "$w" in
        testvm.nonce=*) nonce=${w#testvm.nonce=} ;;
    esac
done
kver=$(uname -r)
while read -r m; do
    insmod "/lib/modules/$kver/$m" 2>/tmp/insmod.err ||
        echo "testvm: insmod $m: $(cat /tmp/insmod.err)"
done </etc/testvm/modules
mount -t configfs configfs /sys/kernel/config 2>/dev/null ||
    echo "testvm: cannot mount configfs"
hostname testvm
ip link set lo up
if ip link set eth0 up 2>/dev/null; then
    ip addr add 10.0.2.15/24 dev eth0 &&
        ip route add default via 10.0.2.2 ||
        echo "testvm: network setup failed"
fi
# Initiator names for nvme-cli and open-iscsi (their packages' install scripts make these).
mkdir -p /etc/nvme /etc/iscsi
hostid=$(cat /proc/sys/kernel/random/uuid)
echo "$hostid" >/etc/nvme/hostid
echo "nqn.2014-08.org.nvmexpress:uuid:$hostid" >/etc/nvme/hostnqn
echo "InitiatorName=iqn.2004-10.com.debian:testvm-$nonce" >/etc/iscsi/initiatorname.iscsi
echo "testvm-ready $nonce"
cd /root
/bin/sh /test.sh </dev/null
rc=$?
sync
echo "testvm-exit $nonce $rc"
poweroff -f
