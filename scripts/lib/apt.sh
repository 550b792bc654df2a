# Debian packages for the setup scripts: source this file, then `apt_install_missing PACKAGE...`.
# Installs only the packages that are not installed yet (no apt-get update when all are there, so a
# second run is quick and works offline), without their recommends, as root or through sudo.

apt_install_missing() {
  local package missing=() sudo=""
  for package in "$@"; do
    if [ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" != "install ok installed" ]; then
      missing+=("$package")
    fi
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}
