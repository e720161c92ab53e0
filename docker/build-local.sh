#!/usr/bin/env bash
# Build the flowpheno image with buildah where no image registry is reachable.
#
# Needs: root on Debian/Ubuntu, `buildah` and `debootstrap` (apt-get install buildah
# debootstrap), a reachable Debian mirror (for the base system and the image's apt-get) and
# PyPI (for flowpheno's dependencies).
#
# Does:
#   1. unless the base image already exists: debootstrap a minimal Debian bookworm root
#      filesystem into WORK/rootfs-bookworm, slim it as debian:bookworm-slim is slimmed
#      (dpkg excludes docs, man pages, locales), and commit it as the base image (buildah from
#      scratch + copy + commit);
#   2. buildah bud docker/Dockerfile with that base (BASE build-arg), chroot isolation and the
#      vfs storage driver, in WORK/storage; with --torch-wheel, the wheel is hard-linked (or
#      copied) into docker/wheels/ for the build and removed afterwards (TORCH build-arg);
#      with --ca-bundle (default: $PIP_CERT, when set), pip in the build trusts that CA bundle
#      (for a network whose HTTPS goes through a proxy with its own CA): the bundle and a
#      pip.conf naming it are mounted at /etc/xdg/pip during RUN steps only (an empty
#      /etc/xdg/pip folder remains in the image);
#   3. with --check: in a container of the new image, `make -o install example` (timed) and
#      `snakemake gwas_all -n`, then the container is removed.
#
# Disk under WORK (vfs keeps a full copy per layer and per container), with a CPU torch wheel:
# 0.2 GB for the root filesystem while making the base, up to 8.3 GB while building, 2.2 GB
# afterwards (base image 78 MB, image 1.9 GB), 4 GB during --check; WORK/tmp holds buildah's
# temporary files. Measured figures: benchmarks/results/docker.md.
#
# Usage: docker/build-local.sh [--work DIR] [--base NAME] [--tag NAME] [--torch-wheel FILE]
#                              [--ca-bundle FILE] [--mirror URL] [--rebuild-base] [--check]
#   --work DIR         root file system, storage and temporary files (default /var/tmp/flowpheno-docker)
#   --base NAME        base image name (default localhost/flowpheno-base:bookworm-slim)
#   --tag NAME         image name (default localhost/flowpheno:latest)
#   --torch-wheel FILE a cp311 Linux torch wheel (default: torch==2.13.0 from PyPI, a CUDA build)
#   --ca-bundle FILE   CA bundle for pip's HTTPS in the build (default $PIP_CERT; "" for none)
#   --mirror URL       Debian mirror for debootstrap and the image's apt (default http://deb.debian.org/debian)
#   --rebuild-base     remake the base image even if it exists
#   --check            run the example and the workflow dry run in the built image
# Afterwards: buildah --root WORK/storage --runroot WORK/run --storage-driver vfs images|rmi|...
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=/var/tmp/flowpheno-docker
BASE=localhost/flowpheno-base:bookworm-slim
TAG=localhost/flowpheno:latest
WHEEL=""
MIRROR=http://deb.debian.org/debian
CA_BUNDLE=${PIP_CERT:-}
REBUILD_BASE=0
CHECK=0

die() { echo "build-local.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --work) WORK=${2:?--work needs a folder}; shift 2 ;;
        --base) BASE=${2:?--base needs a name}; shift 2 ;;
        --tag) TAG=${2:?--tag needs a name}; shift 2 ;;
        --torch-wheel) WHEEL=${2:?--torch-wheel needs a file}; shift 2 ;;
        --ca-bundle) CA_BUNDLE=${2?--ca-bundle needs a file}; shift 2 ;;
        --mirror) MIRROR=${2:?--mirror needs a URL}; shift 2 ;;
        --rebuild-base) REBUILD_BASE=1; shift ;;
        --check) CHECK=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and buildah's vfs storage need it)"
for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install -y $tool"
done
if [ -n "$WHEEL" ]; then
    [ -f "$WHEEL" ] || die "--torch-wheel $WHEEL: no such file"
    case "$(basename "$WHEEL")" in
        torch-*-cp311-cp311-*linux*.whl) ;;
        *) die "--torch-wheel $WHEEL: not a CPython 3.11 Linux torch wheel (the image has Debian bookworm's Python 3.11)" ;;
    esac
fi
[ -z "$CA_BUNDLE" ] || [ -f "$CA_BUNDLE" ] || die "--ca-bundle $CA_BUNDLE: no such file"

