# Sourced by the *-setup.sh scripts and prereqs.sh:
#
#   apt_install_or_explain PURPOSE HINT PACKAGE...
#
# On Debian/Ubuntu as root, installs PACKAGEs with apt (APT_OPTIONS, e.g.
# --no-install-recommends, go to apt-get); elsewhere prints one line, "error: PURPOSE needs
# PACKAGE... (HINT)", and exits 1.
apt_install_or_explain() {
  local purpose=$1 hint=$2
  shift 2
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $* ($purpose)…"
    apt-get update -qq
    # shellcheck disable=SC2086  # APT_OPTIONS is a list of options
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${APT_OPTIONS:-} "$@" >/dev/null
  else
    echo "error: $purpose needs $* ($hint)" >&2
    exit 1
  fi
}
