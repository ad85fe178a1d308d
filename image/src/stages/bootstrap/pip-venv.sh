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
#   $7 LIST          gets the venv's `pip list --format=freeze` lines, each + TAB + INDEX
set -e
root=$1 wheels=$2 requirements=$3 venv=$4 system_site=$5 index=$6 list=$7
site=
if [ "$system_site" = yes ]; then
  site=--system-site-packages
fi
tab=$(printf '\t')

rm -rf "$root/tmp/cloudy-wheels"
cp -r "$wheels" "$root/tmp/cloudy-wheels"
cp "$requirements" "$root/tmp/cloudy-requirements.txt"
# shellcheck disable=SC2086 # $site is one option or nothing
chroot "$root" python3 -m venv $site "$venv"
chroot "$root" env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$venv/bin/pip" install \
  --no-index --find-links /tmp/cloudy-wheels --no-cache-dir --disable-pip-version-check \
  --no-input --only-binary=:all: --no-deps --require-virtualenv \
  -r /tmp/cloudy-requirements.txt
rm -rf "$root/tmp/cloudy-requirements.txt" "$root/tmp/cloudy-wheels"
chroot "$root" env PIP_CONFIG_FILE=/dev/null "$venv/bin/pip" list --format=freeze \
  --disable-pip-version-check | sed "s/\$/$tab$index/" >>"$list"
