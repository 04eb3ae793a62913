#!/usr/bin/env bash
# Real-Xen test: boots Debian 12's Xen 4.17 hypervisor under
# `qemu-system-x86_64 -accel tcg` (no KVM needed) with a Linux PV dom0 that
# runs xenstored, our daemon in place of xenconsoled, and `xl create` of a PV
# guest whose console is Linux's own hvc_xen. dom0 checks (dom0-init):
#   output      the guest's first line reaches our guest log
#   bulk        a stream many times the 2 KiB ring arrives byte-exact
#   input       a line written to the pty we publish in console/tty is echoed
#   xl-console  Xen's `xl console` shows the guest's output through our tty
#   hotplug     `xen-console ctl add` makes a console the guest probes as
#               /dev/hvc1; both directions work through its pty
#   unplug      `ctl del` removes it from the guest and from XenStore
#   sigkill-restart  the backend is SIGKILLed during a numbered stream and
#               started again: no line lost, duplicated or mangled, and the
#               re-published tty works (xenconsoled: measured, not required)
# Exit 0 on PASS; otherwise the failed step and the tail of the serial log.
#
# Run as root on Debian 12 (bookworm) with apt sources; it installs
# qemu-system-x86 and cpio if missing, fetches the Debian packages by name
# with `apt-get download` (nothing else is installed), builds the daemon as a
# static binary, and keeps everything heavy under $CACHE.
# Environment:
#   BACKEND=ours|xenconsoled|none  what serves consoles (none must FAIL)
#   XEN_CONSOLE_BIN=path           use this static binary instead of building
#   CACHE=dir                      default ~/.cache/xen-console-real-xen
#   TIMEOUT=secs                   whole boot (default 300); STEP_TIMEOUT (120)
#   BULK_LINES=n                   bulk stream length in 79-byte lines (1000)
#   SEQ_LINES=n                    numbered stream across the restart (10000)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xen-console-real-xen}"
BACKEND="${BACKEND:-ours}"
TIMEOUT="${TIMEOUT:-300}"
STEP_TIMEOUT="${STEP_TIMEOUT:-120}"
BULK_LINES="${BULK_LINES:-1000}"
SEQ_LINES="${SEQ_LINES:-10000}"
APT=(apt-get -q -o DPkg::Lock::Timeout=600 -o APT::Sandbox::User=root)

# Debian packages dom0 needs: the hypervisor, the toolstack (xl, xenstored,
# xenconsoled for BACKEND=xenconsoled), the libraries they link, busybox.
PKGS=(
  xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils
  libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 libxenmisc4.17
  libxenstore4 libxentoollog1 libxentoolcore1 libxendevicemodel1 libxenhypfs1
  libyajl2 busybox-static libc6 libgcc-s1 zlib1g libzstd1 liblzma5 libuuid1
)

T_START=$EPOCHREALTIME
STEP=""
elapsed() { local now=${EPOCHREALTIME/./} t0=${T_START/./}; local ms=$(((now - t0) / 1000)); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }
step() { STEP=$1; printf '==> [%ss] %s\n' "$(elapsed)" "$1" >&2; }
die() { printf 'real-xen: FAILED at step "%s": %s\n' "$STEP" "$*" >&2; STEP=""; exit 1; }
trap 'rc=$?; [ $rc = 0 ] || [ -z "$STEP" ] || printf "real-xen: FAILED at step \"%s\" (exit %s)\n" "$STEP" "$rc" >&2' EXIT