mkdir -p "$WORK/tmp"
WORK=$(cd "$WORK" && pwd)
export TMPDIR="$WORK/tmp"   # buildah's temporary copies stay under WORK
B=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)

# 1. the base image
if [ "$REBUILD_BASE" = 1 ] || ! "${B[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    ROOTFS="$WORK/rootfs-bookworm"
    rm -rf "$ROOTFS"
    echo "== $(date +%T) debootstrap bookworm ($MIRROR) into $ROOTFS"
    debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
        || die "debootstrap failed: see $WORK/debootstrap.log"
    # as debian:bookworm-slim: no docs (copyright files kept), man pages, info or locales
    cat > "$ROOTFS/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
    # as the official image: apt keeps no downloaded .deb files and fetches no translations
    printf '%s\n' \
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
        'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' > "$ROOTFS/etc/apt/apt.conf.d/docker-clean"
    echo 'Acquire::Languages "none";' > "$ROOTFS/etc/apt/apt.conf.d/docker-no-languages"
    find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$ROOTFS"/usr/share/{man,info,groff,linda,locale}/* "$ROOTFS"/var/cache/apt/*.bin \
        "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log
    # the mirror, updates and security suites, as in the official image
    rm -f "$ROOTFS/etc/apt/sources.list"
    cat > "$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    : > "$ROOTFS/etc/hostname"
    : > "$ROOTFS/etc/resolv.conf"
    echo "== $(date +%T) commit $BASE"
    "${B[@]}" rmi -f "$BASE" >/dev/null 2>&1 || true
    ctr=$("${B[@]}" from scratch)
    mnt=$("${B[@]}" mount "$ctr")
    tar -C "$ROOTFS" -cf - . | tar -C "$mnt" -xpf - --numeric-owner
    "${B[@]}" umount "$ctr" >/dev/null
    "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd bash --os linux --arch amd64 "$ctr"
    "${B[@]}" commit --quiet --rm "$ctr" "$BASE" >/dev/null
    rm -rf "$ROOTFS"
fi

# 2. the image
TORCH_ARG=()
LINKED=""
cleanup() { [ -z "$LINKED" ] || rm -f "$LINKED"; }
trap cleanup EXIT
if [ -n "$WHEEL" ]; then
    name=$(basename "$WHEEL")
    if [ ! -e "$REPO/docker/wheels/$name" ]; then
        LINKED="$REPO/docker/wheels/$name"
        ln "$WHEEL" "$LINKED" 2>/dev/null || cp "$WHEEL" "$LINKED"
    fi
    TORCH_ARG=(--build-arg "TORCH=/tmp/wheels/$name")
fi
CA_ARG=()
if [ -n "$CA_BUNDLE" ]; then
    rm -rf "$WORK/pip-ca" && mkdir -p "$WORK/pip-ca"
    cp "$CA_BUNDLE" "$WORK/pip-ca/ca.crt"
    printf '[global]\ncert = /etc/xdg/pip/ca.crt\n' > "$WORK/pip-ca/pip.conf"
    CA_ARG=(--volume "$WORK/pip-ca:/etc/xdg/pip:ro")
fi
echo "== $(date +%T) build $TAG from $BASE"
start=$(date +%s)
"${B[@]}" bud --isolation chroot --pull=never --layers=false \
    --build-arg "BASE=$BASE" "${TORCH_ARG[@]}" "${CA_ARG[@]}" \
    -f "$REPO/docker/Dockerfile" -t "$TAG" "$REPO"
echo "== $(date +%T) built $TAG in $(( $(date +%s) - start )) s"
"${B[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$TAG"

# 3. the checks
if [ "$CHECK" = 1 ]; then
    ctr=$("${B[@]}" from --pull=never "$TAG")
    run() { "${B[@]}" run --isolation chroot --workingdir /opt/src/flowpheno "$ctr" -- "$@"; }
    status=0
    echo "== $(date +%T) make -o install example"
    start=$(date +%s)
    run bash -c 'time make -o install example' || status=$?
    echo "== $(date +%T) make example: exit $status, $(( $(date +%s) - start )) s"
    if [ "$status" = 0 ]; then
        echo "== $(date +%T) snakemake gwas_all -n"
        run bash -c 'time snakemake gwas_all -n' || status=$?
    fi
    "${B[@]}" rm "$ctr" >/dev/null
    exit "$status"
fi
