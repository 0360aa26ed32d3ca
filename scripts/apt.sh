# Sourced by the other scripts: install Debian packages, as root or through sudo.
apt_install() {
    local sudo=""
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null; then
            sudo="sudo"
        else
            echo "error: need the Debian package(s) $*; run as root or install them: apt-get install $*" >&2
            return 1
        fi
    fi
    echo "Installing Debian package(s): $*"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
