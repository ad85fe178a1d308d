# mmdebstrap hooks that keep out of the image what a node never runs (README, "What the image
# leaves out"). Each trim was measured on the pc-686-pae rootfs; the README has the table.
#
#   $1 ROOT            the chroot (mmdebstrap's "$1")
#   $2 setup|finish    setup: a setup hook, before any package is unpacked
#                      finish: a customize hook, after every package and venv is in
#   $3...              finish: the recipe's `[[pip]]` venvs (paths inside the chroot)
#
# setup: ffmpeg's libraries link libGL and libgbm, which pull in Mesa's DRI drivers and with
# them LLVM and Z3 (~170 MiB unpacked on i386, libLLVM-15 alone 122 MiB). Those are dlopen()ed
# only to render with OpenGL/Vulkan/VA-API/VDPAU; the streaming source runs ffmpeg for HLS
# (copy, or libx264 and AAC), which never opens a GPU driver. dpkg leaves them unwritten; the
# rule lives in its own dpkg.cfg.d file, removed by `finish`, so a later `apt install` on the
# node writes every file again. The same file has dpkg skip its fsync() of every unpacked file
# while the image is built: a bootstrap that dies is thrown away whole (it is published by a
# rename only once complete), so those syncs only cost time.
#
# finish: checks that ffmpeg and ffprobe still load every library and make an HLS stream
# (libx264 + AAC, what the source runs), then drops pip from the venvs (nothing runs it on a
# node; the wheels were installed offline) and the `build/` tree pyutil's wheel ships by
# mistake (15 MiB, imported by nothing), and writes what was left out where a user looks.
set -e
root=$1 step=$2
shift 2
cfg=/etc/dpkg/dpkg.cfg.d/cloudy-trim
note=/usr/share/cloudy/trimmed.txt
case $step in
setup)
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
  cat >"$root$cfg" <<'EOF'
# cloudy-image: only while the image is built (see /usr/share/cloudy/trimmed.txt)
path-exclude=/usr/lib/*/dri/*
path-exclude=/usr/lib/*/libLLVM-*
path-exclude=/usr/lib/*/libz3.so*
force-unsafe-io
EOF
  ;;
finish)
  rm -f "$root$cfg"
  if [ -x "$root/usr/bin/ffmpeg" ]; then
    for tool in ffmpeg ffprobe; do
      if chroot "$root" ldd "/usr/bin/$tool" | grep 'not found'; then
        echo "trim.sh: /usr/bin/$tool misses a library above: a trim in $cfg removed it" >&2
        exit 1
      fi
    done
    rm -rf "$root/tmp/cloudy-ffmpeg-check"
    mkdir -p "$root/tmp/cloudy-ffmpeg-check"
    chroot "$root" ffmpeg -hide_banner -nostdin -loglevel error \
      -f lavfi -i testsrc=size=320x240:rate=25 -f lavfi -i sine=frequency=440 -t 2 \
      -map 0:v:0 -map 1:a:0 -c:v libx264 -preset ultrafast -tune zerolatency -pix_fmt yuv420p \
      -force_key_frames 'expr:gte(t,n_forced*1)' -c:a aac -b:a 96k \
      -f hls -hls_time 1 -hls_segment_filename /tmp/cloudy-ffmpeg-check/seg%d.ts \
      /tmp/cloudy-ffmpeg-check/check.m3u8 ||
      { echo "trim.sh: ffmpeg cannot make the streaming source's HLS stream in the image" >&2; exit 1; }
    # ffprobe lists an MPEG-TS stream under its program and again on its own (and a blank
    # line for the program): each codec once.
    codecs=$(chroot "$root" ffprobe -v error -show_entries stream=codec_name -of csv=p=0 \
      /tmp/cloudy-ffmpeg-check/seg0.ts | sort -u | grep . | tr '\n' ' ')
    rm -rf "$root/tmp/cloudy-ffmpeg-check"
    if [ "$codecs" != "aac h264 " ]; then
      echo "trim.sh: ffprobe saw '$codecs' in ffmpeg's segment, not 'aac h264'" >&2
      exit 1
    fi
    echo "cloudy: ffmpeg makes HLS (h264 + aac) without Mesa's drivers and LLVM"
  fi
  for venv in "$@"; do
    site=$(echo "$root$venv"/lib/python3*/site-packages)
    [ -d "$site" ] || continue
    rm -rf "$site"/pip "$site"/pip-*.dist-info "$root$venv"/bin/pip "$root$venv"/bin/pip3*
    # pyutil's wheel ships a stray build/lib/ copy of itself; its RECORD names it.
    if grep -qs '^build/lib/pyutil/' "$site"/pyutil-*.dist-info/RECORD; then
      rm -rf "$site/build"
    fi
  done
  mkdir -p "$root${note%/*}"
  cat >"$root$note" <<'EOF'
Left out of this Cloudy image to keep it small (dpkg still lists the packages):

- Mesa's DRI drivers (/usr/lib/*/dri/), libLLVM and libz3: ffmpeg's libraries depend on
  them, but they are only loaded to render with OpenGL/Vulkan/VA-API/VDPAU, which the
  streaming source never does. Put them back with:
    apt-get install --reinstall libgl1-mesa-dri libllvm15 libz3-4
- pip in the Tahoe-LAFS venv (/opt/cloudy/tahoe-lafs): nothing on a node installs Python
  packages. Put it back with: /opt/cloudy/tahoe-lafs/bin/python -m ensurepip
- manual pages, info pages, documentation (except copyrights) and translations
  (/etc/dpkg/dpkg.cfg.d/99mmdebstrap keeps them out of later installs too).
EOF
  ;;
*)
  echo "trim.sh: setup or finish, not '$step'" >&2
  exit 2
  ;;
esac