step "host tools"
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v cpio >/dev/null || need+=(cpio)
if ((${#need[@]})); then
  [ "$(id -u)" = 0 ] || die "missing ${need[*]}; install them (apt-get install ${need[*]})"
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends "${need[@]}" >/dev/null ||
    { "${APT[@]}" update >/dev/null && DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends "${need[@]}" >/dev/null; } ||
    die "cannot install ${need[*]}"
fi

step "fetch Debian packages"
mkdir -p "$CACHE"
kpkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
KPKG=$(kpkg)
[ -n "$KPKG" ] || { "${APT[@]}" update >/dev/null; KPKG=$(kpkg); }
[ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 (no Debian 12 apt sources?)"
WANT="$KPKG ${PKGS[*]}"
TREE="$CACHE/pkgs"
if [ "$(cat "$TREE.list" 2>/dev/null)" != "$WANT" ]; then
  rm -rf "$CACHE/debs" "$TREE" "$TREE.list"; mkdir -p "$CACHE/debs" "$TREE"
  ( cd "$CACHE/debs" && { "${APT[@]}" download $WANT >/dev/null 2>&1 ||
      { "${APT[@]}" update >/dev/null && "${APT[@]}" download $WANT >/dev/null; }; } ) ||
    die "apt-get download failed"
  for d in "$CACHE"/debs/*.deb; do dpkg -x "$d" "$TREE"; done
  echo "$WANT" > "$TREE.list"
else
  echo "    cached in $TREE" >&2
fi
KVER=$(ls "$TREE/lib/modules" | head -n1)
[ -n "$KVER" ] || die "no kernel modules in $TREE"

step "build the daemon (static)"
if [ -n "${XEN_CONSOLE_BIN:-}" ]; then
  BIN=$XEN_CONSOLE_BIN
else
  ( cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build -q --release --target x86_64-unknown-linux-gnu -p xen-console ) || die "cargo build failed"
  BIN="$REPO/target/x86_64-unknown-linux-gnu/release/xen-console"
fi
file -L "$BIN" 2>/dev/null | grep -q 'static' || ldd "$BIN" 2>&1 | grep -q 'not a dynamic' ||
  die "$BIN is not statically linked (dom0 has bookworm's glibc only)"

step "boot images"
IMG="$CACHE/images"; mkdir -p "$IMG"
zcat "$TREE/boot/xen-4.17-amd64.gz" > "$IMG/xen"          # QEMU's multiboot loader wants the ELF
cp "$TREE/boot/vmlinuz-$KVER" "$IMG/vmlinuz"
cpio_gz() { (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1) > "$2"; }
U="$CACHE/guest-root"; rm -rf "$U"; mkdir -p "$U"/{bin,dev,proc,sys}
cp "$TREE/bin/busybox" "$U/bin/"
install -m 755 "$HERE/domU-init" "$U/init"
cpio_gz "$U" "$IMG/guest.cpio.gz"
R="$CACHE/dom0-root"; rm -rf "$R"; mkdir -p "$R"
tar -C "$TREE" -cf - --exclude=./boot --exclude=./lib/modules --exclude=./usr/share --exclude=./usr/lib/debug \
  --exclude='./usr/lib/python3*' --exclude=./usr/lib/xen-4.17/lib/python --exclude=./usr/lib/xen-4.17/boot \
  --exclude=./usr/lib/x86_64-linux-gnu/gconv --exclude=./etc/init.d --exclude=./var/lib/dpkg . | tar -C "$R" -xf -
mkdir -p "$R/lib/modules/$KVER/kernel/drivers" "$R"/{dev,proc,sys,tmp,run,root,boot,usr/local/bin,etc/xen}
cp -a "$TREE/lib/modules/$KVER/kernel/drivers/xen" "$R/lib/modules/$KVER/kernel/drivers/"
install -m 755 "$HERE/dom0-init" "$R/init"
install -m 755 "$BIN" "$R/usr/local/bin/xen-console"
strip "$R/usr/local/bin/xen-console" 2>/dev/null || true
echo 'include /etc/ld.so.conf.d/*.conf' > "$R/etc/ld.so.conf"
ldconfig -r "$R" 2>/dev/null || true
cp "$IMG/vmlinuz" "$R/boot/vmlinuz-guest"
cp "$IMG/guest.cpio.gz" "$R/boot/initrd-guest"
cat > "$R/etc/xen/guest.cfg" <<CFG
name = "guest"
type = "pv"
kernel = "/boot/vmlinuz-guest"
ramdisk = "/boot/initrd-guest"
extra = "console=hvc0 loglevel=1 rxt.bulk=$BULK_LINES"
memory = 128
vcpus = 1
on_crash = "destroy"
CFG
echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
echo 'root:x:0:' > "$R/etc/group"
cpio_gz "$R" "$IMG/dom0.cpio.gz"
printf '    dom0 initrd %s, guest initrd %s\n' "$(du -h "$IMG/dom0.cpio.gz" | cut -f1)" "$(du -h "$IMG/guest.cpio.gz" | cut -f1)" >&2

step "boot Xen + dom0 + guest under QEMU TCG (backend: $BACKEND)"
mkdir -p "$CACHE/logs"
SERIAL="$CACHE/logs/serial-$(date +%Y%m%d-%H%M%S)-$BACKEND.log"
XEN_ARGS="console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all noreboot dom0_mem=512M,max:512M"
DOM0_ARGS="console=hvc0 earlyprintk=xen rxt.backend=$BACKEND rxt.timeout=$STEP_TIMEOUT rxt.bulk=$BULK_LINES rxt.seq=$SEQ_LINES"
echo "    serial log: $SERIAL" >&2
T_BOOT=${EPOCHREALTIME/./}
set +e
timeout -k 10 "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu qemu64 -smp 2 -m 1024 -no-reboot \
    -display none -monitor none -serial stdio \
    -kernel "$IMG/xen" -append "$XEN_ARGS" \
    -initrd "$IMG/vmlinuz ${DOM0_ARGS//,/,,},$IMG/dom0.cpio.gz" </dev/null 2>&1 |
  while IFS= read -r line; do
    ms=$(((${EPOCHREALTIME/./} - T_BOOT) / 1000))
    printf '%4d.%03d %s\n' $((ms / 1000)) $((ms % 1000)) "${line%$'\r'}"
  done > "$SERIAL"
qrc=${PIPESTATUS[0]}
set -e
[ "$qrc" = 124 ] && echo "    QEMU killed after ${TIMEOUT}s" >&2

step "verdict"
grep -a -E 'RXT-STEP|RXT\[|RXT-FIGURE|RXT-FAIL|RXT-RESULT' "$SERIAL" | grep -a -v 'RXT-STEP' | cut -c1-200 >&2 || true
first=$(grep -a -m1 'PASS output' "$SERIAL" | awk '{print $1}' || true)
if [ -n "$first" ]; then echo "    boot to first guest output: ${first}s after QEMU started" >&2; fi
if grep -a -q 'RXT-RESULT: PASS' "$SERIAL"; then
  printf 'real-xen: PASS (backend %s, %ss in all; serial log %s)\n' "$BACKEND" "$(elapsed)" "$SERIAL" >&2
  STEP=""
  exit 0
fi
failed=$(grep -a -m1 -o 'RXT-RESULT: FAIL .*' "$SERIAL" | sed 's/RXT-RESULT: FAIL //' || true)
if [ -z "$failed" ]; then
  last=$(grep -a 'RXT-STEP' "$SERIAL" | tail -n1 | awk '{print $3}' || true)
  [ -n "$last" ] || last="boot (Xen or dom0 never reached the checks)"
  failed="$last (no verdict from dom0; QEMU exit $qrc)"
fi
echo "---- serial log (tail) ----" >&2
tail -n 60 "$SERIAL" >&2
STEP="guest check: $failed"
die "see $SERIAL"
