#!/bin/sh
# scripts/install.sh -- make install / make uninstall, in POSIX sh.
#
# Usage: [PREFIX=...] [DESTDIR=...] sh scripts/install.sh install|uninstall
# from the top of the source tree, after make.
#
# What goes where (each directory can be set on its own, e.g.
# make install UNITDIR=/lib/systemd/system):
#
#   fepd                      SBINDIR      PREFIX/sbin
#   dcusim                    BINDIR       PREFIX/bin
#   fepd.8 fepd.conf.5 dcusim.1  MANDIR    PREFIX/share/man (man8 man5 man1)
#   fepd.conf.example         DOCDIR       PREFIX/share/doc/fepd
#   fepd.service fepd@.service  UNITDIR    PREFIX/lib/systemd/system
#   logrotate snippet "fepd"  LOGROTATEDIR /etc/logrotate.d
#
# PREFIX defaults to /usr/local.  SYSCONFDIR, which the units name as the
# home of fepd/fepd.conf and fepd/shards.env, is /etc whatever the prefix: a
# daemon's config is looked for in /etc, and the man pages say so.  For the
# same reason the logrotate snippet goes to /etc/logrotate.d, the only place
# logrotate reads.  systemd reads units from /usr/local/lib/systemd/system
# as well as from /usr/lib/systemd/system.  DESTDIR is put in front of every
# path (staged installs, packages).
#
# No config file is installed in SYSCONFDIR: a config names real DCUs and
# their keys, which only the operator knows, and `make uninstall` must never
# remove a file the operator wrote.  Copy the example and edit it.
#
# Binaries are copied to a temporary name and renamed into place, so that a
# running fepd keeps its file and the new one appears whole.  uninstall
# removes exactly the files install puts, and the directory DOCDIR when it
# is left empty; nothing else.
set -eu

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BINDIR=${BINDIR:-$PREFIX/bin}
SBINDIR=${SBINDIR:-$PREFIX/sbin}
MANDIR=${MANDIR:-$PREFIX/share/man}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/fepd}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
LOGROTATEDIR=${LOGROTATEDIR:-/etc/logrotate.d}
SYSCONFDIR=${SYSCONFDIR:-/etc}

me=scripts/install.sh

die() {
    echo "$me: $*" >&2
    exit 1
}

# One line per file: SOURCE DESTINATION MODE SUBSTITUTE(yes|no).
manifest() {
    cat <<EOF
fepd $SBINDIR/fepd 755 no
dcusim $BINDIR/dcusim 755 no
man/fepd.8 $MANDIR/man8/fepd.8 644 no
man/fepd.conf.5 $MANDIR/man5/fepd.conf.5 644 no
man/dcusim.1 $MANDIR/man1/dcusim.1 644 no
dist/fepd.conf.example $DOCDIR/fepd.conf.example 644 no
dist/fepd.logrotate $LOGROTATEDIR/fepd 644 no
dist/fepd.service $UNITDIR/fepd.service 644 yes
dist/fepd@.service $UNITDIR/fepd@.service 644 yes
EOF
}

# The units name the installed paths.
substitute() {
    sed -e "s|@SBINDIR@|$SBINDIR|g" -e "s|@SYSCONFDIR@|$SYSCONFDIR|g" "$1"
}

put() {
    src=$1 dst=$DESTDIR$2 mode=$3 subst=$4
    dir=${dst%/*}
    tmp=$dir/.${dst##*/}.tmp.$$
    mkdir -p "$dir"
    if [ "$subst" = yes ]; then
        substitute "$src" > "$tmp"
    else
        cp "$src" "$tmp"
    fi
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dst"
    echo "installed $dst"
}

do_install() {
    for f in fepd dcusim; do
        [ -f "$f" ] || die "./$f is not built: run make first"
    done
    manifest | while read -r src dst mode subst; do
        [ -f "$src" ] || die "$src is missing: run this from the source tree"
        put "$src" "$dst" "$mode" "$subst"
    done
    cat <<EOF

Next (fepd(8), SERVICE MANAGER):
  useradd --system --user-group --home-dir /var/lib/fepd --shell /usr/sbin/nologin fepd
  mkdir -p $SYSCONFDIR/fepd
  cp $DOCDIR/fepd.conf.example $SYSCONFDIR/fepd/fepd.conf   # then edit it
  $SBINDIR/fepd -c $SYSCONFDIR/fepd/fepd.conf --check
  systemctl daemon-reload && systemctl enable --now fepd
EOF
}

do_uninstall() {
    manifest | while read -r src dst mode subst; do
        if [ -e "$DESTDIR$dst" ]; then
            rm -f "$DESTDIR$dst"
            echo "removed $DESTDIR$dst"
        fi
    done
    rmdir "$DESTDIR$DOCDIR" 2>/dev/null || true
}

case ${1:-} in
install) do_install ;;
uninstall) do_uninstall ;;
*) die "usage: [PREFIX=...] [DESTDIR=...] sh $me install|uninstall" ;;
esac
