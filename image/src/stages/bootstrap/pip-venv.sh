# mmdebstrap customize hook for one `[[pip]]` entry of the recipe: a venv in the chroot, filled
# offline from wheels the host fetched (the host's proxy and CA settings apply; the chroot has
# neither). Every pin is a wheel, so nothing is compiled in the image; there is no dependency
# resolution, so the requirements must be the whole closure. mmdebstrap's SOURCE_DATE_EPOCH
# reaches pip, so the .pyc files are reproducible.
#
# Arguments, all paths on the host unless said otherwise:
#   $1 ROOT          the chroot (mmdebstrap's "$1")
#   $2 WHEELS        the entry's wheels
#   $3 REQUIREMENTS  the pins, one `name==version` a line
#   $4 VENV          the venv's absolute path inside the chroot
#   $5 SYSTEM_SITE   "yes": the venv also sees the system's site-packages (Debian python3-*)
#   $6 INDEX         the entry's index in the recipe, appended to each line of LIST
#   $7 LIST          gets the closure's `name==version` lines, each + TAB + INDEX + TAB + where
#                    it came from ("venv", or "debian:<package>=<version>")
#   $8 CLOSURE       pip-closure.py's text: checks the closure's declared requirements
#   $9...            wheels built on the host (PyPI has none for this arch), installed too: each
#                    is a marker path M; the image tool builds the wheel while mmdebstrap runs
#                    and then writes ${M%.tmp}.ready (the wheel's path) or ${M%.tmp}.failed (why)
set -e
root=$1 wheels=$2 requirements=$3 venv=$4 system_site=$5 index=$6 list=$7 closure=$8
shift 8
site=
if [ "$system_site" = yes ]; then
  site=--system-site-packages
fi

rm -rf "$root/tmp/cloudy-wheels"
cp -r "$wheels" "$root/tmp/cloudy-wheels"
# The built wheels, once the host has them (see $9... above); their modules are checked below.
modules=
for marker in "$@"; do
  base=${marker%.tmp}
  said=
  while [ ! -e "$base.ready" ] && [ ! -e "$base.failed" ]; do
    [ -n "$said" ] || echo "cloudy: waiting for a wheel being built on the host (${base##*/})"
    said=1
    sleep 2
  done
  if [ -e "$base.failed" ]; then
    echo "cloudy: the wheel built on the host failed: $(cat "$base.failed")" >&2
    exit 1
  fi
  built=$(cat "$base.ready")
  cp "$built" "$root/tmp/cloudy-wheels/"
  modules="$modules $(basename "$built" | cut -d- -f1)"
done
cp "$requirements" "$root/tmp/cloudy-requirements.txt"
# shellcheck disable=SC2086 # $site is one option or nothing
chroot "$root" python3 -m venv $site "$venv"
chroot "$root" env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$venv/bin/pip" install \
  --no-index --find-links /tmp/cloudy-wheels --no-cache-dir --disable-pip-version-check \
  --no-input --only-binary=:all: --no-deps --require-virtualenv \
  -r /tmp/cloudy-requirements.txt
rm -rf "$root/tmp/cloudy-wheels"
# Each built extension must load on the target (under qemu-user for a foreign arch: running a
# check, not compiling).
for module in $modules; do
  chroot "$root" "$venv/bin/python" -c "import $module"
done
printf '%s\n' "$closure" >"$root/tmp/cloudy-closure.py"
chroot "$root" "$venv/bin/python" /tmp/cloudy-closure.py /tmp/cloudy-requirements.txt "$index" \
  >"$root/tmp/cloudy-closure.txt"
cat "$root/tmp/cloudy-closure.txt" >>"$list"
rm -f "$root/tmp/cloudy-closure.py" "$root/tmp/cloudy-closure.txt" "$root/tmp/cloudy-requirements.txt"
if [ -x "$root$venv/bin/tahoe" ]; then
  # Every board runs the pinned release: `tahoe --version` imports the whole node (under
  # qemu-user for a foreign arch) and must name it.
  reported=$(chroot "$root" "$venv/bin/tahoe" --version | head -n 1)
  pinned=$(sed -n 's/^[Tt]ahoe[-_.][Ll][Aa][Ff][Ss]==//p' "$requirements")
  printf 'cloudy: %s\n' "$reported"
  if [ -n "$pinned" ] && [ "$reported" != "tahoe-lafs/$pinned" ]; then
    echo "cloudy: $venv/bin/tahoe reports '$reported', the requirements pin tahoe-lafs==$pinned" >&2
    exit 1
  fi
fi
